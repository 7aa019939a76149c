//! The shard's side of a scenario: a cursor over the shared, compiled timeline. Before the
//! shard ticks the devices due at sim time `t` it applies every action with `at <= t` to its
//! own devices, through the same spawn and selection code as the control plane's commands
//! (`inbox.rs`). Spawned ids come from the timeline; each shard spawns the ones it owns
//! (`seed::shard_of`), so the fleet is the same for any number of shards.

use super::Shard;
use super::command::{Action, Selection, SpawnSpec};
use super::event::EventKind;
use super::inbox::ScenarioCommand;
use crate::measure::stats;
use crate::scenario::{self, Scenario, Target};
use crate::sim::seed;
use crate::sim::time::SimMs;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where a shard is in its scenario.
pub(crate) struct ScenarioCursor {
    pub scenario: Arc<Scenario>,
    /// Index of the next action to apply.
    next: usize,
    /// Absolute sim time of each phase's start and end, for per-phase statistics.
    pub phase_bounds: Vec<(SimMs, SimMs)>,
    /// Realtime: how late each action was applied against its intended wall time, µs.
    pub lateness: Histogram<u64>,
    pub applied: usize,
}

impl ScenarioCursor {
    pub fn new(scenario: Arc<Scenario>, start_ms: SimMs) -> ScenarioCursor {
        let phase_bounds =
            scenario.phases.iter().map(|p| (start_ms + p.start_ms, start_ms + p.end_ms)).collect();
        ScenarioCursor { scenario, next: 0, phase_bounds, lateness: stats::histogram(), applied: 0 }
    }

    /// The phase a message intended at sim time `t` belongs to.
    #[inline]
    pub fn phase_of(&self, t: SimMs) -> Option<usize> {
        let i = self.phase_bounds.partition_point(|b| b.0 <= t);
        (i > 0 && t < self.phase_bounds[i - 1].1).then(|| i - 1)
    }
}

impl Shard {
    /// Sim time of the next scenario action, if any is left.
    pub(super) fn scenario_next_at(&self) -> Option<SimMs> {
        let c = self.scn.as_ref()?;
        c.scenario.timeline.get(c.next).map(|a| self.plan.start_ms + a.at_ms)
    }

    /// Applies every scenario action due at or before sim time `t`. `now_ns` (realtime) is the
    /// monotonic time, for the step lateness.
    pub(super) fn apply_scenario(&mut self, t: SimMs, now_ns: Option<u64>) {
        while let Some(at) = self.scenario_next_at().filter(|&at| at <= t) {
            let Some(c) = self.scn.as_mut() else { return };
            let sc = c.scenario.clone();
            let ix = c.next;
            c.next += 1;
            c.applied += 1;
            if let Some(ns) = now_ns {
                let late_us = ns.saturating_sub(self.wall_at(at)) / 1000;
                if let Some(c) = self.scn.as_mut() {
                    crate::measure::stats::record(&mut c.lateness, late_us);
                }
            }
            self.apply_action(&sc, ix, at);
        }
    }

    fn apply_action(&mut self, sc: &Arc<Scenario>, ix: usize, at: SimMs) {
        let (step, action) = (sc.timeline[ix].step, &sc.timeline[ix].action);
        let (index, shards) = (self.plan.index, self.plan.shards);
        let mine = |id: &String| shards <= 1 || seed::shard_of(id, shards) == index;
        match action {
            scenario::Action::Spawn { ids, .. } => {
                if !ids.iter().any(mine) {
                    return;
                }
                // The specs are made as the inbox takes them, under the tick budget.
                let sc = sc.clone();
                let specs = (0..ids.len()).filter_map(move |k| {
                    let scenario::Action::Spawn { profile, labels, ids } = &sc.timeline[ix].action
                    else {
                        return None;
                    };
                    let id = &ids[k];
                    (shards <= 1 || seed::shard_of(id, shards) == index).then(|| SpawnSpec {
                        id: id.clone(),
                        profile: profile.clone(),
                        labels: labels.clone(),
                    })
                });
                self.scenario_command(ScenarioCommand::Spawn(Box::new(specs)), at);
            }
            scenario::Action::Apply { target, op } => {
                let selection = match target {
                    Target::All => Selection::All,
                    Target::Labels(l) => Selection::Labels(l.clone()),
                    Target::Ids(ids) => {
                        let own: Vec<String> = ids.iter().filter(|id| mine(id)).cloned().collect();
                        if own.is_empty() {
                            return;
                        }
                        Selection::Ids(own)
                    }
                };
                let action = match op {
                    scenario::Op::Stop => Action::Stop,
                    scenario::Op::Fault { spec, .. } => Action::Fault(spec.clone()),
                    scenario::Op::Clear(kind) => Action::ClearFaults(*kind),
                    scenario::Op::Pause => Action::Pause(true),
                    scenario::Op::Resume => Action::Pause(false),
                    scenario::Op::Update(u) => Action::Behaviour(u.change.clone()),
                };
                self.scenario_command(ScenarioCommand::Scan(selection, action), at);
            }
            scenario::Action::Log(message) => {
                // One event per step, from shard 0.
                if index == 0 {
                    self.ctl.emit(
                        "",
                        &BTreeMap::new(),
                        EventKind::ScenarioLog,
                        message.clone(),
                        at,
                        vec![("scenario", sc.name.clone()), ("step", step.to_string())],
                    );
                }
            }
            scenario::Action::Phase(_) => {}
        }
    }
}
