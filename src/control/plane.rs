//! The control plane: what every front end (gRPC, admin HTTP, a scenario runner) calls to steer
//! the shards, in domain terms. It holds each shard's command inbox and published counters and
//! the event fan-out; it routes a command to the shards concerned (an id to the shard that owns
//! it, a label or "all" selection to every shard, which work on their own devices in parallel)
//! and merges their replies. It never touches a shard's devices.

use super::journal;
use crate::config::SinkSettings;
use crate::limits;
use crate::shard::command::{
    Action, ScanReply, Selection, ShardCommand, ShardControl, ShardCounters, SpawnReply, SpawnSpec,
    Subscription,
};
use crate::shard::event::{DeviceEvent, Event, EventKind};
use crate::shard::streams::{PointBatch, StreamBudget};
use crate::sim::profile::{Profile, Protocol};
use crate::sim::seed;
use crossbeam_channel::{Sender, TrySendError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Capacity of each shard's command inbox.
const INBOX: usize = 1024;
/// Device events buffered for StreamEvents subscribers; a slower subscriber loses the oldest.
const EVENT_BUFFER: usize = 65_536;
/// Point batches (of up to 1024 points) buffered per telemetry stream before shards drop
/// (the stream budget bounds them in bytes as well).
const STREAM_BUFFER: usize = 64;

/// Why a command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlaneError {
    #[error("shard {0} has stopped")]
    ShardStopped(usize),
    #[error("a shard stopped before replying")]
    NoReply,
    /// A bound on what the runtime holds was reached (streams, memory).
    #[error("{0}")]
    Exhausted(String),
}

/// How the plane treats spawn requests.
#[derive(Clone, Debug, Default)]
pub(crate) struct PlaneOptions {
    /// The run's sink settings: which network protocols this runtime can publish to.
    pub sinks: Arc<SinkSettings>,
    /// Refuse a spawn whose protocol has no sink here, instead of publishing it to the
    /// fallback sink (`serve --strict-protocols`).
    pub strict_protocols: bool,
    /// The session journal every action that changes the runtime is appended to.
    pub journal: Option<Arc<super::journal::Journal>>,
    /// The fleet has Sparkplug profiles: their devices live on their edge node's shard, not
    /// their id's, so commands by id go to every shard ([`ControlPlane::scan`]).
    pub sparkplug: bool,
    /// The run's seed: a spawn's devices go to their shard in the order they first fall due
    /// ([`crate::shard::in_due_order`]).
    pub seed: u64,
}

/// The runtime's figures, per shard where they are counted per shard.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Figures {
    pub devices: Vec<u64>,
    pub messages: Vec<u64>,
    pub errors: Vec<u64>,
    pub suppressed: Vec<u64>,
    pub faults_active: Vec<u64>,
    pub messages_per_second: f64,
    pub telemetry_points_dropped: u64,
    pub uptime_seconds: f64,
    /// Devices published to the fallback sink, by the protocol they asked for.
    pub fallback_devices: BTreeMap<String, u64>,
}

/// Upper bounds of the telemetry batch size buckets (points per StreamTelemetry batch).
pub(crate) const BATCH_BUCKETS: [u64; 12] =
    [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// Sizes of the StreamTelemetry batches sent (one record per batch, not per point).
#[derive(Debug, Default)]
pub(crate) struct BatchSizes {
    /// Per bucket of [`BATCH_BUCKETS`], then `+Inf`.
    pub counts: [AtomicU64; BATCH_BUCKETS.len() + 1],
    pub sum: AtomicU64,
}

impl BatchSizes {
    pub fn record(&self, points: usize) {
        let i = BATCH_BUCKETS.partition_point(|&b| b < points as u64);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(points as u64, Ordering::Relaxed);
    }
}

/// A telemetry subscription on every shard.
pub(crate) struct TelemetryFeed {
    pub id: u64,
    /// Point batches from the shards.
    pub rx: mpsc::Receiver<PointBatch>,
    /// Points the shards dropped because this feed was not read fast enough.
    pub dropped: Arc<AtomicU64>,
    /// Set by the reader of `rx` while its client is not keeping up (the shards then skip it).
    pub congested: Arc<AtomicBool>,
    /// Holds one of the runtime's stream slots until the feed is dropped.
    _slot: StreamSlot,
}

/// One of the [`limits::MAX_STREAMS`] telemetry stream slots; given back when dropped.
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        // The last stream gone: hand what the allocator holds free back to the system (glibc
        // keeps it otherwise, and unread streams may have used the whole budget).
        if self.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            give_back_memory();
        }
    }
}

