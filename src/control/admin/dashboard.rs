//! The live dashboard: `GET /` (one embedded page, `web/`), the aggregates it polls and its
//! telemetry stream. The server aggregates and the browser only draws: every answer is sized
//! by the number of device types, sinks and fault types, never by the number of devices.
//!
//! - `GET /api/v1/overview`: devices by type and state, active faults, sink connections, the
//!   scenario phase; read from what the shards publish about once a second (no device scan);
//! - `GET /api/v1/history`: a ring of fleet figures, one a second for the last
//!   [`limits::DASHBOARD_HISTORY_S`] seconds, filled by [`sample_loop`];
//! - `GET /api/v1/profiles`: the device types (and their protocols) the runtime runs;
//! - `GET /api/v1/telemetry/stream`: Server-Sent Events of the selected devices' points,
//!   through the same bounded subscription as gRPC `StreamTelemetry` (stream slots, byte
//!   budget); at most [`SSE_POINTS_PER_FLUSH`] points per flush reach the browser, the rest are
//!   counted as dropped (once a flush is full the shards skip the stream until the next one,
//!   as for a congested gRPC stream), and a browser that goes away ends the subscription at
//!   once.

use super::routes::{AdminState, ApiError};
use crate::control::{proto, spec};
use crate::limits;
use crate::measure::board::{BUCKETS_US, Buckets, ShardFigures};
use crate::measure::counters::Counters;
use crate::measure::stats::ProfileStats;
use crate::threshold::{Metric, Threshold, Verdict};
use axum::Json;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Device types charted one by one in the history; the others are summed as `other`.
pub const MAX_CHARTED_TYPES: usize = 12;
/// Points one SSE event carries at most (per flush); the rest are dropped and counted.
pub const SSE_POINTS_PER_FLUSH: usize = 200;
/// How often an SSE stream sends what it gathered.
const SSE_FLUSH: Duration = Duration::from_millis(500);
/// How soon the browser reconnects a stream that ended at the request deadline.
const SSE_RETRY: Duration = Duration::from_millis(300);

/// `GET /`: the dashboard page.
pub async fn page(State(s): State<Arc<AdminState>>) -> Html<String> {
    Html(crate::report::html::dashboard(&s.run))
}

/// Latency of one device type within one history point.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TypeLatency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub msgs_per_s: f64,
}

/// One second of fleet figures.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryPoint {
    /// Seconds since the runtime started.
    pub t_s: f64,
    pub devices: u64,
    pub msgs_per_s: f64,
    pub errors_per_s: f64,
    pub drops_per_s: f64,
    /// Tick lateness p99 within the second (realtime clock; 0 when nothing fired late).
    pub lateness_p99_us: u64,
    pub faults_active: u64,
    pub by_type: BTreeMap<String, TypeLatency>,
}

/// The ring of history points and what the next point is measured against.
#[derive(Default)]
pub struct History {
    inner: Mutex<HistoryInner>,
}

#[derive(Default)]
struct HistoryInner {
    points: VecDeque<HistoryPoint>,
    prev: Option<(f64, Totals)>,
}

/// Running totals over every shard, by device type.
#[derive(Clone, Default)]
struct Totals {
    counts: Counters,
    lateness: Buckets,
    by_type: BTreeMap<String, (u64, Buckets)>,
}

fn totals(shards: &[Arc<ShardFigures>]) -> Totals {
    let mut t = Totals::default();
    for f in shards {
        t.lateness.add(&f.lateness);
        for p in &f.profiles {
            t.counts += p.counts;
            let e = t.by_type.entry(p.device_type.to_string()).or_default();
            e.0 += p.counts.messages;
            e.1.add(&p.latency);
        }
    }
    t
}

/// `new - old`, bucket by bucket (counts only grow; a shard that restarted counts as 0).
fn minus(new: &Buckets, old: &Buckets) -> Buckets {
    let mut d = new.clone();
    for (a, b) in d.counts.iter_mut().zip(&old.counts) {
        *a = a.saturating_sub(*b);
    }
    d
}

