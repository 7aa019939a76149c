//! Delivery audit: did every message arrive, once, in order, and how late?
//!
//! # Layout
//!
//! - `track.rs`: one device's state (next seq + a 64-bit reorder window + counters, 32 B) and
//!   the classification of an arrival, free of I/O.
//! - `roster.rs`: device id -> dense index by the fleet's own profile/group/ordinal
//!   arithmetic (no map, nothing allocated per message); a device's schedule (first tick +
//!   interval grid).
//! - `ledger.rs`: the books: parse, classify, count bad input by kind, end-to-end latency per
//!   device type; at the end, expected messages against what arrived, faults' gaps apart.
//! - `consume.rs`: the MQTT and AMQP consumers (on one thread of their own).
//!
//! An in-run audit (`[audit]` / `--audit`) starts before the shards, so it is subscribed
//! before the first message; the shards count into an [`ExcuseTap`] the messages DISCONNECT
//! and `bytes` DATA_CORRUPTION faults kept from arriving intact. After the shards stop it keeps
//! consuming until the flow has been quiet for 0.5 s (at most `grace`), then judges.
//! A stand-alone audit (`iot-sim audit`) runs the same consumer and ledger until a signal or
//! its `--duration`.

mod consume;
mod ledger;
mod roster;
mod sparkplug;
mod track;
mod values;

use crate::config::audit::AuditSettings;
use crate::shard::tap::ExcuseTap;
use crate::sim::profile::Fleet;
use crate::threshold::AuditRow;
use hdrhistogram::Histogram;
pub use ledger::{AuditReport, EndFacts, LatencyClock, Ledger};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the consumer thread and the caller share.
pub struct Shared {
    /// The books; the consumer locks them once per message (nobody else does until the end).
    pub ledger: Mutex<Ledger>,
    /// Connection errors and refusals.
    pub errors: AtomicU64,
    /// Notified once to stop the consumer.
    pub stop: tokio::sync::Notify,
    /// CPU time of the consumer thread, set when it ends (ns).
    pub cpu_ns: AtomicU64,
}

/// A running audit: its consumer thread and the books.
pub struct Auditor {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    settings: AuditSettings,
    excuses: Arc<ExcuseTap>,
}

impl Auditor {
    /// Starts the consumer on a thread of its own and waits (up to 10 s) until it is
    /// subscribed. A consumer that cannot subscribe yet keeps retrying: the run goes on, its
    /// errors are counted and reported.
    pub fn start(
        settings: &AuditSettings,
        fleet: Arc<Fleet>,
        seed: u64,
        start_ms: Option<u64>,
        baseline: bool,
    ) -> Result<Auditor, String> {
        let separator = match &settings.source {
            crate::config::audit::AuditSource::Amqp { .. } => {
                Some(settings.routing_separator.clone())
            }
            _ => None,
        };
        let mut excuses = ExcuseTap::new(fleet.groups.iter().map(|g| g.count));
        let mut ledger = Ledger::new(fleet, seed, start_ms, baseline, separator);
        if settings.values {
            excuses = excuses.with_values();
            ledger = ledger.verify_values();
        }
        let excuses = Arc::new(excuses);
        // An in-run audit follows the devices the shards spawn (a stand-alone one cannot).
        if !baseline {
            ledger = ledger.follow_spawns(excuses.clone());
        }
        let shared = Arc::new(Shared {
            ledger: Mutex::new(ledger),
            errors: AtomicU64::new(0),
            stop: tokio::sync::Notify::new(),
            cpu_ns: AtomicU64::new(0),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let source = settings.source.clone();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(format!("cannot start the audit runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(consume::run(source, sh.clone(), tx));
                sh.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
            })
            .map_err(|e| format!("cannot start the audit thread: {e}"))?;
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(source = %settings.source.describe(), error = %e,
                "audit: consumer not ready; it keeps retrying and counts its errors"),
            Err(_) => tracing::warn!(source = %settings.source.describe(),
                "audit: consumer not subscribed after 10s; it keeps retrying"),
        }
        Ok(Auditor { shared, thread: Some(thread), settings: settings.clone(), excuses })
    }

    /// The counters the shards fill (faults' suppressed and corrupted messages).
    pub fn excuses(&self) -> Arc<ExcuseTap> {
        self.excuses.clone()
    }

    /// Sets how intended times map to wall time (once the run's origin is known).
    pub fn set_clock(&self, clock: LatencyClock) {
        if let Ok(mut l) = self.shared.ledger.lock() {
            l.clock = clock;
        }
    }

    /// A handle `/metrics` reads the running counts through.
    pub fn probe(&self) -> AuditProbe {
        AuditProbe(self.shared.clone())
    }

    /// Messages consumed so far.
    pub fn consumed(&self) -> u64 {
        self.shared.ledger.lock().map_or(0, |l| l.counts.consumed)
    }

    /// Waits until nothing arrived for `quiet` (at most `limit`).
    pub fn settle(&self, quiet: Duration, limit: Duration) {
        let began = std::time::Instant::now();
        let (mut last, mut since) = (self.consumed(), std::time::Instant::now());
        while began.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(50));
            let now = self.consumed();
            if now != last {
                (last, since) = (now, std::time::Instant::now());
            } else if since.elapsed() >= quiet {
                break;
            }
        }
    }

    /// Stops the consumer and judges. `grace` lets in-flight messages land first.
    pub fn finish(mut self, end: &EndFacts, grace: bool) -> Conclusion {
        if grace {
            self.settle(Duration::from_millis(500), Duration::from_millis(self.settings.grace_ms));
        }
        self.shared.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let errors = self.shared.errors.load(Ordering::Relaxed);
        let (mut report, types) = match self.shared.ledger.lock() {
            Ok(mut l) => l.finish(end, Some(&self.excuses), self.settings.worst),
            Err(p) => p.into_inner().finish(end, Some(&self.excuses), self.settings.worst),
        };
        report.source = self.settings.source.describe();
        report.consumer_errors = errors;
        report.consumer_cpu_seconds = self.shared.cpu_ns.load(Ordering::Relaxed) as f64 / 1e9;
        Conclusion { report, latency: types }
    }
}

