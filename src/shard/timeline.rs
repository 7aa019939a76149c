//! The timeline a shard runs: a scenario compiled into [`TimedCue`]s at sim-time offsets
//! (built by `crate::scenario`, which the shard never sees), and the shard's cursor over it.
//!
//! Before the shard ticks the devices due at sim time `t` it applies every cue with `at <= t`
//! to its own devices, through the same spawn and selection code as the control plane's
//! commands (`inbox.rs`): a cue's selection and action are the command's own
//! [`Selection`] and [`Action`]. Spawned ids come from the timeline; each shard spawns the ones
//! it owns (`seed::shard_of`), so the fleet is the same for any number of shards.

use super::Shard;
use super::command::{Action, Selection, SpawnSpec};
use super::event::EventKind;
use super::inbox::ScenarioCommand;
use crate::measure::stats;
use crate::sim::profile::Profile;
use crate::sim::seed;
use crate::sim::time::SimMs;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a step does to the devices it selects: the shard's [`Action`], and what only a remote
/// run sends beside it.
#[derive(Clone, Debug)]
pub(crate) struct Op {
    pub action: Action,
    /// A fault step's `params.reason`.
    pub reason: Option<String>,
    /// An update step's `fields`, `report`, `events`, `availability` and `sleep` as written (a
    /// remote run sends them as UpdateDeviceBehavior's params).
    pub params: Option<Arc<toml::Table>>,
}

impl Op {
    /// An action with nothing beside it.
    pub fn of(action: Action) -> Op {
        Op { action, reason: None, params: None }
    }
}

/// One thing that happens at one sim time.
#[derive(Clone, Debug)]
pub(crate) enum Cue {
    /// Spawns these ids (each shard spawns the ones it owns).
    Spawn { profile: Arc<Profile>, labels: BTreeMap<String, String>, ids: Vec<String> },
    /// Applies `op` to the devices `selection` picks (of ids, each shard takes those it owns).
    Apply { selection: Selection, op: Op },
    /// A message for the report and the event stream.
    Log(String),
    /// A named phase starts (index into [`Script::phases`]).
    Phase(usize),
}

/// A cue and when it happens.
#[derive(Clone, Debug)]
pub(crate) struct TimedCue {
    /// Sim-time offset from the run start, ms.
    pub at_ms: u64,
    /// The step of the file it comes from (0-based).
    pub step: usize,
    pub cue: Cue,
}

/// The compiled scenario: cues sorted by time (ties in file order).
pub(crate) type Timeline = Vec<TimedCue>;

/// A named phase: from its step's time to the next phase's (or the end).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Phase {
    pub name: String,
    /// Sim-time offsets from the run start, ms.
    pub start_ms: u64,
    pub end_ms: u64,
}

/// What every shard of a scenario run gets: the scenario's name, its timeline and phases.
#[derive(Clone, Debug)]
pub(crate) struct Script {
    pub name: String,
    pub timeline: Arc<Timeline>,
    pub phases: Vec<Phase>,
    /// Per timeline entry, the order a spawn cue's ids are spawned in
    /// ([`Script::order_spawns`]); empty, or `None` for an entry: the file's order.
    pub spawn_order: Arc<Vec<Option<Vec<u32>>>>,
}

impl Script {
    /// Spawn cues' ids in the order their devices first fall due for this run's seed
    /// (`spawning::due_order`), so that a fleet a scenario spawns ticks as fast as one from a
    /// file. Only the order of spawning changes: the ids, their shards and values do not.
    pub fn order_spawns(&mut self, seed: u64) {
        let order = self
            .timeline
            .iter()
            .map(|c| match &c.cue {
                Cue::Spawn { profile, ids, .. } if ids.len() > 1 => {
                    Some(super::spawning::due_order(
                        seed,
                        ids.iter().map(|id| (id.as_str(), profile.interval_ms)),
                    ))
                }
                _ => None,
            })
            .collect();
        self.spawn_order = Arc::new(order);
    }
}

/// Where a shard is in its scenario.
pub(crate) struct ScenarioCursor {
    pub scenario: Arc<Script>,
    /// Index of the next action to apply.
    next: usize,
    /// Absolute sim time of each phase's start and end, for per-phase statistics.
    pub phase_bounds: Vec<(SimMs, SimMs)>,
    /// Realtime: how late each action was applied against its intended wall time, µs.
    pub lateness: Histogram<u64>,
    pub applied: usize,
}

impl ScenarioCursor {
    pub fn new(scenario: Arc<Script>, start_ms: SimMs) -> ScenarioCursor {
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
            self.apply_cue(&sc, ix, at);
        }
    }

    fn apply_cue(&mut self, sc: &Arc<Script>, ix: usize, at: SimMs) {
        let (step, cue) = (sc.timeline[ix].step, &sc.timeline[ix].cue);
        let (index, shards) = (self.plan.index, self.plan.shards);
        let mine = |id: &String| shards <= 1 || seed::shard_of(id, shards) == index;
        match cue {
            Cue::Spawn { ids, profile, labels } => {
                let mine = |id: &String| {
                    shards <= 1 || super::owner_shard(profile, id, labels, shards) == index
                };
                if !ids.iter().any(mine) {
                    return;
                }
                // The specs are made as the inbox takes them, under the tick budget, in the
                // order their devices first fall due (`Script::order_spawns`).
                let sc = sc.clone();
                let specs = (0..ids.len()).filter_map(move |n| {
                    let Cue::Spawn { profile, labels, ids } = &sc.timeline[ix].cue else {
                        return None;
                    };
                    let k = match sc.spawn_order.get(ix) {
                        Some(Some(order)) => *order.get(n)? as usize,
                        _ => n,
                    };
                    let id = &ids[k];
                    (shards <= 1 || super::owner_shard(profile, id, labels, shards) == index).then(
                        || SpawnSpec {
                            id: id.clone(),
                            profile: profile.clone(),
                            labels: labels.clone(),
                            source: None,
                        },
                    )
                });
                self.scenario_command(ScenarioCommand::Spawn(Box::new(specs)), at);
            }
            Cue::Apply { selection, op } => {
                let selection = match selection {
                    // A Sparkplug device lives on its edge node's shard (`owner_shard`), not
                    // its id's: each shard looks for every id (those it lacks are ignored).
                    Selection::Ids(ids)
                        if self
                            .plan
                            .fleet
                            .profiles
                            .iter()
                            .any(|p| p.format.sparkplug().is_some()) =>
                    {
                        Selection::Ids(ids.clone())
                    }
                    Selection::Ids(ids) => {
                        let own: Vec<String> = ids.iter().filter(|id| mine(id)).cloned().collect();
                        if own.is_empty() {
                            return;
                        }
                        Selection::Ids(own)
                    }
                    other => other.clone(),
                };
                self.scenario_command(ScenarioCommand::Scan(selection, op.action.clone()), at);
            }
            Cue::Log(message) => {
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
            Cue::Phase(_) => {}
        }
    }
}