/// The upper bound of the bucket holding quantile `q` (µs; the last finite bound for +Inf).
pub fn bucket_quantile(b: &Buckets, q: f64) -> u64 {
    let n = b.count();
    if n == 0 {
        return 0;
    }
    let want = ((n as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, c) in b.counts.iter().enumerate() {
        seen += c;
        if seen >= want {
            return BUCKETS_US.get(i).copied().unwrap_or(BUCKETS_US[BUCKETS_US.len() - 1]);
        }
    }
    BUCKETS_US[BUCKETS_US.len() - 1]
}

impl History {
    /// Adds the point for the second that ends at `t_s`.
    pub fn sample(&self, t_s: f64, shards: &[Arc<ShardFigures>], devices: u64) {
        let now = totals(shards);
        let faults_active =
            shards.iter().flat_map(|f| f.faults_active.iter().map(|(_, n)| n)).sum();
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t0, prev)) = &g.prev {
            let dt = (t_s - t0).max(1e-3);
            let rate = |a: u64, b: u64| ((a.saturating_sub(b)) as f64 / dt * 10.0).round() / 10.0;
            // The busiest types get their own line; the rest are summed as `other`.
            let mut types: Vec<(&String, u64, Buckets)> = now
                .by_type
                .iter()
                .map(|(k, (m, b))| {
                    let (pm, pb) = prev.by_type.get(k).cloned().unwrap_or_default();
                    (k, m.saturating_sub(pm), minus(b, &pb))
                })
                .collect();
            types.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let mut by_type = BTreeMap::new();
            let mut other: Option<(u64, Buckets)> = None;
            for (i, (k, m, b)) in types.into_iter().enumerate() {
                if i < MAX_CHARTED_TYPES {
                    by_type.insert(k.clone(), latency(m, &b, dt));
                } else {
                    let o = other.get_or_insert_with(Default::default);
                    o.0 += m;
                    o.1.add(&b);
                }
            }
            if let Some((m, b)) = other {
                by_type.insert("other".into(), latency(m, &b, dt));
            }
            let point = HistoryPoint {
                t_s: (t_s * 10.0).round() / 10.0,
                devices,
                msgs_per_s: rate(now.counts.messages, prev.counts.messages),
                errors_per_s: rate(now.counts.errors, prev.counts.errors),
                drops_per_s: rate(now.counts.dropped, prev.counts.dropped),
                lateness_p99_us: bucket_quantile(&minus(&now.lateness, &prev.lateness), 0.99),
                faults_active,
                by_type,
            };
            if g.points.len() >= limits::DASHBOARD_HISTORY_S {
                g.points.pop_front();
            }
            g.points.push_back(point);
        }
        g.prev = Some((t_s, now));
    }

    /// The points, oldest first.
    pub fn points(&self) -> Vec<HistoryPoint> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).points.iter().cloned().collect()
    }
}

fn latency(messages: u64, b: &Buckets, dt: f64) -> TypeLatency {
    TypeLatency {
        p50_us: bucket_quantile(b, 0.5),
        p99_us: bucket_quantile(b, 0.99),
        msgs_per_s: (messages as f64 / dt * 10.0).round() / 10.0,
    }
}

/// Fills the history once a second for as long as the admin server runs.
pub async fn sample_loop(state: Arc<AdminState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let devices = state.plane.figures().devices.iter().sum();
        state.history.sample(state.plane.uptime().as_secs_f64(), &state.plane.published(), devices);
    }
}

/// `GET /api/v1/history`.
pub async fn history(State(s): State<Arc<AdminState>>) -> Json<Value> {
    Json(json!({ "every_s": 1, "points": s.history.points() }))
}

