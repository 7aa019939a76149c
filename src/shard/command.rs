//! The commands a shard takes from the control plane, and what it answers.
//!
//! The control plane sends a closed [`ShardCommand`] over each shard's bounded crossbeam inbox
//! ([`ShardControl::inbox`]); the shard drains it once per wheel turn and works through what it
//! took under a time budget (`inbox.rs`). Replies go back over oneshot channels; events and
//! telemetry points go out over channels whose sends never block (a full channel drops and
//! counts).

use super::event::Event;
use super::streams::{PointBatch, StreamBudget};
use crate::sim::fault::FaultSpec;
use crate::sim::profile::Profile;
use crate::sim::selector::LabelSelector;
use crossbeam_channel::Receiver;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Where a reply goes.
pub(crate) type Reply<T> = oneshot::Sender<T>;

/// Which devices a command applies to.
#[derive(Clone, Debug)]
pub(crate) enum Selection {
    /// Every device (the original's unset selector).
    All,
    /// These ids (each shard gets only the ids it owns).
    Ids(Vec<String>),
    /// Devices whose labels match.
    Labels(LabelSelector),
}

/// One device to spawn, validated by the control plane.
pub(crate) struct SpawnSpec {
    pub id: String,
    /// Shared by every spec of a request with the same behaviour.
    pub profile: Arc<Profile>,
    /// The spec's labels (a `device_type` label is not added: the runtime never did).
    pub labels: BTreeMap<String, String>,
    /// The profile table the spec was compiled from (gRPC and admin spawns), shared like
    /// `profile`: what the session journal records. `None` for a scenario's spawns.
    pub source: Option<Arc<toml::Table>>,
}

/// What a spawn did.
#[derive(Debug, Default)]
pub(crate) struct SpawnReply {
    pub spawned: u32,
    /// (device id, reason)
    pub failed: Vec<(String, String)>,
}

/// A device's state as status reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum DeviceState {
    Running,
    Paused,
}

/// One device, as a status listing shows it.
#[derive(Clone, Debug)]
pub(crate) struct DeviceInfo {
    pub id: String,
    pub device_type: String,
    pub labels: BTreeMap<String, String>,
    pub state: DeviceState,
    /// Its active faults.
    pub faults: Vec<crate::sim::fault::FaultKind>,
    /// Messages it produced so far.
    pub messages: u64,
}

/// What a selection command did.
#[derive(Debug, Default)]
pub(crate) struct ScanReply {
    /// Devices the command applied to.
    pub affected: u32,
    /// Ids of an id selection that this shard does not have.
    pub not_found: Vec<String>,
    /// Status only.
    pub by_state: BTreeMap<DeviceState, u32>,
    pub by_type: BTreeMap<String, u32>,
    /// CountBy only: devices by the value of the label (`None` = without it).
    pub by_label: BTreeMap<Option<String>, u32>,
    pub devices: Vec<DeviceInfo>,
    /// List only: matching devices whose id sorts after the page cursor.
    pub beyond: u32,
}

impl ScanReply {
    /// Adds another shard's reply.
    pub fn merge(&mut self, r: ScanReply) {
        self.affected += r.affected;
        self.not_found.extend(r.not_found);
        for (k, v) in r.by_state {
            *self.by_state.entry(k).or_default() += v;
        }
        for (k, v) in r.by_type {
            *self.by_type.entry(k).or_default() += v;
        }
        for (k, v) in r.by_label {
            *self.by_label.entry(k).or_default() += v;
        }
        self.devices.extend(r.devices);
        self.beyond += r.beyond;
    }
}

pub(crate) use crate::sim::profile::BehaviourUpdate;

/// What a selection command does to each selected device.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    Stop,
    Status {
        list: bool,
    },
    /// One page of the devices sorted by id: at most `limit` whose id sorts after `after`
    /// (each shard keeps only its `limit` smallest, so a page costs `limit` entries per shard,
    /// not the fleet).
    List {
        after: Option<Arc<str>>,
        limit: usize,
    },
    Fault(FaultSpec),
    /// Counts the selected devices by the value of one label (the dashboard's fleet view).
    CountBy(Arc<str>),
    /// Clears faults of one `FaultType` number, or every fault.
    ClearFaults(Option<i32>),
    /// true = pause, false = resume.
    Pause(bool),
    Behaviour(Arc<BehaviourUpdate>),
}

/// A telemetry stream's registration with a shard.
pub(crate) struct Subscription {
    pub id: u64,
    pub selection: Arc<Selection>,
    /// Batches of points; `try_send` only.
    pub tx: mpsc::Sender<PointBatch>,
    /// The budget every stream's points are charged to.
    pub budget: Arc<StreamBudget>,
    /// Set while the stream's client is not taking what it was sent: the shard then drops
    /// (and counts) the stream's points without building them.
    pub congested: Arc<AtomicBool>,
    /// Points dropped because `tx` was full.
    pub dropped: Arc<AtomicU64>,
}

/// A command from the control plane.
pub(crate) enum ShardCommand {
    Spawn { specs: Vec<SpawnSpec>, reply: Reply<SpawnReply> },
    Scan { selection: Arc<Selection>, action: Action, reply: Reply<ScanReply> },
    Subscribe(Subscription),
    Unsubscribe(u64),
}

/// Figures a shard publishes for status and metrics, refreshed every turn.
#[derive(Debug, Default)]
pub(crate) struct ShardCounters {
    pub devices: AtomicU64,
    pub messages: AtomicU64,
    pub errors: AtomicU64,
    pub suppressed: AtomicU64,
    pub faults_active: AtomicU64,
    /// Tick lateness in µs: the largest seen since the control plane last reset it to 0.
    pub lateness_us_max: AtomicU64,
    /// Devices published to the fallback sink, by the protocol they asked for. Written only
    /// when a spawn or stop changes it (never per message).
    pub fallback_devices: Mutex<BTreeMap<String, u64>>,
    /// Runtime profiles the shard holds (spawned or changed over gRPC or by a scenario).
    pub runtime_profiles: AtomicU64,
    /// Per-profile counters and histogram buckets for `/metrics`, refreshed about once a
    /// second.
    pub figures: crate::measure::board::Slot,
}

/// The control plane's link to one shard, handed to it in its plan.
pub(crate) struct ShardControl {
    /// Commands from the control plane (bounded).
    pub inbox: Receiver<ShardCommand>,
    /// Device events to every StreamEvents subscriber; sent only while someone listens.
    pub events: broadcast::Sender<Event>,
    pub counters: Arc<ShardCounters>,
}
