//! What a shard publishes about itself for observers: the counters GetRuntimeStatus reads
//! (refreshed every turn and before a command's reply), the per-profile figures `/metrics` and
//! the dashboard read (about once a second), the fallback-sink device counts, and the log line
//! on backpressure and retries.

use super::Shard;
use super::inbox::*;
use crate::sim::profile::Protocol;
use std::sync::atomic::Ordering;

impl Shard {
    /// Publishes this shard's figures for GetRuntimeStatus. Also called before a command's
    /// reply is sent, so that a status read right after the reply already reflects it.
    pub(super) fn publish_counters(&mut self) {
        if let Some(link) = &self.ctl.link {
            let c = &link.counters;
            c.devices.store(self.table.len() as u64, Ordering::Relaxed);
            let counts = self.stats.counts() + self.net_totals();
            c.messages.store(counts.messages, Ordering::Relaxed);
            c.errors.store(counts.errors, Ordering::Relaxed);
            c.suppressed.store(self.ctl.states.suppressed(), Ordering::Relaxed);
            c.faults_active.store(self.ctl.states.faults_active(), Ordering::Relaxed);
            c.lateness_us_max.fetch_max(self.ctl.lateness_max_us, Ordering::Relaxed);
            c.runtime_profiles.store(self.ctl.kept.len() as u64, Ordering::Relaxed);
            self.ctl.lateness_max_us = 0;
        }
    }

    /// Publishes this shard's per-profile figures for `/metrics` (about once a second, with
    /// the progress snapshot): counters and histogram buckets copied out of its own
    /// statistics, so the tick itself never touches anything shared.
    pub(super) fn publish_figures(&self) {
        use crate::measure::board::{Buckets, ProfileFigures, ShardFigures, SinkFigures};
        let Some(link) = &self.ctl.link else { return };
        let fleet = &*self.plan.fleet;
        let live = self.table.live_by_profile();
        let mut profiles = Vec::with_capacity(fleet.profiles.len());
        for (i, p) in fleet.profiles.iter().enumerate() {
            let local = &self.stats.profiles[i];
            let mut f = ProfileFigures {
                device_type: p.device_type.as_str().into(),
                protocol: p.protocol.name(),
                devices: live.get(i).copied().unwrap_or(0),
                counts: local.counts,
                slowdowns: local.slowdowns,
                error_kinds: local.error_kinds.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                latency: Buckets::from_hdr(&local.latency),
                ..Default::default()
            };
            if let Some(net) = self.sinks[p.protocol.index()].as_ref().and_then(|s| s.net_shared())
                && let Some(n) = net.stats.borrow().get(i)
            {
                f.counts += n.counts;
                f.slowdowns += n.slowdowns;
                for (k, v) in &n.error_kinds {
                    match f.error_kinds.iter_mut().find(|(kk, _)| kk == k) {
                        Some(e) => e.1 += v,
                        None => f.error_kinds.push((k.clone(), *v)),
                    }
                }
                f.latency.add(&Buckets::from_hdr(&n.latency));
                f.commands = n.commands;
                f.commands_answered = n.commands_answered;
                if n.commands > 0 {
                    f.command_rtt = Buckets::from_hdr(&n.command_rtt);
                }
            }
            profiles.push(f);
        }
        // Freed runtime profiles: what they counted stays in the (monotone) counters.
        for r in &self.stats.retired {
            let Some(protocol) = Protocol::parse(&r.sink) else { continue };
            let st = &r.total.stats;
            profiles.push(ProfileFigures {
                device_type: r.device_type.as_str().into(),
                protocol: protocol.name(),
                devices: 0,
                counts: st.counts,
                slowdowns: st.slowdowns,
                error_kinds: st.error_kinds.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                latency: Buckets::from_hdr(&st.latency),
                commands: st.commands,
                commands_answered: st.commands_answered,
                command_rtt: Buckets::from_hdr(&st.command_rtt),
            });
        }
        let mut sinks = vec![];
        let mut sink_events = vec![];
        for s in self.sinks.iter().flatten() {
            if let Some(n) = s.net_shared() {
                sinks.push(SinkFigures {
                    sink: s.name(),
                    // Per-device MQTT sessions count as connections of the sink too.
                    connected: n.conns.iter().filter(|c| c.connected.get()).count() as u64
                        + s.sessions_connected().0,
                    connections: n.conns.len() as u64 + s.sessions_connected().1,
                    queue_depth: n.conns.iter().map(|c| c.len() as u64).sum(),
                });
                for (k, v) in n.events.borrow().iter() {
                    sink_events.push((format!("{}.{k}", s.name()), *v));
                }
            }
        }
        let by_type = |a: [u64; 5]| FAULT_TYPES.iter().copied().zip(a).collect::<Vec<_>>();
        link.counters.figures.publish(ShardFigures {
            profiles,
            lateness: Buckets::from_hdr(&self.stats.lateness),
            sinks,
            sink_events,
            faults_active: by_type(self.ctl.states.active_by_type()),
            faults_injected: by_type(self.ctl.states.injected_by_type()),
            paused: self.ctl.states.paused_count(),
            running: true,
            scenario_phase: self.scn.as_ref().and_then(|c| {
                let i = c.phase_of(self.control_now())?;
                Some((c.scenario.name.clone(), c.scenario.phases[i].name.clone()))
            }),
        });
    }

    /// Logs backpressure and publish retries since the previous call, as one line each for
    /// this shard (called about once a second with the progress snapshot), never per message.
    pub(super) fn log_sink_pressure(&mut self) {
        let mut now = [self.stats.counts().dropped, 0, 0];
        now[1] = self.stats.all().map(|p| p.slowdowns).sum();
        for s in self.sinks.iter().flatten() {
            if let Some(n) = s.net_shared() {
                for p in n.stats.borrow().iter() {
                    now[0] += p.counts.dropped;
                    now[1] += p.slowdowns;
                }
                let events = n.events.borrow();
                now[2] += ["retry", "retransmit"].iter().filter_map(|k| events.get(k)).sum::<u64>();
            }
        }
        let [d, sl, r] = [0, 1, 2].map(|i| now[i].saturating_sub(self.ctl.logged[i]));
        if d > 0 || sl > 0 {
            tracing::info!(shard = self.plan.index, dropped = d, slowdowns = sl, "backpressure");
        }
        if r > 0 {
            tracing::info!(shard = self.plan.index, retries = r, "publish retries");
        }
        self.ctl.logged = now;
    }

    /// Publishes the per-protocol count of devices on a fallback sink (spawns and stops only).
    pub(super) fn publish_fallback(&self) {
        if let Some(link) = &self.ctl.link {
            let mut m = link.counters.fallback_devices.lock().unwrap_or_else(|e| e.into_inner());
            m.clone_from(&self.ctl.fallback_devices);
        }
    }
}