impl Drop for Auditor {
    fn drop(&mut self) {
        self.shared.stop.notify_one();
    }
}

/// The running counts of an audit, for `/metrics` (read under the ledger's lock, at scrape
/// time only).
#[derive(Clone)]
pub struct AuditProbe(Arc<Shared>);

impl AuditProbe {
    /// (counts by kind, consumer errors).
    pub fn read(&self) -> (ledger::Counts, u64) {
        let counts = self.0.ledger.lock().map(|l| l.counts.clone()).unwrap_or_default();
        (counts, self.0.errors.load(Ordering::Relaxed))
    }
}

impl std::fmt::Debug for AuditProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditProbe")
    }
}

/// A finished audit: the report section and the latency histograms per device type.
pub struct Conclusion {
    pub report: AuditReport,
    pub latency: Vec<(String, Histogram<u64>)>,
}

impl Conclusion {
    /// Rows for `[[threshold]]` audit metrics.
    pub fn rows(&self) -> Vec<AuditRow<'_>> {
        self.report
            .by_device_type
            .iter()
            .map(|r| AuditRow {
                device_type: &r.device_type,
                lost: r.lost,
                duplicated: r.duplicated,
                reordered: r.reordered,
                e2e: self.latency.iter().find(|(t, _)| *t == r.device_type).map(|(_, h)| h),
            })
            .collect()
    }
}

/// CPU time of the calling thread, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 { 0 } else { ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64 }
}

/// The terminal section.
pub fn render(a: &AuditReport) -> String {
    let mut out = String::new();
    let c = &a.counts;
    let _ = writeln!(out, "\ndelivery audit ({}, {})", a.mode, a.source);
    let _ = writeln!(
        out,
        "  devices={} silent={} expected={} received={} lost={} duplicated={} reordered={} (max {} behind) stale={}",
        a.devices,
        a.silent_devices,
        a.expected,
        a.received,
        a.lost,
        c.duplicated,
        c.reordered,
        c.reorder_max,
        c.stale
    );
    if let Some(sp) = &a.sparkplug {
        let _ = writeln!(
            out,
            "  sparkplug: edge_nodes={} messages={} missing={} out_of_order={} unparsable={}",
            sp.nodes.len(),
            sp.messages,
            sp.missing,
            sp.out_of_order,
            sp.unparsable
        );
    }
    let _ = writeln!(
        out,
        "  excused: disconnect={} corrupted={}   bad input: unparsable={} unknown_device={} foreign_topic={} corrupted={} off_grid={} no_seq={}   consumer_errors={}",
        a.excused_disconnect,
        a.excused_corrupted,
        c.unparsable,
        c.unknown_device,
        c.foreign_topic,
        c.corrupted,
        c.off_grid,
        c.no_seq,
        a.consumer_errors
    );
    let _ = writeln!(
        out,
        "  {:<24} {:>9} {:>10} {:>10} {:>8} {:>8} {:>9} {:>10} {:>10} {:>10}",
        "device_type",
        "devices",
        "expected",
        "received",
        "lost",
        "dup",
        "reorder",
        "e2e p50µs",
        "e2e p99µs",
        "e2e maxµs"
    );
    for r in &a.by_device_type {
        let (p50, p99, max) = r
            .e2e_latency_us
            .as_ref()
            .map_or(("-".to_string(), "-".to_string(), "-".to_string()), |l| {
                (l.p50.to_string(), l.p99.to_string(), l.max.to_string())
            });
        let _ = writeln!(
            out,
            "  {:<24} {:>9} {:>10} {:>10} {:>8} {:>8} {:>9} {:>10} {:>10} {:>10}",
            r.device_type,
            r.devices,
            r.expected,
            r.received,
            r.lost,
            r.duplicated,
            r.reordered,
            p50,
            p99,
            max
        );
    }
    if !a.worst.is_empty() {
        let _ = writeln!(out, "  worst devices:");
        for w in &a.worst {
            let _ = writeln!(
                out,
                "    {:<32} lost={} duplicated={} reordered={} received={}",
                w.device_id, w.lost, w.duplicated, w.reordered, w.received
            );
        }
    }
    if let Some(v) = &c.values {
        let _ = writeln!(
            out,
            "  values: verified={} unverified={} value_mismatch={} field_missing={} field_extra={} type_mismatch={}   corrupted={} excused={}",
            v.verified,
            v.unverified,
            v.value_mismatch,
            v.field_missing,
            v.field_extra,
            v.type_mismatch,
            a.values_corrupted.unwrap_or(0),
            a.excused_values.unwrap_or(0)
        );
    }
    for n in &a.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    out
}

#[cfg(test)]
mod tests;
