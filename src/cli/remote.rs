//! `scenario run --runtime host:port,...`: drives runtimes that are already serving, over
//! `simulator.v1`, in realtime (wall time scaled by `speed`). Spawns go to the runtime that owns
//! each id by the same rendezvous hashing as `iot-sim spawn`; id selections go to their owners,
//! label and "all" selections to every runtime.
//!
//! The runtimes keep their own statistics, so a remote run judges only what `GetRuntimeStatus`
//! reports: `error_rate` and `messages_per_second` over the whole run.

use crate::config::Config;
use crate::control::client::{Pool, owner};
use crate::control::client::{pb_duration, table_to_pb};
use crate::control::proto;
use crate::report::{LogLine, Percentiles};
use crate::scenario::Scenario;
use crate::shard::command::{Action, Selection};
use crate::shard::timeline::Cue;
use crate::sim::fault::FaultKind;
use crate::sim::profile::Profile;
use crate::sim::time::rfc3339_ms;
use crate::threshold::{Bound, Metric, Threshold, Verdict};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What a remote run reports (`report.json` in the report folder).
#[derive(Debug, Serialize)]
pub struct RemoteReport {
    pub scenario: String,
    pub runtimes: Vec<String>,
    pub speed: f64,
    pub actions: usize,
    pub actions_applied: usize,
    pub devices_spawned: u64,
    pub spawn_failures: u64,
    /// How late each action was sent against its intended wall time, µs.
    pub step_lateness_us: Percentiles,
    pub log: Vec<LogLine>,
    /// Per runtime, at the end: messages, errors, suppressed, devices.
    pub runtime_status: Vec<BTreeMap<String, i64>>,
    pub wall_seconds: f64,
    pub thresholds: Vec<Verdict>,
}

/// Thresholds a remote run cannot judge, as (index, reason) problems for the CLI.
pub fn unsupported(thresholds: &[Threshold]) -> Vec<String> {
    thresholds
        .iter()
        .filter(|t| {
            !matches!(t.metric, Metric::ErrorRate | Metric::MessagesPerSecond)
                || t.phase.is_some()
                || t.sink.is_some()
                || t.device_type.is_some()
        })
        .map(|t| {
            format!(
                "threshold {} cannot be judged in a remote run (the runtimes keep their own statistics; only error_rate and messages_per_second over the whole run, from GetRuntimeStatus)",
                t.name
            )
        })
        .collect()
}

fn selector(target: &Selection) -> Option<proto::DeviceSelector> {
    use proto::device_selector::Selector;
    match target {
        Selection::All => None,
        Selection::Ids(ids) => Some(proto::DeviceSelector {
            selector: Some(Selector::DeviceIds(proto::DeviceIdList { ids: ids.clone() })),
        }),
        Selection::Labels(l) => {
            Some(proto::DeviceSelector { selector: Some(Selector::LabelSelector(l.to_string())) })
        }
    }
}

pub(crate) fn fault_params(
    spec: &crate::sim::fault::FaultSpec,
    reason: &Option<String>,
) -> prost_types::Struct {
    let mut t = toml::Table::new();
    match &spec.kind {
        FaultKind::Disconnect => {
            t.insert("mode".into(), spec.disconnect.name().into());
        }
        FaultKind::LatencySpike { latency_ms } => {
            t.insert("latency_ms".into(), (*latency_ms as i64).into());
        }
        FaultKind::DataCorruption { rate, mode } => {
            t.insert("corruption_rate".into(), (*rate).into());
            t.insert("mode".into(), format!("{mode:?}").to_ascii_lowercase().into());
        }
        FaultKind::BatteryDrain { multiplier } => {
            t.insert("drain_multiplier".into(), (*multiplier).into());
        }
        FaultKind::ClockDrift { rate_ms_per_s } => {
            t.insert("drift_rate_ms_per_sec".into(), (*rate_ms_per_s).into());
        }
    }
    if let Some(r) = reason {
        t.insert("reason".into(), r.clone().into());
    }
    table_to_pb(&t)
}

fn behaviour(fields: &toml::Table) -> prost_types::Struct {
    let mut params = toml::Table::new();
    params.insert("fields".into(), toml::Value::Table(fields.clone()));
    table_to_pb(&params)
}

/// The gRPC specs of `ids` of `profile` with `labels`.
fn specs(
    profile: &Profile,
    source: Option<&toml::Table>,
    labels: &BTreeMap<String, String>,
    ids: &[String],
) -> Result<Vec<proto::DeviceSpec>, String> {
    let Some(toml::Value::Table(fields)) = source.and_then(|s| s.get("fields")) else {
        return Err(format!(
            "profile {:?}: its fields are not known to the remote run",
            profile.name
        ));
    };
    let behaviour = behaviour(fields);
    Ok(ids
        .iter()
        .map(|id| proto::DeviceSpec {
            device_id: id.clone(),
            device_type: profile.device_type.clone(),
            labels: labels.clone().into_iter().collect(),
            telemetry_interval: Some(pb_duration(profile.interval_ms)),
            behavior_params: Some(behaviour.clone()),
            protocol: profile.protocol.name().to_string(),
            topic_template: profile.topic.source.clone(),
        })
        .collect())
}

