//! Sinks: where a shard's messages go. Each shard owns its own sink instances.
//!
//! A sink takes one message at a time through [`Sink::submit`] and says what became of it:
//! completed now (console, file, null: the shard records it), or pending — the network sinks
//! (MQTT, AMQP, HTTP, CoAP) queue it per connection and their tasks on the shard's `LocalSet`
//! record its completion later, with latency from the message's intended time. See
//! [`net`] for the queue, the backpressure policy and the recorder they share.

mod amqp;
mod coap;
mod console;
mod file;
mod http;
pub mod mqtt;
pub mod net;
pub mod preflight;

pub use amqp::redact as redact_url;

pub use console::ConsoleSink;
pub use file::FileSink;

use crate::config::SinkSettings;
use crate::measure::stats::ProfileStats;
use crate::sim::profile::{Fleet, Protocol};
use net::{NetShared, Queued};
use std::io;
use std::rc::Rc;
use std::sync::Arc;

/// One message handed to a sink.
pub struct Message<'a> {
    pub topic: &'a [u8],
    pub payload: &'a [u8],
    /// Index of the device's profile.
    pub profile: usize,
    /// fnv1a64 of the device id: picks the connection.
    pub device_hash: u64,
    /// The device's id and labels (per-device MQTT sessions render their templates with them).
    pub device_id: &'a str,
    pub labels: &'a std::collections::BTreeMap<String, String>,
    /// Monotonic time the message was meant to be sent (realtime) or handed over (virtual).
    pub intended_ns: u64,
    /// The scenario phase of the message's intended sim time (`net::NO_PHASE`: none).
    pub phase: u16,
    /// The payload's kind and content type (its profile's format).
    pub wire: crate::sim::format::Wire,
    /// The profile's device type (MQTT 5 user property templates may name it).
    pub device_type: &'a str,
    /// The profile's `[mqtt5]` block, if it has one.
    pub mqtt5: Option<&'a crate::sim::profile::Mqtt5>,
}

/// What became of a submitted message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Delivered (for this sink's definition of delivered).
    Completed,
    /// Not delivered; counted as an error.
    Failed,
    /// Queued; the sink records the outcome itself.
    Pending,
}

type Starter = Box<dyn FnOnce(Rc<NetShared>) -> Result<(), String>>;

/// A network sink on one shard: its shared queues and stats, and how to start its tasks.
pub struct NetSink {
    pub protocol: Protocol,
    pub shared: Rc<NetShared>,
    starter: Option<Starter>,
    /// MQTT: the per-device sessions of profiles with `connection = "per_device"`.
    devices: Option<Rc<mqtt::devices::Devices>>,
    /// MQTT 5: the property blocks of `[mqtt5]` profiles (none on other sinks and 3.1.1).
    mqtt5: Option<mqtt::props::PropsCache>,
    /// MQTT: the pooled connections, not started while the fleet has only per-device
    /// profiles; started by the first pooled profile spawned at run time.
    pool_later: Option<PoolStarter>,
}

type PoolStarter = Box<dyn FnOnce(&Fleet, Rc<NetShared>) -> Result<(), String>>;

/// A shard's sink for one protocol.
pub enum Sink {
    Console(ConsoleSink),
    File(FileSink),
    Null,
    Net(NetSink),
}