/// `GET /api/v1/overview`: the fleet at a glance, from what the shards last published.
pub async fn overview(State(s): State<Arc<AdminState>>) -> Json<Value> {
    let shards = s.plane.published();
    let f = s.plane.figures();
    let mut by_type: BTreeMap<(String, &str), [u64; 4]> = BTreeMap::new();
    let mut sinks: BTreeMap<&str, [u64; 3]> = BTreeMap::new();
    let mut events: BTreeMap<String, u64> = BTreeMap::new();
    let (mut active, mut injected) = (BTreeMap::new(), BTreeMap::new());
    let mut paused = 0;
    let mut phase = None;
    for sh in &shards {
        for p in &sh.profiles {
            let e = by_type.entry((p.device_type.to_string(), p.protocol)).or_default();
            e[0] += p.devices;
            e[1] += p.counts.messages;
            e[2] += p.counts.errors;
            e[3] += p.counts.dropped;
        }
        for k in &sh.sinks {
            let e = sinks.entry(k.sink).or_default();
            e[0] += k.connected;
            e[1] += k.connections;
            e[2] += k.queue_depth;
        }
        for (k, v) in &sh.sink_events {
            *events.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &sh.faults_active {
            *active.entry(*k).or_insert(0u64) += v;
        }
        for (k, v) in &sh.faults_injected {
            *injected.entry(*k).or_insert(0u64) += v;
        }
        paused += sh.paused;
        if phase.is_none() {
            phase = sh.scenario_phase.clone();
        }
    }
    let devices: u64 = f.devices.iter().sum();
    Json(json!({
        "run": s.run,
        "uptime_s": (f.uptime_seconds * 10.0).round() / 10.0,
        "shards": shards.len(),
        "shards_running": shards.iter().filter(|f| f.running).count(),
        "devices": devices,
        "by_state": { "running": devices.saturating_sub(paused), "paused": paused },
        "by_type": by_type.iter().map(|((t, proto), v)| json!({
            "device_type": t, "protocol": proto, "devices": v[0], "messages": v[1],
            "errors": v[2], "dropped": v[3],
        })).collect::<Vec<_>>(),
        "messages": f.messages.iter().sum::<u64>(),
        "errors": f.errors.iter().sum::<u64>(),
        "msgs_per_s": (f.messages_per_second * 10.0).round() / 10.0,
        "faults_active": active,
        "faults_injected": injected,
        "sinks": sinks.iter().map(|(k, v)| json!({
            "sink": k, "connected": v[0], "connections": v[1], "queue_depth": v[2],
        })).collect::<Vec<_>>(),
        "sink_events": events,
        "scenario": phase.map(|(name, phase)| json!({ "name": name, "phase": phase })),
        "telemetry_points_dropped": f.telemetry_points_dropped,
    }))
}

/// The run's thresholds as the dashboard shows them: the list from the config and the
/// scenario (given at start) and, once the run has judged them, its final verdicts.
#[derive(Default)]
pub struct Thresholds {
    /// In the order the report lists its verdicts (the config's, then the scenario's).
    pub list: Vec<Threshold>,
    /// Realtime clock (a virtual run's `messages_per_second` divides by sim seconds, which
    /// the published figures do not carry: judged at the end only).
    pub realtime: bool,
    /// The report's verdicts, set by the run once it has judged them.
    pub verdicts: Mutex<Option<Vec<Verdict>>>,
}

impl Thresholds {
    pub fn new(list: Vec<Threshold>, realtime: bool) -> Thresholds {
        Thresholds { list, realtime, verdicts: Mutex::new(None) }
    }

    /// Records the run's final verdicts (the report's `thresholds`).
    pub fn finish(&self, verdicts: &[Verdict]) {
        *self.verdicts.lock().unwrap_or_else(|e| e.into_inner()) = Some(verdicts.to_vec());
    }

    /// `t` judged on the shards' published figures so far, when it can be: a whole-run,
    /// non-audit threshold (the one an `abort` is), by the judging code the run uses.
    pub fn so_far(
        &self,
        t: &Threshold,
        shards: &[Arc<ShardFigures>],
        seconds: f64,
    ) -> Result<Verdict, &'static str> {
        if t.phase.is_some() {
            return Err("judged on its phase at the end of the run");
        }
        if t.metric.is_audit() {
            return Err("judged on the delivery audit at the end of the run");
        }
        if t.metric == Metric::MessagesPerSecond && !self.realtime {
            return Err("judged per sim second at the end of the run");
        }
        let mut merged = ProfileStats::new();
        let mut latency = Buckets::default();
        let mut lateness = Buckets::default();
        for sh in shards {
            lateness.add(&sh.lateness);
            for p in &sh.profiles {
                let wanted = t.sink.is_none_or(|s| s.name() == p.protocol)
                    && t.device_type.as_deref().is_none_or(|d| d == &*p.device_type);
                if wanted {
                    merged.counts += p.counts;
                    latency.add(&p.latency);
                }
            }
        }
        merged.latency = latency.to_hdr().into();
        Ok(t.judge_totals(&merged, &lateness.to_hdr(), seconds))
    }
}

