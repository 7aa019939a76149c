//! `/metrics`: one `prometheus-client` registry, built when the admin server starts, holding one
//! collector. At scrape time the collector reads what the shards published (the [`Board`]) and
//! the control plane's per-shard counters, merges the shards by label set and encodes every
//! family; the shards never touch the registry, and no label is looked up per message.
//!
//! The registry writes OpenMetrics, which Prometheus asks for first. Clients that do not
//! (curl, `promtool check metrics`) get the classic text format 0.0.4, converted by
//! [`openmetrics_to_text`]: the two differ only in how a counter's family is named.

use crate::control::plane::{BATCH_BUCKETS, ControlPlane};
use crate::measure::board::{BUCKETS_US, Buckets, ProfileFigures, ShardFigures};
use crate::measure::counters::Counters;
use crate::measure::run_identity::RunIdentity;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Content type of the OpenMetrics answer.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic text answer.
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeProtocol {
    device_type: String,
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Sent {
    device_type: String,
    protocol: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceError {
    device_type: String,
    error_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScenarioPhase {
    scenario: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceType {
    device_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Fault {
    fault_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Sink {
    sink: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkState {
    sink: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkEvent {
    sink: String,
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Shard {
    shard: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunInfo {
    run_id: String,
    seed: String,
    version: &'static str,
    clock: &'static str,
}

/// The registry and what its collector reads.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub fn new(
        plane: Arc<ControlPlane>,
        run: RunIdentity,
        audit: Option<crate::audit::AuditProbe>,
    ) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(FleetCollector { plane, run }));
        if let Some(probe) = audit {
            registry.register_collector(Box::new(AuditCollector { probe }));
        }
        Metrics { registry }
    }

    /// Every family, as OpenMetrics (`openmetrics`) or as the classic text format.
    pub fn render(&self, openmetrics: bool) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail; a collector error would only cut the output short.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        if openmetrics { out } else { openmetrics_to_text(&out) }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuditKind {
    kind: &'static str,
}

/// The delivery audit's running counts (`iot_sim_audit_*`). Losses are judged at the end of
/// the run (a gap may still fill), so they are in the report, not here.
#[derive(Debug)]
struct AuditCollector {
    probe: crate::audit::AuditProbe,
}

impl Collector for AuditCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let (c, errors) = self.probe.read();
        family(
            &mut enc,
            "iot_sim_audit_messages",
            "Messages the delivery audit consumed, by how they were classified.",
            MetricType::Counter,
            [
                ("in_order", c.in_order),
                ("duplicated", c.duplicated),
                ("reordered", c.reordered),
                ("stale", c.stale),
                ("unparsable", c.unparsable),
                ("unknown_device", c.unknown_device),
                ("foreign_topic", c.foreign_topic),
                ("corrupted", c.corrupted),
                ("off_grid", c.off_grid),
                ("no_seq", c.no_seq),
            ]
            .map(|(kind, v)| (AuditKind { kind }, counter(v))),
        )?;
        if let Some(v) = &c.values {
            family(
                &mut enc,
                "iot_sim_audit_values",
                "Messages the delivery audit checked field by field (verify = \"values\"), by what it found.",
                MetricType::Counter,
                [
                    ("verified", v.verified),
                    ("unverified", v.unverified),
                    ("value_mismatch", v.value_mismatch),
                    ("field_missing", v.field_missing),
                    ("field_extra", v.field_extra),
                    ("type_mismatch", v.type_mismatch),
                ]
                .map(|(kind, v)| (AuditKind { kind }, counter(v))),
            )?;
        }
        single(
            &mut enc,
            "iot_sim_audit_consumer_errors",
            "Connection errors and refusals (a missing queue) of the audit's consumer.",
            counter(errors),
        )?;
        single(
            &mut enc,
            "iot_sim_audit_reorder_max",
            "The farthest (in seqs) a message arrived behind the newest of its device.",
            gauge(c.reorder_max as i64),
        )
    }
}

/// Reads the published figures at scrape time.
struct FleetCollector {
    plane: Arc<ControlPlane>,
    run: RunIdentity,
}

impl std::fmt::Debug for FleetCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCollector").field("run", &self.run).finish_non_exhaustive()
    }
}

/// One profile's figures summed over the shards.
#[derive(Default)]
struct Merged {
    devices: u64,
    counts: Counters,
    slowdowns: u64,
    error_kinds: BTreeMap<String, u64>,
    latency: Buckets,
    commands: u64,
    commands_answered: u64,
    command_rtt: Buckets,
}

impl Merged {
    fn add(&mut self, p: &ProfileFigures) {
        self.devices += p.devices;
        self.counts += p.counts;
        self.slowdowns += p.slowdowns;
        for (k, v) in &p.error_kinds {
            *self.error_kinds.entry(k.clone()).or_default() += v;
        }
        self.latency.add(&p.latency);
        self.commands += p.commands;
        self.commands_answered += p.commands_answered;
        self.command_rtt.add(&p.command_rtt);
    }
}

/// Sums over the shards, keyed (and so sorted) by label values.
#[derive(Default)]
struct Fleet {
    by_type: BTreeMap<(String, &'static str), Merged>,
    lateness: Buckets,
    connected: BTreeMap<&'static str, (u64, u64)>,
    queue_depth: BTreeMap<&'static str, u64>,
    sink_events: BTreeMap<String, u64>,
    faults_active: BTreeMap<&'static str, u64>,
    faults_injected: BTreeMap<&'static str, u64>,
    paused: u64,
    /// The scenario's current phase (the shards agree on it: it follows sim time).
    scenario_phase: Option<(String, String)>,
}

fn merge(shards: &[Arc<ShardFigures>]) -> Fleet {
    let mut f = Fleet::default();
    for s in shards {
        for p in &s.profiles {
            f.by_type.entry((p.device_type.to_string(), p.protocol)).or_default().add(p);
        }
        f.lateness.add(&s.lateness);
        f.paused += s.paused;
        if f.scenario_phase.is_none() {
            f.scenario_phase.clone_from(&s.scenario_phase);
        }
        for k in &s.sinks {
            let c = f.connected.entry(k.sink).or_default();
            c.0 += k.connected;
            c.1 += k.connections;
            *f.queue_depth.entry(k.sink).or_default() += k.queue_depth;
        }
        for (k, v) in &s.sink_events {
            *f.sink_events.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &s.faults_active {
            *f.faults_active.entry(k).or_default() += v;
        }
        for (k, v) in &s.faults_injected {
            *f.faults_injected.entry(k).or_default() += v;
        }
    }
    f
}

type Enc<'a> = DescriptorEncoder<'a>;

fn family<S: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut Enc,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (S, M)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in samples {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A family of one unlabelled sample.
fn single(enc: &mut Enc, name: &str, help: &str, metric: impl EncodeMetric) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(m)
}

fn histogram<S: EncodeLabelSet>(
    enc: &mut Enc,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (S, Buckets)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, b) in samples {
        let mut bounds: Vec<(f64, u64)> =
            BUCKETS_US.iter().map(|&us| us as f64 / 1e6).zip(b.counts).collect();
        bounds.push((f64::MAX, b.counts[BUCKETS_US.len()]));
        m.encode_family(&labels)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            b.sum_us / 1e6,
            b.count(),
            &bounds,
            None,
        )?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: i64) -> ConstGauge<i64> {
    ConstGauge::new(v)
}

impl Collector for FleetCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        let f = merge(&self.plane.published());
        let tp = |k: &(String, &'static str)| TypeProtocol {
            device_type: k.0.clone(),
            protocol: k.1.to_string(),
        };
        let figures = self.plane.figures();

        // The seed's twelve.
        family(
            &mut enc,
            "iot_sim_devices_active",
            "Devices running, by device type and protocol.",
            Gauge,
            f.by_type.iter().map(|(k, m)| (tp(k), gauge(m.devices as i64))),
        )?;
        family(
            &mut enc,
            "iot_sim_messages_sent",
            "Messages by outcome: ok (completed by the sink), error (failed), dropped (backpressure).",
            Counter,
            f.by_type.iter().flat_map(|(k, m)| {
                [
                    ("ok", m.counts.messages),
                    ("error", m.counts.errors),
                    ("dropped", m.counts.dropped),
                ]
                .map(|(status, v)| {
                    (
                        Sent { device_type: k.0.clone(), protocol: k.1.to_string(), status },
                        counter(v),
                    )
                })
            }),
        )?;
        histogram(
            &mut enc,
            "iot_sim_publish_latency_seconds",
            "Intended send time to completion in the sink (the report's latency).",
            f.by_type.iter().map(|(k, m)| (tp(k), m.latency.clone())),
        )?;
        {
            let b = &self.plane.batch_sizes;
            let counts: Vec<u64> = b.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            let mut bounds: Vec<(f64, u64)> =
                BATCH_BUCKETS.iter().map(|&n| n as f64).zip(counts.iter().copied()).collect();
            bounds.push((f64::MAX, counts[BATCH_BUCKETS.len()]));
            let mut m = enc.encode_descriptor(
                "iot_sim_telemetry_batch_size",
                "Points per StreamTelemetry batch sent to gRPC clients.",
                None,
                MetricType::Histogram,
            )?;
            m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                b.sum.load(Ordering::Relaxed) as f64,
                counts.iter().sum(),
                &bounds,
                None,
            )?;
        }
        family(
            &mut enc,
            "iot_sim_device_errors",
            "Failed messages by device type and error kind (timeout, nack, http_503, ...).",
            Counter,
            f.by_type.iter().flat_map(|(k, m)| {
                m.error_kinds.iter().map(|(kind, v)| {
                    (
                        DeviceError { device_type: k.0.clone(), error_type: kind.clone() },
                        counter(*v),
                    )
                })
            }),
        )?;
        single(
            &mut enc,
            "iot_sim_threads",
            "Operating-system threads of the process (the original counted goroutines).",
            gauge(thread_count() as i64),
        )?;
        single(
            &mut enc,
            "iot_sim_memory_bytes",
            "Resident memory of the process.",
            gauge(crate::report::rss_bytes() as i64),
        )?;
        family(
            &mut enc,
            "iot_sim_faults_active",
            "Active faults (one per device and fault), by fault type.",
            Gauge,
            f.faults_active.iter().map(|(k, v)| (Fault { fault_type: k }, gauge(*v as i64))),
        )?;
        family(
            &mut enc,
            "iot_sim_backpressure_drops",
            "Messages dropped because a sink queue was full.",
            Counter,
            by_device_type(&f, |m| m.counts.dropped).map(|(t, v)| (t, counter(v))),
        )?;
        family(
            &mut enc,
            "iot_sim_backpressure_slowdowns",
            "Times a connection's devices were slowed down (backpressure = slow_down).",
            Counter,
            by_device_type(&f, |m| m.slowdowns).map(|(t, v)| (t, counter(v))),
        )?;
        family(
            &mut enc,
            "iot_sim_publish_queue_depth",
            "Messages waiting in a sink's queues.",
            Gauge,
            f.queue_depth.iter().map(|(k, v)| (Sink { sink: k }, gauge(*v as i64))),
        )?;
        family(
            &mut enc,
            "iot_sim_faults_injected",
            "Faults injected (one per device and fault), by fault type.",
            Counter,
            f.faults_injected.iter().map(|(k, v)| (Fault { fault_type: k }, counter(*v))),
        )?;

        // Beyond the seed.
        family(
            &mut enc,
            "iot_sim_commands_received",
            "Downlink commands received by per-device MQTT sessions, by device type.",
            Counter,
            f.by_type
                .iter()
                .filter(|(k, _)| k.1 == "mqtt")
                .map(|(k, m)| (tp(k), counter(m.commands))),
        )?;
        family(
            &mut enc,
            "iot_sim_commands_answered",
            "Downlink commands answered on the respond topic, by device type.",
            Counter,
            f.by_type
                .iter()
                .filter(|(k, _)| k.1 == "mqtt")
                .map(|(k, m)| (tp(k), counter(m.commands_answered))),
        )?;
        histogram(
            &mut enc,
            "iot_sim_command_round_trip_seconds",
            "A command's sent_at to its receipt by the device (commands that carry sent_at).",
            f.by_type
                .iter()
                .filter(|(k, _)| k.1 == "mqtt")
                .map(|(k, m)| (tp(k), m.command_rtt.clone())),
        )?;
        single(
            &mut enc,
            "iot_sim_devices_paused",
            "Devices paused (PauseDevices); they are counted in iot_sim_devices_active too.",
            gauge(f.paused as i64),
        )?;
        family(
            &mut enc,
            "iot_sim_scenario_phase",
            "1 for the scenario phase the run is in (by sim time); absent outside any phase.",
            MetricType::Gauge,
            f.scenario_phase
                .iter()
                .map(|(scenario, phase)| {
                    (ScenarioPhase { scenario: scenario.clone(), phase: phase.clone() }, gauge(1))
                })
                .collect::<Vec<_>>(),
        )?;
        histogram(
            &mut enc,
            "iot_sim_tick_lateness_seconds",
            "Fire time minus intended time of device ticks (realtime clock).",
            [(Labels0 {}, f.lateness.clone())],
        )?;
        family(
            &mut enc,
            "iot_sim_sink_connections",
            "Network sink connections by state.",
            Gauge,
            f.connected.iter().flat_map(|(k, (up, all))| {
                [
                    (SinkState { sink: k, state: "connected" }, gauge(*up as i64)),
                    (SinkState { sink: k, state: "disconnected" }, gauge((all - up) as i64)),
                ]
            }),
        )?;
        family(
            &mut enc,
            "iot_sim_sink_events",
            "Connection events of network sinks (reconnect, connect_error, disconnect, ...).",
            Counter,
            f.sink_events.iter().map(|(k, v)| {
                let (sink, event) = k.split_once('.').unwrap_or((k.as_str(), ""));
                (SinkEvent { sink: sink.into(), event: event.into() }, counter(*v))
            }),
        )?;
        family(
            &mut enc,
            "iot_sim_run_info",
            "Always 1; the labels identify the run.",
            Gauge,
            [(
                RunInfo {
                    run_id: self.run.run_id.clone(),
                    seed: self.run.seed.to_string(),
                    version: self.run.version,
                    clock: self.run.clock,
                },
                gauge(1),
            )],
        )?;
        single(
            &mut enc,
            "iot_sim_uptime_seconds",
            "Time since the control plane started.",
            ConstGauge::new(figures.uptime_seconds),
        )?;
        single(
            &mut enc,
            "iot_sim_telemetry_points_dropped",
            "StreamTelemetry points dropped because a gRPC client read too slowly.",
            counter(figures.telemetry_points_dropped),
        )?;
        let per_shard = |values: &[u64]| -> Vec<(Shard, u64)> {
            values.iter().enumerate().map(|(i, v)| (Shard { shard: i as u64 }, *v)).collect()
        };
        family(
            &mut enc,
            "iot_sim_shard_devices",
            "Devices per shard (core).",
            Gauge,
            per_shard(&figures.devices).into_iter().map(|(s, v)| (s, gauge(v as i64))),
        )?;
        family(
            &mut enc,
            "iot_sim_shard_messages",
            "Messages completed per shard (core).",
            Counter,
            per_shard(&figures.messages).into_iter().map(|(s, v)| (s, counter(v))),
        )?;
        family(
            &mut enc,
            "iot_sim_messages_suppressed",
            "Messages not published because of a DISCONNECT fault, per shard.",
            Counter,
            per_shard(&figures.suppressed).into_iter().map(|(s, v)| (s, counter(v))),
        )?;
        Ok(())
    }
}

/// A label set with no labels (for a histogram without labels).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels0 {}

/// `value` summed per device type (over protocols).
fn by_device_type(f: &Fleet, value: fn(&Merged) -> u64) -> impl Iterator<Item = (DeviceType, u64)> {
    let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
    for ((t, _), m) in &f.by_type {
        *sums.entry(t.as_str()).or_default() += value(m);
    }
    sums.into_iter()
        .map(|(t, v)| (DeviceType { device_type: t.to_string() }, v))
        .collect::<Vec<_>>()
        .into_iter()
}

/// Operating-system threads of this process.
pub fn thread_count() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Threads:"))?.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// OpenMetrics -> Prometheus text format 0.0.4: a counter family `x` (samples `x_total`) is
/// named `x_total` in its `# HELP`/`# TYPE` lines, and the `# UNIT` and `# EOF` lines go.
pub fn openmetrics_to_text(om: &str) -> String {
    let counters: std::collections::BTreeSet<&str> =
        om.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(om.len() + counters.len() * 16);
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line.strip_prefix("# HELP ").map(|r| ("HELP", r));
        let meta = meta.or_else(|| line.strip_prefix("# TYPE ").map(|r| ("TYPE", r)));
        if let Some((kind, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                let _ = writeln!(out, "# {kind} {name}_total {tail}");
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_families_take_their_total_name_in_the_text_format() {
        let om = "# HELP a_sent Sent.\n# TYPE a_sent counter\na_sent_total{x=\"1\"} 5\n# HELP b Gauge.\n# TYPE b gauge\nb 2\n# EOF\n";
        let text = openmetrics_to_text(om);
        assert_eq!(
            text,
            "# HELP a_sent_total Sent.\n# TYPE a_sent_total counter\na_sent_total{x=\"1\"} 5\n# HELP b Gauge.\n# TYPE b gauge\nb 2\n"
        );
    }

    #[test]
    fn merging_sums_shards_per_device_type_and_protocol() {
        let p = |t: &str, messages: u64| ProfileFigures {
            device_type: t.into(),
            protocol: "mqtt",
            counts: Counters::new(messages, 0, 0),
            devices: 1,
            error_kinds: vec![("timeout".into(), 2)],
            ..Default::default()
        };
        let a =
            Arc::new(ShardFigures { profiles: vec![p("x", 1), p("y", 2)], ..Default::default() });
        let b = Arc::new(ShardFigures { profiles: vec![p("x", 10)], ..Default::default() });
        let f = merge(&[a, b]);
        assert_eq!(f.scenario_phase, None);
        let x = &f.by_type[&("x".to_string(), "mqtt")];
        assert_eq!((x.counts.messages, x.devices, x.error_kinds["timeout"]), (11, 2, 4));
        assert_eq!(f.by_type[&("y".to_string(), "mqtt")].counts.messages, 2);
    }

    #[test]
    fn the_scenario_phase_is_taken_from_the_shards() {
        let phase = Some(("ramp_up".to_string(), "steady".to_string()));
        let a = Arc::new(ShardFigures { scenario_phase: phase.clone(), ..Default::default() });
        let b = Arc::new(ShardFigures::default());
        assert_eq!(merge(&[b, a]).scenario_phase, phase);
    }
}
