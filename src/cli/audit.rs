//! `iot-sim audit`: a stand-alone delivery audit of a fleet that runs in another process.
//!
//! It reads the fleet file for the roster (who exists, their topics and schedule), consumes
//! from MQTT (`--mqtt URL --filter F`) or AMQP (`--amqp URL --queue Q`), and on Ctrl-C,
//! SIGTERM or after `--duration` prints the audit, writes `audit.json` and judges the fleet
//! file's audit thresholds (exit 3 when one fails).

use super::exit;
use crate::audit::{Auditor, EndFacts, LatencyClock};
use crate::config::Overrides;
use crate::config::audit::{AuditSource, binding_of};
use crate::walk::Problems;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `iot-sim audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The fleet file of the run being audited (its [audit] table gives the defaults).
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
    /// Consume from this MQTT broker (mqtt://host:port).
    #[arg(long, value_name = "URL", conflicts_with = "amqp")]
    pub mqtt: Option<String>,
    /// MQTT filter to subscribe to (repeatable; `$share/GROUP/...` allowed). Default: from the
    /// profiles' topic templates.
    #[arg(long, value_name = "FILTER")]
    pub filter: Vec<String>,
    /// MQTT QoS of the subscription.
    #[arg(long, value_name = "Q", value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: Option<u8>,
    /// Consume from this AMQP broker (amqp://host:port/vhost).
    #[arg(long, value_name = "URL")]
    pub amqp: Option<String>,
    /// AMQP queue to consume from (must exist unless --declare).
    #[arg(long, value_name = "Q")]
    pub queue: Option<String>,
    /// Declare the queue (and bind it to the sink's exchange with the filters as bindings).
    #[arg(long)]
    pub declare: bool,
    /// Serve the endpoint an HTTP sink posts to on this address (e.g. 127.0.0.1:8088).
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["mqtt", "amqp"])]
    pub http: Option<std::net::SocketAddr>,
    /// Stop after this long (wall time), such as 30s; default: until Ctrl-C or SIGTERM.
    #[arg(long, value_name = "D", value_parser = super::parse_duration)]
    pub duration: Option<u64>,
    /// Where audit.json goes (default: the fleet file's report_dir).
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
}

pub fn main(a: &AuditArgs) -> anyhow::Result<i32> {
    let config = match super::load(&a.config, &Overrides::default()) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let mut settings = match config.audit.clone() {
        Some(s) => s,
        None => match crate::config::audit::defaults(&config.fleet, &config.sinks) {
            Ok(s) => s,
            Err(p) => return Ok(bad(&p)),
        },
    };
    let filters =
        |derived: Vec<String>| if a.filter.is_empty() { derived } else { a.filter.clone() };
    if let Some(url) = &a.mqtt {
        let u = match crate::config::sinks::split_url(url) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("error: --mqtt: {e}");
                return Ok(exit::BAD_CONFIG);
            }
        };
        let (old_filters, old_qos) = match &settings.source {
            AuditSource::Mqtt { filters, qos, .. } => (filters.clone(), *qos),
            _ => (
                crate::config::audit::derived_filters(
                    &config.fleet,
                    crate::sim::profile::Protocol::Mqtt,
                ),
                1,
            ),
        };
        settings.source = AuditSource::Mqtt {
            url: url.clone(),
            host: u.host,
            port: u.port.unwrap_or(1883),
            filters: filters(old_filters),
            qos: a.qos.unwrap_or(old_qos),
        };
    } else if let Some(url) = &a.amqp {
        let url = &match crate::config::sinks::split_url(url) {
            Ok(parts) => crate::config::sinks::amqp_url_with_env(url.clone(), &parts),
            Err(e) => {
                eprintln!("error: --amqp: {e}");
                return Ok(exit::BAD_CONFIG);
            }
        };
        let exchange =
            config.sinks.amqp.as_ref().map_or("iot.telemetry".into(), |s| s.exchange.clone());
        let derived = crate::config::audit::derived_filters(
            &config.fleet,
            crate::sim::profile::Protocol::Amqp,
        );
        let bindings =
            filters(derived).iter().map(|f| binding_of(f, &settings.routing_separator)).collect();
        let queue = a.queue.clone().unwrap_or_default();
        if queue.is_empty() && !a.declare {
            eprintln!("error: --amqp needs --queue Q (an existing queue) or --declare");
            return Ok(exit::BAD_CONFIG);
        }
        settings.source =
            AuditSource::Amqp { url: url.clone(), queue, declare: a.declare, exchange, bindings };
    } else if let Some(listen) = a.http {
        let topic_header =
            config.sinks.http.as_ref().map_or("X-Topic".to_string(), |h| h.topic_header.clone());
        settings.source = AuditSource::Http { listen, topic_header };
    } else if (!a.filter.is_empty() || a.qos.is_some())
        && let AuditSource::Mqtt { filters: f, qos, .. } = &mut settings.source
    {
        *f = filters(f.clone());
        *qos = a.qos.unwrap_or(*qos);
    }
    // Timestamps are checked against the tick grid only when seed and start time are the
    // fleet file's (a runtime that chose them at random published another grid).
    let grid_start = match (config.run.seed, config.run.start_ms) {
        (Some(_), Some(t)) => Some(t),
        _ => None,
    };
    let seed = config.run.seed.unwrap_or(0);
    let fleet = std::sync::Arc::new(config.fleet.clone());
    let auditor =
        Auditor::start(&settings, fleet, seed, grid_start, true).map_err(anyhow::Error::msg)?;
    // A runtime started with the default start time (now) and speed 1 publishes timestamps
    // that are wall times: the intended send time is the timestamp itself.
    auditor.set_clock(LatencyClock::Wall { wall0_us: 0, start_ms: 0, speed: 1.0 });
    crate::logs::notice(&format!("audit: consuming from {}", settings.source.describe()), &[]);
    wait(a.duration)?;
    let end = EndFacts { seed, start_ms: 0, schedule_end_ms: None };
    let outcome = auditor.finish(&end, false);
    print!("{}", crate::audit::render(&outcome.report));
    let rows = outcome.rows();
    let verdicts: Vec<_> = config
        .thresholds
        .iter()
        .filter(|t| t.metric.is_audit())
        .map(|t| t.judge_audit(Some(&rows)))
        .collect();
    print!("{}", crate::threshold::render(&verdicts));
    let dir = a.report_dir.clone().unwrap_or(config.run.report_dir.clone());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("audit.json");
    let json = serde_json::json!({ "audit": outcome.report, "thresholds": verdicts });
    std::fs::write(&path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    crate::logs::notice(&format!("audit report: {}", path.display()), &[]);
    Ok(if verdicts.iter().any(|v| !v.passed) { exit::THRESHOLD_FAILED } else { exit::OK })
}

fn bad(p: &Problems) -> i32 {
    eprintln!("error: {p}");
    exit::BAD_CONFIG
}

/// Until Ctrl-C, SIGTERM or `duration_ms`.
fn wait(duration_ms: Option<u64>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let limit = Duration::from_millis(duration_ms.unwrap_or(u64::MAX / 4));
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = tokio::time::sleep(limit) => {}
        }
        Ok::<(), anyhow::Error>(())
    })
}