/// `GET /api/v1/thresholds`: every threshold of the run (metric, bound, scope, abort) with
/// its status: `final` (the run's verdict), `so_far` (judged on the figures published so far)
/// or `at_end` (with the reason it is only judged at the end).
pub async fn thresholds(State(s): State<Arc<AdminState>>) -> Json<Value> {
    let board = &s.thresholds;
    let finals = board.verdicts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let shards = s.plane.published();
    let seconds = s.plane.uptime().as_secs_f64();
    let rows: Vec<Value> = board
        .list
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut row = json!({
                "metric": t.name, "bound": t.bound, "limit": t.limit_text,
                "phase": t.phase, "sink": t.sink.map(|s| s.name()),
                "device_type": t.device_type, "abort": t.abort,
            });
            let (status, verdict, reason) = match finals.as_ref().and_then(|f| f.get(i)) {
                Some(v) => ("final", Some(v.clone()), None),
                None => match board.so_far(t, &shards, seconds) {
                    Ok(v) => ("so_far", Some(v), None),
                    Err(why) => ("at_end", None, Some(why)),
                },
            };
            row["status"] = json!(status);
            row["verdict"] = json!(verdict);
            row["reason"] = json!(reason);
            row
        })
        .collect();
    Json(json!({ "ended": finals.is_some(), "thresholds": rows }))
}

/// `GET /api/v1/profiles`: what the spawn form offers (device types with their protocols):
/// the config's profiles (a `serve` with profiles and no `[[fleet]]` offers them) and the types
/// running now (spawned ones included).
pub async fn profiles(State(s): State<Arc<AdminState>>) -> Json<Value> {
    let mut seen: std::collections::BTreeSet<(String, &str)> =
        s.configured.iter().cloned().collect();
    for sh in s.plane.published().iter() {
        for p in &sh.profiles {
            seen.insert((p.device_type.to_string(), p.protocol));
        }
    }
    let list: Vec<Value> =
        seen.into_iter().map(|(t, p)| json!({ "device_type": t, "protocol": p })).collect();
    Json(json!({ "profiles": list }))
}

/// Label values listed one by one by `/api/v1/overview/labels`; the rest are summed.
pub const MAX_LABEL_VALUES: usize = 50;

/// Query of `/api/v1/overview/labels`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsQuery {
    key: String,
    #[serde(default)]
    selector: Option<String>,
}

/// `GET /api/v1/overview/labels?key=site&selector=...`: the selected devices counted by the
/// value of one label (the [`MAX_LABEL_VALUES`] most common values, the rest summed).
pub async fn labels(
    State(s): State<Arc<AdminState>>,
    q: Result<Query<LabelsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let key = q.key.trim();
    if key.is_empty() {
        return Err(ApiError::BadRequest("key: name the label to count by, got nothing".into()));
    }
    limits::check_label(key, "").map_err(|e| ApiError::BadRequest(format!("key: {e}")))?;
    let selector = q.selector.filter(|s| !s.trim().is_empty()).map(|s| proto::DeviceSelector {
        selector: Some(proto::device_selector::Selector::LabelSelector(s)),
    });
    let sel = spec::selection(selector, true)?;
    let r = s.plane.scan(sel, crate::shard::command::Action::CountBy(key.into())).await?;
    let mut counts: Vec<(Option<String>, u32)> = r.by_label.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let rest: u64 = counts.iter().skip(MAX_LABEL_VALUES).map(|c| c.1 as u64).sum();
    let values: Vec<Value> = counts
        .iter()
        .take(MAX_LABEL_VALUES)
        .map(|(v, n)| json!({ "value": v, "devices": n }))
        .collect();
    Ok(Json(json!({
        "key": key, "devices": r.affected, "values": values,
        "other_values": counts.len().saturating_sub(MAX_LABEL_VALUES), "other_devices": rest,
    })))
}