/// A command that spawned or touched at least this many devices hands the memory it freed
/// back to the system once it is done.
const TRIM_AFTER_DEVICES: u32 = 10_000;

/// Hands the memory glibc's malloc holds free (in every arena) back to the system, on a
/// blocking thread, at most one at a time. A large command frees a lot on threads other than
/// the shards' (a 100,000-spec SpawnDevices decodes to ~250 MB of request structs on the gRPC
/// workers); glibc keeps what a thread's arena freed for that arena, so without this a runtime
/// stayed at 4x the fleet's own size after a spawn-stop-fault-clear cycle (issue 25).
pub(crate) fn give_back_memory() {
    static TRIMMING: AtomicBool = AtomicBool::new(false);
    if TRIMMING.swap(true, Ordering::AcqRel) {
        return;
    }
    let trim = || {
        // SAFETY: malloc_trim only releases free heap memory; no pointer is invalidated.
        unsafe { libc::malloc_trim(0) };
        TRIMMING.store(false, Ordering::Release);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) => drop(h.spawn_blocking(trim)),
        Err(_) => trim(),
    }
}

/// What the control plane holds: the shards' inboxes, counters and the event fan-out.
pub struct ControlPlane {
    /// To each shard (it drains its inbox once per wheel turn).
    inboxes: Vec<Sender<ShardCommand>>,
    /// From each shard: its published figures.
    counters: Vec<Arc<ShardCounters>>,
    /// Shards send, every StreamEvents call subscribes.
    events: broadcast::Sender<Event>,
    started: Instant,
    next_stream: AtomicU64,
    /// Telemetry streams open now (at most [`limits::MAX_STREAMS`]).
    streams_open: Arc<AtomicUsize>,
    /// What every telemetry stream's points are charged to.
    stream_budget: Arc<StreamBudget>,
    /// (instant, messages total, rate) for messages_per_second.
    rate: Mutex<(Instant, u64, f64)>,
    pub(crate) dropped_points: Arc<AtomicU64>,
    /// Points per StreamTelemetry batch sent (`iot_sim_telemetry_batch_size`).
    pub(crate) batch_sizes: BatchSizes,
    pub(crate) threads: usize,
    pub(crate) options: PlaneOptions,
    /// Compiled spawn profiles by the bytes of the spec they came from (without id and
    /// labels), so that every request spawning the same behaviour hands the shards the same
    /// `Arc`: shards keep one profile (and one set of statistics) per distinct `Arc`, and a
    /// fresh compile per request made every "spawn, stop all" cycle grow the runtime.
    profiles: Mutex<BTreeMap<Vec<u8>, Weak<Profile>>>,
    /// Protocols already warned about falling back (once per protocol).
    warned: Mutex<BTreeSet<String>>,
    /// Some device may live on a shard other than its id's (a Sparkplug device is on its
    /// edge node's, `shard::owner_shard`): an id selection goes to every shard, each acts on
    /// the ids it has, and an id is not found only when no shard has it.
    ids_everywhere: AtomicBool,
}