impl Sink {
    /// Opens the sink for `protocol` on shard `shard` of `shards`. Network sinks start their
    /// connections later, in [`Sink::start`], on the shard's runtime.
    pub fn open(
        protocol: Protocol,
        settings: &SinkSettings,
        shard: usize,
        shards: usize,
        fleet: &Arc<Fleet>,
    ) -> io::Result<Sink> {
        let missing =
            |name: &str| io::Error::other(format!("the {name} sink has no [sink.{name}] settings"));
        Ok(match protocol {
            Protocol::Console => Sink::Console(ConsoleSink::new()),
            Protocol::Null => Sink::Null,
            Protocol::File => {
                let Some(f) = &settings.file else { return Err(missing("file")) };
                let path = file::shard_path(&f.path, shard, shards)?;
                Sink::File(FileSink::open(&path, fleet.profiles.len())?)
            }
            Protocol::Mqtt => {
                let s = settings.mqtt.clone().ok_or_else(|| missing("mqtt"))?;
                let version5 = s.version == 5;
                let shared =
                    NetShared::new("mqtt", shard, fleet, s.pool_size, s.queue_size, s.backoff);
                let devices = if fleet.profiles.iter().any(|p| p.delivery.per_device) {
                    Some(
                        mqtt::devices::Devices::new(&s, fleet, shards, shared.clone())
                            .map_err(io::Error::other)?,
                    )
                } else {
                    None
                };
                // The pool serves the MQTT profiles that are not per-device; none, no pool.
                let pooled = fleet
                    .profiles
                    .iter()
                    .any(|p| p.protocol == Protocol::Mqtt && !p.delivery.per_device);
                let fleet = fleet.clone();
                let mut pool_later: Option<PoolStarter> = None;
                let start: Starter = if pooled || devices.is_none() {
                    Box::new(move |sh| mqtt::start(&s, &fleet, sh))
                } else {
                    pool_later = Some(Box::new(move |fleet, sh| mqtt::start(&s, fleet, sh)));
                    Box::new(|_| Ok(()))
                };
                let mqtt5 = (version5).then(mqtt::props::PropsCache::default);
                let mut sink = Sink::net(protocol, shared, start);
                if let Sink::Net(n) = &mut sink {
                    n.devices = devices;
                    n.mqtt5 = mqtt5;
                    n.pool_later = pool_later;
                }
                sink
            }
            Protocol::Amqp => {
                let s = settings.amqp.clone().ok_or_else(|| missing("amqp"))?;
                let shared = NetShared::new("amqp", shard, fleet, 1, s.queue_size, s.backoff);
                Sink::net(protocol, shared, Box::new(move |sh| amqp::start(&s, sh)))
            }
            Protocol::Http => {
                let s = settings.http.clone().ok_or_else(|| missing("http"))?;
                let shared = NetShared::new("http", shard, fleet, 1, s.queue_size, s.backoff);
                let fleet = fleet.clone();
                Sink::net(protocol, shared, Box::new(move |sh| http::start(&s, &fleet, sh)))
            }
            Protocol::Coap => {
                let s = settings.coap.clone().ok_or_else(|| missing("coap"))?;
                let backoff = crate::config::Backoff {
                    initial_ms: s.ack_timeout_ms,
                    max_ms: s.ack_timeout_ms * 16,
                };
                let shared = NetShared::new("coap", shard, fleet, 1, s.queue_size, backoff);
                let fleet = fleet.clone();
                Sink::net(protocol, shared, Box::new(move |sh| coap::start(&s, &fleet, sh)))
            }
        })
    }

    fn net(protocol: Protocol, shared: Rc<NetShared>, starter: Starter) -> Sink {
        Sink::Net(NetSink {
            protocol,
            shared,
            starter: Some(starter),
            devices: None,
            mqtt5: None,
            pool_later: None,
        })
    }

    /// Starts a network sink's connection tasks (inside the shard's `LocalSet`).
    pub fn start(&mut self) -> Result<(), String> {
        if let Sink::Net(n) = self
            && let Some(start) = n.starter.take()
        {
            start(n.shared.clone())?;
        }
        Ok(())
    }

    /// Hands a message over. Never blocks.
    pub fn submit(&mut self, msg: &Message<'_>) -> Submitted {
        match self {
            Sink::Console(c) => c.submit(msg),
            Sink::File(f) => f.submit(msg),
            Sink::Null => Submitted::Completed,
            Sink::Net(n) => {
                let m = Queued {
                    topic: String::from_utf8_lossy(msg.topic).into_owned(),
                    payload: bytes::Bytes::copy_from_slice(msg.payload),
                    profile: msg.profile as u16,
                    intended_ns: msg.intended_ns,
                    sent_ns: 0,
                    device_hash: msg.device_hash,
                    phase: msg.phase,
                    wire: msg.wire,
                    mqtt5: match (&n.mqtt5, msg.mqtt5) {
                        (Some(cache), Some(m)) => cache.get(
                            m,
                            msg.wire.content_type,
                            &mqtt::props::Device {
                                profile: msg.profile as u16,
                                hash: msg.device_hash,
                                id: msg.device_id,
                                device_type: msg.device_type,
                                labels: msg.labels,
                            },
                        ),
                        _ => Default::default(),
                    },
                };
                match &n.devices {
                    Some(d) if d.handles(msg.profile) => d.submit(m, msg.device_id, msg.labels),
                    _ => n.shared.enqueue(m),
                }
                Submitted::Pending
            }
        }
    }

    /// The factor a device's interval is stretched by (backpressure = "slow_down").
    pub fn interval_factor(&self, profile: usize, device_hash: u64) -> u64 {
        match self {
            // Per-device: a map lookup, only for profiles that can be slowed down.
            Sink::Net(NetSink { devices: Some(d), shared, .. })
                if d.handles(profile)
                    && shared.policy(profile) == crate::sim::profile::Backpressure::SlowDown =>
            {
                d.interval_factor(device_hash)
            }
            Sink::Net(NetSink { devices: Some(d), .. }) if d.handles(profile) => 1,
            Sink::Net(n) => n.shared.interval_factor(profile, device_hash),
            _ => 1,
        }
    }

