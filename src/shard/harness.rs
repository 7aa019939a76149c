//! A shard under test, without processes or threads: one shard built from a fleet file, run in
//! virtual time on the test's own thread (a tokio current-thread runtime and a `LocalSet`, as
//! the shard thread has), with its command inbox, event stream and published counters in the
//! test's hands.
//!
//! `run_until` advances sim time with the shard's own virtual loop; `spawn` and `scan` put a
//! command into the inbox and drain it the way a wheel turn does, until the reply comes. So a
//! test says what happened at which sim time and reads the shard's figures, with no sleep.

use super::command::{
    Action, Reply, ScanReply, Selection, ShardCommand, ShardControl, ShardCounters, SpawnReply,
    SpawnSpec,
};
use super::event::Event;
use super::{Shard, ShardPlan};
use crate::config::ClockMode;
use crate::measure::stats::{ShardStats, Snapshot};
use crate::sim::selector::LabelSelector;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::sync::{broadcast, oneshot};

/// Longest a command may take to be answered, in drain rounds (each a wheel turn's budget).
const MAX_DRAIN_ROUNDS: usize = 1_000_000;

pub(crate) struct TestShard {
    shard: Shard,
    inbox: crossbeam_channel::Sender<ShardCommand>,
    /// Device events the shard emits (spawned, stopped, faults, ...).
    pub events: broadcast::Receiver<Event>,
    /// What the shard publishes for GetRuntimeStatus and `/metrics`.
    pub counters: Arc<ShardCounters>,
    /// Progress snapshots (kept open so that the shard's sends succeed).
    _progress: crossbeam_channel::Receiver<Snapshot>,
    rt: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
}

impl TestShard {
    /// One shard (of one) with the devices of `fleet_toml` (a fleet file's text; its sinks
    /// should be `null`, `file` or `console`), on the virtual clock, at the file's
    /// `start_time` (or the epoch) and seed (or 1).
    pub fn new(fleet_toml: &str) -> TestShard {
        let config = crate::config::parse_str(fleet_toml, Path::new("."))
            .unwrap_or_else(|e| panic!("the test's fleet file: {e:?}"));
        let (inbox, rx) = crossbeam_channel::bounded(64);
        let (events_tx, events) = broadcast::channel(1 << 16);
        let counters = Arc::new(ShardCounters::default());
        let (progress_tx, progress) = crossbeam_channel::bounded(1 << 16);
        let start_ms = config.run.start_ms.unwrap_or(0);
        let mut plan = ShardPlan {
            index: 0,
            shards: 1,
            fleet: Arc::new(config.fleet),
            sinks: Arc::new(config.sinks),
            seed: config.run.seed.unwrap_or(1),
            clock: ClockMode::Virtual,
            speed: 1.0,
            start_ms,
            end_ms: Some(start_ms),
            wall_origin_ns: 0,
            stop: Arc::new(AtomicBool::new(false)),
            progress: progress_tx,
            core: None,
            control: Some(ShardControl {
                inbox: rx,
                events: events_tx,
                counters: counters.clone(),
            }),
            scenario: None,
            excuses: None,
            sample_every_ms: 0,
            timer_slack_ns: 0,
        };
        let parts = Shard::build_with(&mut plan).unwrap_or_else(|e| panic!("{e}"));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        let mut shard = Shard::assemble(plan, parts);
        local.block_on(&rt, async {
            for s in shard.sinks.iter_mut().flatten() {
                s.start().unwrap_or_else(|e| panic!("sink {}: {e}", s.name()));
            }
        });
        TestShard { shard, inbox, events, counters, _progress: progress, rt, local }
    }

    /// Runs the shard's virtual loop until sim time `start + offset_ms`: every device due
    /// before it ticks, in order (a device due exactly then ticks on the next call).
    pub fn run_until(&mut self, offset_ms: u64) {
        let TestShard { shard, rt, local, .. } = self;
        shard.plan.end_ms = Some(shard.plan.start_ms + offset_ms);
        local.block_on(rt, shard.run_virtual());
    }

    /// Sends a command and drains the inbox as the wheel turns do until its reply comes.
    fn command<T>(&mut self, make: impl FnOnce(Reply<T>) -> ShardCommand) -> T {
        let (tx, mut rx) = oneshot::channel();
        self.inbox.send(make(tx)).expect("the shard holds its inbox");
        let TestShard { shard, rt, local, .. } = self;
        local.block_on(rt, async {
            for _ in 0..MAX_DRAIN_ROUNDS {
                shard.drain_commands();
                if let Ok(reply) = rx.try_recv() {
                    return reply;
                }
            }
            panic!("no reply after {MAX_DRAIN_ROUNDS} drain rounds");
        })
    }

    /// Spawns devices now (at the wheel's current sim time).
    pub fn spawn(&mut self, specs: Vec<SpawnSpec>) -> SpawnReply {
        self.command(|reply| ShardCommand::Spawn { specs, reply })
    }

    /// Applies `action` to the devices `selection` picks.
    pub fn scan(&mut self, selection: Selection, action: Action) -> ScanReply {
        self.command(|reply| ShardCommand::Scan { selection: Arc::new(selection), action, reply })
    }

    /// A spawn spec for a device of the fleet's profile `name`.
    pub fn spec(&self, id: &str, name: &str, labels: &[(&str, &str)]) -> SpawnSpec {
        let fleet = &self.shard.plan.fleet;
        let profile = fleet
            .profiles
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no profile {name}"));
        SpawnSpec {
            id: id.to_string(),
            profile: Arc::new(profile.clone()),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            source: None,
        }
    }

    /// The shard's statistics so far.
    pub fn stats(&self) -> &ShardStats {
        &self.shard.stats
    }

    /// The shard's statistics as they leave it (the virtual clock's service times settled).
    pub fn settled_stats(&mut self) -> &ShardStats {
        self.shard.settle_service(None);
        &self.shard.stats
    }

    /// Devices the shard holds now.
    pub fn devices(&self) -> usize {
        self.shard.table.len()
    }

    /// Each key's next deadline in the wheel, in key order (`None`: a free key).
    pub fn deadlines_by_key(&self) -> Vec<Option<u64>> {
        (0..self.shard.table.key_capacity() as u32).map(|k| self.shard.wheel.deadline(k)).collect()
    }

    /// Keys the shard's device table spans (live and free).
    pub fn key_capacity(&self) -> usize {
        self.shard.table.key_capacity()
    }

    /// Messages completed by the sinks so far (every profile).
    pub fn messages(&self) -> u64 {
        self.shard.stats.counts().messages
    }

    /// Messages a fault or pause kept from being published so far.
    pub fn suppressed(&self) -> u64 {
        self.shard.ctl.states.suppressed()
    }

    /// Publishes the shard's figures (as it does about once a second) and reads them back as
    /// `/metrics` would: messages by device type.
    pub fn figures_by_type(&self) -> BTreeMap<String, u64> {
        self.shard.publish_figures();
        let figures = self.counters.figures.read();
        let mut by_type = BTreeMap::new();
        for p in &figures.profiles {
            *by_type.entry(p.device_type.to_string()).or_default() += p.counts.messages;
        }
        by_type
    }

    /// The events emitted so far, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        let mut out = vec![];
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }
}

/// A label selection.
pub(crate) fn labels(s: &str) -> Selection {
    Selection::Labels(LabelSelector::parse(s).unwrap_or_else(|e| panic!("{e}")))
}