/// Query of the telemetry stream: a label selector or one device id (not both).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    #[serde(default)]
    selector: Option<String>,
    #[serde(default)]
    device_id: Option<String>,
}

/// `GET /api/v1/telemetry/stream?selector=...` (or `?device_id=...`): Server-Sent Events,
/// one `points` event per flush (a JSON array of at most [`SSE_POINTS_PER_FLUSH`] points) and
/// the running count of dropped points in each.
///
/// The admin server bounds every request, a stream included, by its deadline
/// (`IOT_SIM_ADMIN_REQUEST_TIMEOUT`): the stream ends itself cleanly a little before it, with
/// a `retry` hint, and the browser's EventSource reconnects.
pub async fn telemetry_stream(
    State(s): State<Arc<AdminState>>,
    deadline: Option<axum::Extension<super::server::Deadline>>,
    q: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    use proto::device_selector::Selector;
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let selector = match (q.selector.filter(|s| !s.trim().is_empty()), q.device_id) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest("give selector or device_id, not both".into()));
        }
        (Some(l), None) => Some(Selector::LabelSelector(l)),
        (None, Some(id)) => Some(Selector::DeviceIds(proto::DeviceIdList { ids: vec![id] })),
        (None, None) => None,
    };
    let sel = spec::selection(Some(proto::DeviceSelector { selector }), true)?;
    let mut feed = s.plane.subscribe(Arc::new(sel)).await?;
    let (tx, rx) = mpsc::channel::<Event>(4);
    let plane = s.plane.clone();
    let now = tokio::time::Instant::now();
    let end = match deadline {
        // A tenth of the time left (at most a second) to finish the answer in.
        Some(axum::Extension(super::server::Deadline(at))) => {
            let left = at.saturating_duration_since(now);
            now + left - (left / 10).min(Duration::from_secs(1))
        }
        None => now + Duration::from_secs(3600),
    };
    let _ = tx.try_send(Event::default().retry(SSE_RETRY).comment("iot-sim telemetry"));
    tokio::spawn(async move {
        let mut pending: Vec<Value> = Vec::with_capacity(SSE_POINTS_PER_FLUSH);
        let mut flush = tokio::time::interval(SSE_FLUSH);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut skipped = 0u64;
        loop {
            tokio::select! {
                biased;
                () = tx.closed() => break,
                () = tokio::time::sleep_until(end) => break,
                got = feed.rx.recv() => {
                    let Some(batch) = got else { break };
                    // The batch's budget charge is given back as soon as it is dropped here.
                    for p in batch.points {
                        if pending.len() < SSE_POINTS_PER_FLUSH {
                            pending.push(point_json(p));
                        } else {
                            skipped += 1;
                        }
                    }
                    // This flush is full: the shards skip (and count) the stream's points
                    // without building them until the next one.
                    if pending.len() >= SSE_POINTS_PER_FLUSH {
                        feed.congested.store(true, Ordering::Relaxed);
                    }
                }
                _ = flush.tick() => {
                    let dropped = feed.dropped.load(Ordering::Relaxed) + skipped;
                    let body = json!({ "points": std::mem::take(&mut pending), "dropped": dropped });
                    let ev = Event::default().event("points").data(body.to_string());
                    match tx.try_send(ev) {
                        Ok(()) => feed.congested.store(false, Ordering::Relaxed),
                        // The browser is not reading: drop, and let the shards skip us.
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            feed.congested.store(true, Ordering::Relaxed)
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    }
                }
            }
        }
        let id = feed.id;
        drop(feed);
        plane.unsubscribe(id).await;
    });
    let stream =
        tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |e| {
            Ok::<_, std::convert::Infallible>(e)
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

fn point_json(p: crate::shard::event::Point) -> Value {
    use crate::shard::event::PointValue;
    let value = match p.value {
        Some(PointValue::Number(x)) => json!(x),
        Some(PointValue::Text(s)) => json!(s),
        Some(PointValue::Bool(b)) => json!(b),
        None => Value::Null,
    };
    json!({
        "device_id": &*p.device_id,
        "metric": &*p.metric,
        "value": value,
        "at": crate::sim::time::rfc3339_ms(p.at_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::board::ProfileFigures;

    fn shard(messages: u64, latency_us: &[u64]) -> Arc<ShardFigures> {
        let mut h = crate::measure::stats::histogram();
        for v in latency_us {
            h.record(*v).unwrap();
        }
        Arc::new(ShardFigures {
            profiles: vec![ProfileFigures {
                device_type: "meter".into(),
                protocol: "null",
                devices: 10,
                counts: Counters::new(messages, 0, 0),
                latency: Buckets::from_hdr(&h),
                ..Default::default()
            }],
            running: true,
            ..Default::default()
        })
    }

    #[test]
    fn history_points_are_per_second_differences() {
        let h = History::default();
        h.sample(1.0, &[shard(100, &[5])], 10);
        assert!(h.points().is_empty(), "the first sample is only a baseline");
        h.sample(3.0, &[shard(300, &[5, 900, 900, 900])], 10);
        let p = &h.points()[0];
        assert_eq!(p.msgs_per_s, 100.0);
        // Only the three new values count: all in the 1 ms bucket.
        assert_eq!(p.by_type["meter"].p99_us, 1_000);
        assert_eq!(p.by_type["meter"].p50_us, 1_000);
    }

    #[test]
    fn the_history_ring_is_bounded() {
        let h = History::default();
        for i in 0..(limits::DASHBOARD_HISTORY_S + 50) {
            h.sample(i as f64, &[shard(i as u64, &[])], 1);
        }
        assert_eq!(h.points().len(), limits::DASHBOARD_HISTORY_S);
    }

    #[test]
    fn whole_run_thresholds_are_judged_so_far_and_final_verdicts_win() {
        let parse = |text: &str| {
            let doc: toml::Table = text.parse().unwrap();
            let mut p = crate::walk::Problems::default();
            let t = crate::threshold::parse_list(&doc["threshold"], "threshold", None, &mut p);
            assert!(p.is_empty(), "{p}");
            t
        };
        let list = parse(
            "[[threshold]]\nmetric = \"latency_p99\"\nmax = \"500us\"\n[[threshold]]\nmetric = \"error_rate\"\nmax = 0\nphase = \"x\"\n[[threshold]]\nmetric = \"messages_per_second\"\nmin = 1\n[[threshold]]\nmetric = \"lost\"\nmax = 0\n",
        );
        let board = Thresholds::new(list.clone(), false);
        // Three of four values in the 1 ms bucket: p99 is 1 ms, over 500 µs.
        let shards = [shard(4, &[5, 900, 900, 900])];
        let v = board.so_far(&list[0], &shards, 2.0).unwrap();
        assert_eq!((v.value, v.passed), (1_000.0, false), "{v:?}");
        assert!(board.so_far(&list[1], &shards, 2.0).unwrap_err().contains("phase"));
        assert!(board.so_far(&list[2], &shards, 2.0).unwrap_err().contains("sim second"));
        assert!(board.so_far(&list[3], &shards, 2.0).unwrap_err().contains("audit"));
        // Realtime: messages per wall second so far.
        let rt = Thresholds::new(list.clone(), true);
        assert_eq!(rt.so_far(&list[2], &shards, 2.0).unwrap().value, 2.0);
        assert!(board.verdicts.lock().unwrap().is_none());
        let v = board.so_far(&list[0], &shards, 2.0).unwrap();
        board.finish(std::slice::from_ref(&v));
        assert_eq!(board.verdicts.lock().unwrap().as_deref(), Some(&[v][..]));
    }

    #[test]
    fn bucket_quantiles_are_upper_bounds() {
        let mut b = Buckets::default();
        b.counts[0] = 98;
        b.counts[5] = 2;
        assert_eq!(bucket_quantile(&b, 0.5), 10);
        assert_eq!(bucket_quantile(&b, 0.99), 500);
        assert_eq!(bucket_quantile(&Buckets::default(), 0.99), 0);
    }
}