/// Runs the scenario against `addrs`; the fleet file's own devices are spawned first.
pub fn run(
    sc: &Scenario,
    config: &Config,
    thresholds: &[Threshold],
    addrs: &[String],
    quiet: bool,
) -> Result<RemoteReport, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start tokio: {e}"))?;
    rt.block_on(run_async(sc, config, thresholds, addrs, quiet))
}

async fn status(pool: &Pool) -> Result<Vec<proto::RuntimeStatus>, String> {
    pool.all(|mut c| async move { c.get_runtime_status(()).await }).await
}

async fn run_async(
    sc: &Scenario,
    config: &Config,
    thresholds: &[Threshold],
    addrs: &[String],
    quiet: bool,
) -> Result<RemoteReport, String> {
    let pool = Pool::new(addrs)?;
    // Every runtime must answer before anything is sent: a runtime that is down is named.
    let before = status(&pool).await?;
    let speed = config.run.speed;
    let wall = |sim_ms: u64| Duration::from_secs_f64(sim_ms as f64 / 1000.0 / speed);
    let mut lateness = crate::measure::stats::histogram();
    let mut report = RemoteReport {
        scenario: sc.name.clone(),
        runtimes: addrs.to_vec(),
        speed,
        actions: sc.timeline.len(),
        actions_applied: 0,
        devices_spawned: 0,
        spawn_failures: 0,
        step_lateness_us: Percentiles::default(),
        log: vec![],
        runtime_status: vec![],
        wall_seconds: 0.0,
        thresholds: vec![],
    };
    let origin = Instant::now();
    // The fleet file's devices first.
    let fleet = &config.fleet;
    let mut id = String::new();
    for g in &fleet.groups {
        let prof = &fleet.profiles[g.profile];
        let ids: Vec<String> = (0..g.count)
            .map(|i| {
                g.device_id(prof, i, &mut id);
                id.clone()
            })
            .collect();
        let specs = specs(prof, sc.profile_sources.get(&prof.name).map(|a| &**a), &g.labels, &ids)?;
        let r = pool.spawn(specs).await?;
        report.devices_spawned += r.spawned as u64;
        report.spawn_failures += r.failed_device_ids.len() as u64;
    }
    for ta in sc.timeline.iter() {
        let due = origin + wall(ta.at_ms);
        tokio::time::sleep_until(due.into()).await;
        let late = Instant::now().saturating_duration_since(due);
        crate::measure::stats::record(&mut lateness, late.as_micros() as u64);
        apply(&pool, sc, &ta.cue, &mut report).await.map_err(|e| {
            format!("step[{}] at {}: {e}", ta.step, crate::sim::time::format_duration_ms(ta.at_ms))
        })?;
        if let Cue::Log(m) = &ta.cue {
            if !quiet {
                eprintln!("scenario log: {m}");
            }
            report.log.push(LogLine {
                sim_time: format!("+{}", crate::sim::time::format_duration_ms(ta.at_ms)),
                step: ta.step,
                message: m.clone(),
            });
        }
        report.actions_applied += 1;
    }
    tokio::time::sleep_until((origin + wall(sc.duration_ms)).into()).await;
    let after = status(&pool).await?;
    report.wall_seconds = (origin.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    report.step_lateness_us = Percentiles::of(&lateness);
    let sum = |v: &[proto::RuntimeStatus], f: fn(&proto::RuntimeStatus) -> i64| -> i64 {
        v.iter().map(f).sum()
    };
    let messages = (sum(&after, |r| r.messages_sent_total)
        - sum(&before, |r| r.messages_sent_total))
    .max(0) as f64;
    let errors = (sum(&after, |r| r.errors_total) - sum(&before, |r| r.errors_total)).max(0) as f64;
    for r in &after {
        report.runtime_status.push(BTreeMap::from([
            ("active_devices".to_string(), r.active_devices as i64),
            ("messages_sent_total".to_string(), r.messages_sent_total),
            ("errors_total".to_string(), r.errors_total),
            ("messages_suppressed_total".to_string(), r.messages_suppressed_total),
            ("faults_active".to_string(), r.faults_active),
        ]));
    }
    for t in thresholds {
        let (value, unit) = match t.metric {
            Metric::ErrorRate => {
                (if messages + errors > 0.0 { errors / (messages + errors) } else { 0.0 }, "ratio")
            }
            _ => (messages / report.wall_seconds.max(1e-9), "msg/s"),
        };
        let value = (value * 1e6).round() / 1e6;
        report.thresholds.push(Verdict {
            metric: t.name.clone(),
            bound: t.bound,
            limit: t.limit_text.clone(),
            phase: None,
            sink: None,
            device_type: None,
            value,
            unit,
            passed: match t.bound {
                Bound::Max => value <= t.limit,
                Bound::Min => value >= t.limit,
            },
            abort: t.abort,
            note: Some("from GetRuntimeStatus of every runtime".into()),
        });
    }
    Ok(report)
}

async fn apply(
    pool: &Pool,
    sc: &Scenario,
    cue: &Cue,
    report: &mut RemoteReport,
) -> Result<(), String> {
    let (target, op) = match cue {
        Cue::Spawn { profile, labels, ids } => {
            let source = sc.profile_sources.get(&profile.name).map(|a| &**a);
            let r = pool.spawn(specs(profile, source, labels, ids)?).await?;
            report.devices_spawned += r.spawned as u64;
            report.spawn_failures += r.failed_device_ids.len() as u64;
            return Ok(());
        }
        Cue::Log(_) | Cue::Phase(_) => return Ok(()),
        Cue::Apply { selection, op } => (selection, op),
    };
    if let Action::Behaviour(u) = &op.action
        && (u.interval_ms.is_some() || !u.labels.is_empty())
    {
        return Err("an update of interval or labels is not in simulator.v1 (UpdateDeviceBehavior changes fields and behaviour only); a remote run can update fields, report, events, availability and sleep".into());
    }
    // Id selections go to the runtimes that own the ids; the others to every runtime.
    let parts: Vec<(usize, Selection)> = match target {
        Selection::Ids(ids) => {
            let mut per: Vec<Vec<String>> = vec![vec![]; pool.addrs.len()];
            for id in ids {
                per[owner(&pool.addrs, id)].push(id.clone());
            }
            per.into_iter()
                .enumerate()
                .filter(|(_, v)| !v.is_empty())
                .map(|(i, v)| (i, Selection::Ids(v)))
                .collect()
        }
        other => (0..pool.addrs.len()).map(|i| (i, other.clone())).collect(),
    };
    for (i, target) in parts {
        let sel = selector(&target);
        match &op.action {
            Action::Stop => {
                let req = proto::StopDevicesRequest { selector: sel, graceful: true };
                pool.call(i, |mut c| {
                    let req = req.clone();
                    async move { c.stop_devices(req).await }
                })
                .await
                .map(drop)?
            }
            Action::Pause(pause) => {
                let resume = !*pause;
                pool.call(i, |mut c| {
                    let sel = sel.clone();
                    async move {
                        if resume {
                            c.resume_devices(proto::ResumeDevicesRequest { selector: sel }).await
                        } else {
                            c.pause_devices(proto::PauseDevicesRequest { selector: sel }).await
                        }
                    }
                })
                .await
                .map(drop)?
            }
            Action::Fault(spec) => {
                let req = proto::InjectFaultRequest {
                    selector: sel,
                    fault_type: spec.kind.type_number(),
                    duration: Some(pb_duration(spec.duration_ms)),
                    parameters: Some(fault_params(spec, &op.reason)),
                };
                pool.call(i, |mut c| {
                    let req = req.clone();
                    async move { c.inject_fault(req).await }
                })
                .await
                .map(drop)?
            }
            Action::ClearFaults(kind) => {
                let req =
                    proto::ClearFaultsRequest { selector: sel, fault_type: kind.unwrap_or(0) };
                pool.call(i, |mut c| {
                    let req = req.clone();
                    async move { c.clear_faults(req).await }
                })
                .await
                .map(drop)?
            }
            Action::Behaviour(_) => {
                let Some(params) = &op.params else { continue };
                let req = proto::UpdateDeviceBehaviorRequest {
                    selector: sel,
                    behavior_params: Some(table_to_pb(params)),
                };
                pool.call(i, |mut c| {
                    let req = req.clone();
                    async move { c.update_device_behavior(req).await }
                })
                .await
                .map(drop)?
            }
            // A scenario's steps never query devices.
            Action::Status { .. } | Action::List { .. } | Action::CountBy(_) => {}
        }
    }
    Ok(())
}

/// The terminal summary of a remote run.
pub fn render(r: &RemoteReport) -> String {
    let mut out = format!(
        "\nscenario {} on {} runtime(s) at {}x: {} of {} actions applied in {:.1}s; {} devices spawned ({} failed)\n",
        r.scenario,
        r.runtimes.len(),
        r.speed,
        r.actions_applied,
        r.actions,
        r.wall_seconds,
        r.devices_spawned,
        r.spawn_failures
    );
    let l = &r.step_lateness_us;
    out.push_str(&format!(
        "step lateness µs: p50={} p99={} max={} (n={})\n",
        l.p50, l.p99, l.max, l.count
    ));
    for (addr, s) in r.runtimes.iter().zip(&r.runtime_status) {
        let kv: Vec<String> = s.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!("runtime {addr}: {}\n", kv.join(" ")));
    }
    for line in &r.log {
        out.push_str(&format!("  log {} step[{}]: {}\n", line.sim_time, line.step, line.message));
    }
    out.push_str(&crate::threshold::render(&r.thresholds));
    let _ = rfc3339_ms;
    out
}