    /// Per-device MQTT sessions: (connected now, started) (0s for other sinks).
    pub fn sessions_connected(&self) -> (u64, u64) {
        match self {
            Sink::Net(NetSink { devices: Some(d), .. }) => (d.connected_now(), d.started()),
            _ => (0, 0),
        }
    }

    /// Starts a device's per-device MQTT session now (nothing for other sinks or profiles).
    pub fn start_session(
        &self,
        profile: usize,
        hash: u64,
        device_id: &str,
        labels: &std::collections::BTreeMap<String, String>,
    ) {
        if let Sink::Net(NetSink { devices: Some(d), .. }) = self {
            d.start_session(hash, profile, device_id, labels);
        }
    }

    /// Drops the per-device sessions of these devices (faults); see [`mqtt::devices::Drop`].
    pub fn drop_sessions(
        &self,
        hashes: &[u64],
        how: mqtt::devices::Drop,
        hold: mqtt::devices::Hold,
    ) -> usize {
        match self {
            Sink::Net(NetSink { devices: Some(d), .. }) => d.drop_sessions(hashes, how, hold),
            _ => 0,
        }
    }

    /// Lets sessions held down by a fault reconnect.
    pub fn release_sessions(&self, hashes: &[u64]) {
        if let Sink::Net(NetSink { devices: Some(d), .. }) = self {
            d.release(hashes);
        }
    }

    /// What Sparkplug edge-node sessions received (rebirth commands, reconnects) since the
    /// last call.
    pub fn take_sparkplug(&self) -> Vec<(u64, mqtt::devices::SparkplugIn)> {
        match self {
            Sink::Net(NetSink { devices: Some(d), .. }) => d.take_sparkplug(),
            _ => vec![],
        }
    }

    /// Whether this sink sends the profile's messages through per-device sessions.
    /// A runtime spawn added a per-device (or Sparkplug) profile to `fleet`: the per-device
    /// sessions take it. `false` when this MQTT sink has no per-device sessions (it opened for
    /// a fleet without such profiles), so the profile cannot be served here.
    pub fn add_per_device_profile(&self, fleet: &Arc<Fleet>) -> bool {
        match self {
            Sink::Net(NetSink { devices: Some(d), .. }) => {
                d.refresh(fleet);
                true
            }
            _ => false,
        }
    }

    /// A runtime spawn added a pooled MQTT profile to `fleet`: the pooled connections start
    /// now if the sink opened for a fleet of per-device profiles only (they were not needed).
    pub fn add_pooled_profile(&mut self, fleet: &Fleet) -> Result<(), String> {
        if let Sink::Net(n) = self
            && let Some(start) = n.pool_later.take()
        {
            start(fleet, n.shared.clone())?;
        }
        Ok(())
    }

    /// Profile index `ix` now holds a new runtime profile: what was cached for the old one
    /// (MQTT 5 property blocks) goes.
    pub fn forget_profile(&self, ix: usize) {
        if let Sink::Net(NetSink { mqtt5: Some(c), .. }) = self {
            c.forget(ix);
        }
    }

    pub fn per_device(&self, profile: usize) -> bool {
        matches!(self, Sink::Net(NetSink { devices: Some(d), .. }) if d.handles(profile))
    }

    /// The network sink's shared state, if this is one.
    pub fn net_shared(&self) -> Option<&Rc<NetShared>> {
        match self {
            Sink::Net(n) => Some(&n.shared),
            _ => None,
        }
    }

    /// Per-profile outcomes recorded by the sink itself (network sinks).
    pub fn own_stats(&self) -> Option<Vec<ProfileStats>> {
        self.net_shared().map(|s| s.stats.borrow().clone())
    }

    /// The same per scenario phase (`[phase][profile]`).
    pub fn own_phase_stats(&self) -> Option<Vec<Vec<ProfileStats>>> {
        self.net_shared().map(|s| s.phase_stats.borrow().clone())
    }

    /// Pushes buffered output out; called between wheel turns and at shutdown.
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Console(c) => c.flush(),
            Sink::File(f) => f.flush(),
            Sink::Null | Sink::Net(_) => Ok(()),
        }
    }

    /// Messages that were counted as delivered but that a later failed write lost, by profile
    /// index, since the previous call (the file sink; empty for the others).
    pub fn take_lost(&mut self) -> Vec<(usize, u64)> {
        match self {
            Sink::File(f) => f.take_lost(),
            _ => vec![],
        }
    }

    /// The protocol name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Console(_) => "console",
            Sink::File(_) => "file",
            Sink::Null => "null",
            Sink::Net(n) => n.protocol.name(),
        }
    }
}