impl ControlPlane {
    /// A control plane for `shards` shards, and the link each shard gets in its plan.
    pub(crate) fn new(
        shards: usize,
        options: PlaneOptions,
    ) -> (Arc<ControlPlane>, Vec<ShardControl>) {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let mut inboxes = vec![];
        let mut counters = vec![];
        let mut links = vec![];
        for _ in 0..shards {
            let (tx, rx) = crossbeam_channel::bounded(INBOX);
            let c = Arc::new(ShardCounters::default());
            inboxes.push(tx);
            counters.push(c.clone());
            links.push(ShardControl { inbox: rx, events: events.clone(), counters: c });
        }
        let plane = ControlPlane {
            inboxes,
            counters,
            events,
            started: Instant::now(),
            next_stream: AtomicU64::new(1),
            streams_open: Arc::new(AtomicUsize::new(0)),
            stream_budget: StreamBudget::new(limits::STREAM_BUDGET_BYTES),
            rate: Mutex::new((Instant::now(), 0, 0.0)),
            dropped_points: Arc::new(AtomicU64::new(0)),
            batch_sizes: BatchSizes::default(),
            threads: shards + 3,
            ids_everywhere: AtomicBool::new(options.sparkplug),
            options,
            warned: Mutex::new(BTreeSet::new()),
            profiles: Mutex::new(BTreeMap::new()),
        };
        (Arc::new(plane), links)
    }

    pub(crate) fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Whether an id selection goes to every shard (see `ids_everywhere`).
    fn ids_everywhere(&self) -> bool {
        self.ids_everywhere.load(Ordering::Relaxed)
    }

    /// Largest tick lateness (µs) any shard saw since the last call; resets it.
    pub(crate) fn take_lateness_us_max(&self) -> u64 {
        self.counters
            .iter()
            .map(|c| c.lateness_us_max.swap(0, Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// Puts a command in a shard's inbox, waiting (without blocking the runtime) while it is
    /// full.
    async fn send(&self, shard: usize, mut cmd: ShardCommand) -> Result<(), PlaneError> {
        loop {
            match self.inboxes[shard].try_send(cmd) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(c)) => {
                    cmd = c;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(TrySendError::Disconnected(_)) => return Err(PlaneError::ShardStopped(shard)),
            }
        }
    }

    /// Spawns devices, each on the shard that owns its id; returns what the shards did.
    pub(crate) async fn spawn(&self, specs: Vec<SpawnSpec>) -> Result<SpawnReply, PlaneError> {
        let journal = self.options.journal.as_ref().map(|j| {
            let text = journal::SpawnText::of(&specs);
            (j.clone(), j.stamp(), text, journal::FRONT_END.try_with(|f| *f).ok())
        });
        let n = self.shards();
        let mut per: Vec<Vec<SpawnSpec>> = (0..n).map(|_| vec![]).collect();
        for spec in specs {
            if spec.profile.format.sparkplug().is_some() {
                // Set before the device exists: a command by id racing the spawn finds it.
                self.ids_everywhere.store(true, Ordering::Relaxed);
            }
            per[crate::shard::owner_shard(&spec.profile, &spec.id, &spec.labels, n)].push(spec);
        }
        let mut waits = vec![];
        let mut ordering = Duration::ZERO;
        for (i, specs) in per.into_iter().enumerate() {
            if specs.is_empty() {
                continue;
            }
            let t0 = Instant::now();
            let specs = crate::shard::in_due_order(self.options.seed, specs);
            ordering += t0.elapsed();
            let (reply, rx) = oneshot::channel::<SpawnReply>();
            self.send(i, ShardCommand::Spawn { specs, reply }).await?;
            waits.push((i, rx));
        }
        let mut acc = SpawnReply::default();
        let mut per_shard = vec![];
        for (shard, rx) in waits {
            let r = rx.await.map_err(|_| PlaneError::NoReply)?;
            per_shard.push(format!("{shard}:{}", r.spawned));
            acc.spawned += r.spawned;
            acc.failed.extend(r.failed);
        }
        if acc.spawned + acc.failed.len() as u32 >= TRIM_AFTER_DEVICES {
            give_back_memory();
        }
        // One line per command, whatever its size (per device: debug, in the shards).
        tracing::info!(
            spawned = acc.spawned,
            failed = acc.failed.len(),
            per_shard = per_shard.join(","),
            "devices spawned"
        );
        // The due-order sort and id copies (`shard::in_due_order`), on this thread.
        tracing::debug!(ordering_ms = ordering.as_secs_f64() * 1e3, "spawn ordered");
        if let Some((j, at, text, via)) = journal
            && acc.spawned > 0
            && !text.is_empty()
        {
            // Written off the runtime's workers (a large spawn is a large line); the reply
            // waits for it, so an answered spawn is in the journal.
            let failed = acc.failed.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let (entry, devices) = text.entry(&failed);
                j.record_with(at, journal::with_source(entry, via), Some(("devices", &devices)))
            })
            .await;
        }
        Ok(acc)
    }

    /// Applies `action` to the selected devices on the shards concerned and merges the
    /// replies.
    pub(crate) async fn scan(
        &self,
        selection: Selection,
        action: Action,
    ) -> Result<ScanReply, PlaneError> {
        // Stamped on arrival; written once the shards answered (an action that changed no
        // device changed nothing, and is left out).
        let journal = match (&self.options.journal, &action) {
            (_, Action::Status { .. } | Action::List { .. } | Action::CountBy(_)) | (None, _) => {
                None
            }
            (Some(j), _) => Some((
                j.clone(),
                j.stamp(),
                selection.clone(),
                journal::FRONT_END.try_with(|f| *f).ok(),
            )),
        };
        let n = self.shards();
        let mut parts: Vec<(usize, Arc<Selection>)> = vec![];
        let everywhere = n > 1 && self.ids_everywhere();
        match selection {
            Selection::Ids(ids) if everywhere => {
                let sel = Arc::new(Selection::Ids(ids));
                parts.extend((0..n).map(|i| (i, sel.clone())));
            }
            Selection::Ids(ids) => {
                let mut per: Vec<Vec<String>> = vec![vec![]; n];
                for id in ids {
                    per[seed::shard_of(&id, n)].push(id);
                }
                for (i, ids) in per.into_iter().enumerate() {
                    if !ids.is_empty() {
                        parts.push((i, Arc::new(Selection::Ids(ids))));
                    }
                }
            }
            other => {
                let sel = Arc::new(other);
                parts.extend((0..n).map(|i| (i, sel.clone())));
            }
        }
        let mut waits = vec![];
        for (i, selection) in parts {
            let (reply, rx) = oneshot::channel();
            self.send(i, ShardCommand::Scan { selection, action: action.clone(), reply }).await?;
            waits.push((i, rx));
        }
        let mut acc = ScanReply::default();
        let mut per_shard = vec![];
        let mut missing: BTreeMap<String, usize> = BTreeMap::new();
        for (shard, rx) in waits {
            let mut r = rx.await.map_err(|_| PlaneError::NoReply)?;
            per_shard.push(format!("{shard}:{}", r.affected));
            if everywhere {
                // Each shard reports the ids it does not have: not found = reported by all.
                let mine: BTreeSet<String> = std::mem::take(&mut r.not_found).into_iter().collect();
                for id in mine {
                    *missing.entry(id).or_default() += 1;
                }
            }
            acc.merge(r);
        }
        if everywhere {
            acc.not_found =
                missing.into_iter().filter(|(_, k)| *k == n).map(|(id, _)| id).collect();
        }
        let what = match &action {
            Action::Stop => Some("devices stopped".to_string()),
            Action::Fault(f) => Some(format!("fault injected: {}", f.kind.type_name())),
            Action::ClearFaults(_) => Some("faults cleared".to_string()),
            Action::Pause(true) => Some("devices paused".to_string()),
            Action::Pause(false) => Some("devices resumed".to_string()),
            Action::Behaviour(_) => Some("behaviour updated".to_string()),
            Action::Status { .. } | Action::List { .. } | Action::CountBy(_) => None,
        };
        if let Some((j, at, sel, via)) = journal
            && acc.affected > 0
        {
            let (action, affected, not_found) =
                (action.clone(), acc.affected, acc.not_found.clone());
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(entry) = journal::scan_entry(&sel, &action, affected, &not_found) {
                    j.record(at, journal::with_source(entry, via));
                }
            })
            .await;
        }
        if what.is_some() && acc.affected >= TRIM_AFTER_DEVICES {
            give_back_memory();
        }
        if let Some(what) = what {
            tracing::info!(
                devices = acc.affected,
                not_found = acc.not_found.len(),
                per_shard = per_shard.join(","),
                "{what}"
            );
        }
        Ok(acc)
    }

    /// Subscribes to the telemetry of the selected devices on every shard. The caller reads
    /// `rx` and calls [`ControlPlane::unsubscribe`] when done.
    /// At most [`limits::MAX_STREAMS`] are open at once.
    pub(crate) async fn subscribe(&self, sel: Arc<Selection>) -> Result<TelemetryFeed, PlaneError> {
        let open = self.streams_open.fetch_add(1, Ordering::AcqRel);
        let slot = StreamSlot(self.streams_open.clone());
        if open >= limits::MAX_STREAMS {
            return Err(PlaneError::Exhausted(format!(
                "{} telemetry streams are open, the most this runtime serves at once; \
                 end one first",
                limits::MAX_STREAMS
            )));
        }
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let dropped = Arc::new(AtomicU64::new(0));
        let congested = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<PointBatch>(STREAM_BUFFER);
        let n = self.shards();
        let everywhere = self.ids_everywhere();
        for shard in 0..n {
            let selection = match &*sel {
                Selection::Ids(_) if everywhere => sel.clone(),
                Selection::Ids(ids) => Arc::new(Selection::Ids(
                    ids.iter().filter(|i| seed::shard_of(i, n) == shard).cloned().collect(),
                )),
                _ => sel.clone(),
            };
            let sub = Subscription {
                id,
                selection,
                tx: tx.clone(),
                dropped: dropped.clone(),
                budget: self.stream_budget.clone(),
                congested: congested.clone(),
            };
            self.send(shard, ShardCommand::Subscribe(sub)).await?;
        }
        Ok(TelemetryFeed { id, rx, dropped, congested, _slot: slot })
    }

    /// Ends a telemetry subscription on every shard.
    pub(crate) async fn unsubscribe(&self, id: u64) {
        for shard in 0..self.shards() {
            let _ = self.send(shard, ShardCommand::Unsubscribe(id)).await;
        }
    }

    /// A receiver of every device event from now on.
    pub(crate) fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The sink a spawned device asking for `asked` publishes to: `Ok(protocol)`, or the
    /// reason it is refused. A protocol that has no sink here (a network protocol without
    /// `[sink.NAME]` settings, or an unknown one) falls back to the console, as the original
    /// runtime did, with a warning once per protocol (log and StreamEvents); with
    /// `--strict-protocols` it is refused.
    pub(crate) fn sink_for(&self, asked: &str) -> Result<(Protocol, Option<String>), String> {
        let configured = |p: Protocol| match p {
            Protocol::Mqtt => self.options.sinks.mqtt.is_some(),
            Protocol::Amqp => self.options.sinks.amqp.is_some(),
            Protocol::Http => self.options.sinks.http.is_some(),
            Protocol::Coap => self.options.sinks.coap.is_some(),
            Protocol::File => self.options.sinks.file.is_some(),
            Protocol::Console | Protocol::Null => true,
        };
        let why = match Protocol::parse(asked) {
            Some(p) if configured(p) => return Ok((p, None)),
            Some(p) => format!("this runtime has no [sink.{}] settings", p.name()),
            None => {
                let known: Vec<&str> = Protocol::ALL.iter().map(|p| p.name()).collect();
                format!("unknown protocol {asked:?} (known: {})", known.join(", "))
            }
        };
        if self.options.strict_protocols {
            return Err(format!("cannot publish over {asked:?}: {why} (--strict-protocols)"));
        }
        let first = self.warned.lock().unwrap_or_else(|e| e.into_inner()).insert(asked.to_string());
        if first {
            let message =
                format!("devices asking for protocol {asked:?} publish to the console sink: {why}");
            tracing::warn!(protocol = asked, "{message}");
            let _ = self.events.send(Arc::new(DeviceEvent {
                device_id: String::new(),
                kind: EventKind::Warning,
                message,
                at_ms: crate::measure::clock::now_ms(),
                metadata: vec![
                    ("warning", "protocol_fallback".into()),
                    ("requested_protocol", asked.to_string()),
                    ("sink", "console".into()),
                ],
                labels: BTreeMap::new(),
            }));
        }
        Ok((Protocol::Console, Some(asked.to_string())))
    }

    /// The profile already compiled from the same spec bytes, if one is still in use, else
    /// `compiled` (remembered for the next request).
    pub(crate) fn shared_profile(&self, key: &[u8], compiled: Profile) -> Arc<Profile> {
        let mut cache = self.profiles.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(key).and_then(Weak::upgrade) {
            return p;
        }
        if cache.len() >= 4096 {
            cache.retain(|_, w| w.strong_count() > 0);
        }
        let p = Arc::new(compiled);
        cache.insert(key.to_vec(), Arc::downgrade(&p));
        p
    }

    /// Sums one published counter over the shards.
    pub(crate) fn sum(&self, f: fn(&ShardCounters) -> &AtomicU64) -> u64 {
        self.counters.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
    }

    /// A snapshot of the runtime's figures, for the admin HTTP server (`/metrics`, `/status`).
    pub fn figures(&self) -> Figures {
        let per = |f: fn(&ShardCounters) -> &AtomicU64| -> Vec<u64> {
            self.counters.iter().map(|c| f(c).load(Ordering::Relaxed)).collect()
        };
        Figures {
            devices: per(|c| &c.devices),
            messages: per(|c| &c.messages),
            errors: per(|c| &c.errors),
            suppressed: per(|c| &c.suppressed),
            faults_active: per(|c| &c.faults_active),
            messages_per_second: self.messages_per_second(),
            telemetry_points_dropped: self.dropped_points.load(Ordering::Relaxed),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            fallback_devices: self.fallback_devices(),
        }
    }

    /// What every shard last published for `/metrics`.
    pub(crate) fn published(&self) -> Vec<Arc<crate::measure::board::ShardFigures>> {
        self.counters.iter().map(|c| c.figures.read()).collect()
    }

    /// Devices on the fallback sink, by the protocol they asked for, over every shard.
    pub(crate) fn fallback_devices(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for c in &self.counters {
            for (k, v) in c.fallback_devices.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                *out.entry(k.clone()).or_insert(0) += v;
            }
        }
        out
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub(crate) fn messages_total(&self) -> u64 {
        self.sum(|c| &c.messages)
    }

    pub(crate) fn messages_per_second(&self) -> f64 {
        let total = self.messages_total();
        let mut r = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        let secs = r.0.elapsed().as_secs_f64();
        if secs >= 1.0 {
            r.2 = total.saturating_sub(r.1) as f64 / secs;
            *r = (Instant::now(), total, r.2);
        }
        r.2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_spec_in_two_requests_shares_one_profile_until_it_is_unused() {
        let (plane, _links) = ControlPlane::new(2, PlaneOptions::default());
        let a = plane.shared_profile(b"spec-a", Profile::for_tests("a"));
        let again = plane.shared_profile(b"spec-a", Profile::for_tests("a"));
        assert!(Arc::ptr_eq(&a, &again));
        let b = plane.shared_profile(b"spec-b", Profile::for_tests("b"));
        assert!(!Arc::ptr_eq(&a, &b));
        drop((a, again));
        let fresh = plane.shared_profile(b"spec-a", Profile::for_tests("a2"));
        assert_eq!(fresh.name, "a2");
    }

    #[test]
    fn batch_sizes_land_in_the_bucket_of_their_upper_bound() {
        let b = BatchSizes::default();
        for n in [1, 2, 100, 101, 20_000] {
            b.record(n);
        }
        let c: Vec<u64> = b.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!((c[0], c[1], c[5], c[6], c[BATCH_BUCKETS.len()]), (1, 1, 1, 1, 1));
        assert_eq!(b.sum.load(Ordering::Relaxed), 20_204);
    }
}
