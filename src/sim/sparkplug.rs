//! Sparkplug B 3.0 edge nodes (`format = "sparkplug_b"`, issue 22): the topics, the protobuf
//! payloads of Eclipse Tahu's `sparkplug_b.proto` (encoded here by hand, by its field numbers:
//! a handful of fields, written straight into the shard's reused buffer; tests/it/sparkplug.rs
//! decodes them with pysparkplug, which compiles Tahu's file), and
//! the per-edge-node state that decides which message a device's sample becomes.
//!
//! The devices of a profile are grouped under edge nodes by the `edge_node` template. A node's
//! state (its `seq`, 0-255 wrapping over all its messages, NBIRTH at 0; its `bdSeq`; which of
//! its devices are born and their alias numbers) lives on the shard that owns the node: the
//! shard of the node's name (`seed::shard_of`), so every device of a node is on one shard and
//! the bytes do not depend on `--cores`.
//!
//! A device's first sample after its node's NBIRTH is its DBIRTH (every metric with name,
//! alias, datatype and value); later ones are DDATA (metrics by alias only). A device that
//! stops, goes offline or is disconnected by a fault gets a DDEATH and is born again at its
//! next sample. A rebirth (NCMD `Node Control/Rebirth`) is a new NBIRTH at once with `seq` 0;
//! each device then sends its DBIRTH with its next sample.

use super::behaviour::EventSpec;
use super::format::{Val, value_of};
use super::generator::Sample;
use super::profile::{FieldSpec, TopicTemplate};
use super::time::SimMs;
use std::collections::BTreeMap;

/// The `[profiles.X.sparkplug]` table of a profile.
#[derive(Clone, Debug)]
pub struct Spec {
    pub group_id: String,
    /// The edge node id of a device (over its id, type and labels).
    pub edge_node: TopicTemplate,
}

/// Sparkplug B data types (`DataType` in `sparkplug_b.proto`).
pub mod datatype {
    pub const INT64: u32 = 4;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
}

/// The metric names of the node itself.
pub const BD_SEQ: &str = "bdSeq";
pub const REBIRTH: &str = "Node Control/Rebirth";
/// The alias of `Node Control/Rebirth`; device metrics' aliases are `ordinal << 16 | field + 1`
/// with ordinals from 1, so every alias of a node is unique across the node.
pub const REBIRTH_ALIAS: u64 = 1;

/// Whether a Sparkplug id is valid: not empty, no `/`, `+` or `#` (topic levels and wildcards).
pub fn id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        Some("is empty")
    } else if id.contains('/') || id.contains('+') || id.contains('#') {
        Some("must not contain '/', '+' or '#'")
    } else {
        None
    }
}

/// Appends `spBv1.0/{group}/{kind}/{node}` and `/{device}` when there is one.
pub fn write_topic(out: &mut Vec<u8>, group: &str, kind: &str, node: &str, device: Option<&str>) {
    out.extend_from_slice(b"spBv1.0/");
    out.extend_from_slice(group.as_bytes());
    out.push(b'/');
    out.extend_from_slice(kind.as_bytes());
    out.push(b'/');
    out.extend_from_slice(node.as_bytes());
    if let Some(d) = device {
        out.push(b'/');
        out.extend_from_slice(d.as_bytes());
    }
}

// ---- protobuf writing ----

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Field tags (field number << 3 | wire type).
mod tag {
    // Payload
    pub const TIMESTAMP: u8 = 1 << 3;
    pub const METRIC: u8 = 2 << 3 | 2;
    pub const SEQ: u8 = 3 << 3;
    // Metric
    pub const NAME: u8 = 1 << 3 | 2;
    pub const ALIAS: u8 = 2 << 3;
    pub const DATATYPE: u8 = 4 << 3;
    pub const IS_NULL: u8 = 7 << 3;
    pub const LONG: u8 = 11 << 3;
    pub const DOUBLE: u8 = 13 << 3 | 1;
    pub const BOOLEAN: u8 = 14 << 3;
    pub const STRING: u8 = 15 << 3 | 2;
}

fn string(out: &mut Vec<u8>, t: u8, s: &str) {
    out.push(t);
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Writes one `Metric` (tag, length, body): `body` writes the body after the start mark.
fn metric(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(tag::METRIC);
    let at = out.len();
    out.push(0);
    body(out);
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = len as u8;
    } else {
        // Rare (a long name or text value): the length takes more than one byte.
        let mut l = Vec::with_capacity(4);
        varint(&mut l, len as u64);
        out.splice(at..at + 1, l);
    }
}

fn header(out: &mut Vec<u8>, ts: SimMs) {
    out.clear();
    out.push(tag::TIMESTAMP);
    varint(out, ts);
}

fn seq(out: &mut Vec<u8>, s: u8) {
    out.push(tag::SEQ);
    varint(out, s as u64);
}

fn bd_seq_metric(out: &mut Vec<u8>, bd_seq: u64) {
    metric(out, |out| {
        string(out, tag::NAME, BD_SEQ);
        out.push(tag::DATATYPE);
        varint(out, datatype::INT64 as u64);
        out.push(tag::LONG);
        varint(out, bd_seq);
    });
}

/// NBIRTH: `bdSeq` and `Node Control/Rebirth` (false), `seq` 0.
pub fn encode_nbirth(out: &mut Vec<u8>, ts: SimMs, bd_seq: u64) {
    header(out, ts);
    bd_seq_metric(out, bd_seq);
    metric(out, |out| {
        string(out, tag::NAME, REBIRTH);
        out.push(tag::ALIAS);
        varint(out, REBIRTH_ALIAS);
        out.push(tag::DATATYPE);
        varint(out, datatype::BOOLEAN as u64);
        out.push(tag::BOOLEAN);
        out.push(0);
    });
    seq(out, 0);
}

/// NDEATH (the session's will): `bdSeq` only, no `seq`.
pub fn encode_ndeath(out: &mut Vec<u8>, ts: SimMs, bd_seq: u64) {
    header(out, ts);
    bd_seq_metric(out, bd_seq);
}

/// DDEATH: timestamp and `seq`, no metrics.
pub fn encode_ddeath(out: &mut Vec<u8>, ts: SimMs, s: u8) {
    header(out, ts);
    seq(out, s);
}

/// The Sparkplug data type of a field's value.
fn datatype_of(v: &Val<'_>) -> u32 {
    match v {
        Val::Num(_) | Val::Null => datatype::DOUBLE,
        Val::Bool(_) => datatype::BOOLEAN,
        Val::Str(_) | Val::Json(_) => datatype::STRING,
    }
}

fn value(out: &mut Vec<u8>, v: &Val<'_>) {
    match v {
        // Sparkplug has no NaN marker of its own: a non-finite double is written as is.
        Val::Num(x) => {
            out.push(tag::DOUBLE);
            out.extend_from_slice(&x.to_le_bytes());
        }
        Val::Null => {
            out.push(tag::IS_NULL);
            out.push(1);
        }
        Val::Bool(b) => {
            out.push(tag::BOOLEAN);
            out.push(*b as u8);
        }
        Val::Str(s) => string(out, tag::STRING, s),
        Val::Json(j) => string(out, tag::STRING, j),
    }
}

/// The alias of field `field` of the device with ordinal `ordinal` (from 1).
pub fn alias(ordinal: u32, field: usize) -> u64 {
    ((ordinal as u64) << 16) | (field as u64 + 1)
}

/// The Sparkplug data type of a field whatever its value (an event's field is declared in
/// DBIRTH before it has one).
pub fn field_datatype(f: &FieldSpec) -> u32 {
    use super::generator::GenSpec;
    let probe = match &f.generator {
        GenSpec::Markov(_) => Sample::State(0),
        GenSpec::Static { .. } => Sample::Static,
        _ => Sample::Number(0.0),
    };
    datatype_of(&value_of(f, probe))
}

/// The metric of a device's events: its value is the name of the event that happened.
pub const EVENT: &str = "event";

/// DBIRTH: every metric with name, alias, datatype and value; then, when the device has
/// events, the `event` metric (String) and each event's fields as `EVENT/FIELD`, declared
/// with no value (`is_null`) until an event happens (see [`encode_event`]).
#[allow(clippy::too_many_arguments)]
pub fn encode_dbirth(
    out: &mut Vec<u8>,
    ts: SimMs,
    s: u8,
    ordinal: u32,
    fields: &[FieldSpec],
    samples: &[Sample],
    events: &[EventSpec],
) {
    header(out, ts);
    for (i, (f, smp)) in fields.iter().zip(samples).enumerate() {
        let v = value_of(f, *smp);
        metric(out, |out| {
            string(out, tag::NAME, &f.name);
            out.push(tag::ALIAS);
            varint(out, alias(ordinal, i));
            out.push(tag::DATATYPE);
            varint(out, datatype_of(&v) as u64);
            value(out, &v);
        });
    }
    if !events.is_empty() {
        let declare = |out: &mut Vec<u8>, name: &str, a: u64, dt: u32| {
            metric(out, |out| {
                string(out, tag::NAME, name);
                out.push(tag::ALIAS);
                varint(out, a);
                out.push(tag::DATATYPE);
                varint(out, dt as u64);
                out.push(tag::IS_NULL);
                out.push(1);
            });
        };
        declare(out, EVENT, alias(ordinal, fields.len()), datatype::STRING);
        let mut at = fields.len() + 1;
        let mut name = String::new();
        for e in events {
            for f in &e.fields {
                name.clear();
                name.push_str(&e.name);
                name.push('/');
                name.push_str(&f.name);
                declare(out, &name, alias(ordinal, at), field_datatype(f));
                at += 1;
            }
        }
    }
    seq(out, s);
}

/// An event of a device, as a DDATA at the event's time: the `event` metric (the event's
/// name) and the event's fields, by the aliases its DBIRTH declared (`profile_fields` is the
/// number of the profile's own fields; `events` every event of the profile, `which` this one).
#[allow(clippy::too_many_arguments)]
pub fn encode_event(
    out: &mut Vec<u8>,
    ts: SimMs,
    s: u8,
    ordinal: u32,
    profile_fields: usize,
    events: &[EventSpec],
    which: usize,
    samples: &[Sample],
) {
    header(out, ts);
    let e = &events[which];
    metric(out, |out| {
        out.push(tag::ALIAS);
        varint(out, alias(ordinal, profile_fields));
        string(out, tag::STRING, &e.name);
    });
    let first: usize =
        profile_fields + 1 + events[..which].iter().map(|e| e.fields.len()).sum::<usize>();
    for (j, (f, smp)) in e.fields.iter().zip(samples).enumerate() {
        let v = value_of(f, *smp);
        metric(out, |out| {
            out.push(tag::ALIAS);
            varint(out, alias(ordinal, first + j));
            value(out, &v);
        });
    }
    seq(out, s);
}

/// DDATA: the metrics whose bit is set in `which` (all when `None`), by alias only.
pub fn encode_ddata(
    out: &mut Vec<u8>,
    ts: SimMs,
    s: u8,
    ordinal: u32,
    fields: &[FieldSpec],
    samples: &[Sample],
    which: Option<&[bool]>,
) {
    header(out, ts);
    for (i, (f, smp)) in fields.iter().zip(samples).enumerate() {
        if which.is_some_and(|w| !w.get(i).copied().unwrap_or(true)) {
            continue;
        }
        let v = value_of(f, *smp);
        let a = alias(ordinal, i);
        metric(out, |out| {
            out.push(tag::ALIAS);
            varint(out, a);
            value(out, &v);
        });
    }
    seq(out, s);
}

// ---- edge-node state ----

/// One edge node's state on its shard.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    /// The next `seq` (NBIRTH is 0).
    next_seq: u8,
    pub bd_seq: u64,
    /// Whether the NBIRTH went out (or must go out again: a rebirth).
    born: bool,
    /// Device id -> its state on the node.
    devices: BTreeMap<String, Device>,
}

/// A device of an edge node.
#[derive(Debug)]
struct Device {
    /// From 1, in the order of first birth: the high half of the device's aliases.
    ordinal: u32,
    born: bool,
    /// The profile and values of its last DBIRTH or DDATA: a rebirth sends its DBIRTH again
    /// at once with these.
    profile: usize,
    last: Vec<Sample>,
}

impl Node {
    fn take_seq(&mut self) -> u8 {
        let s = self.next_seq;
        self.next_seq = s.wrapping_add(1);
        s
    }
}

/// What one sample of a device becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// An NBIRTH first (with this `bdSeq`; its `seq` is 0).
    pub nbirth: Option<u64>,
    /// The device's message: a DBIRTH or a DDATA, with its `seq`.
    pub birth: bool,
    pub seq: u8,
    pub ordinal: u32,
}

/// Every edge node of one shard, by the FNV-1a hash of `group/node` (the MQTT sink's session
/// key too).
#[derive(Debug, Default)]
pub struct EdgeNodes {
    nodes: BTreeMap<u64, Node>,
    /// The node name of the message being handled (reused).
    pub name: Vec<u8>,
    /// Report on change: which fields of the sample being handled moved (reused).
    pub changed: Vec<bool>,
    /// DCMD writes not yet reflected: (node hash, device id, writes).
    pending: Vec<(u64, String, Vec<Write>)>,
}

/// The session key of an edge node: FNV-1a of `group/node`.
pub fn node_hash(group: &str, node: &[u8]) -> u64 {
    let mut h = super::seed::fnv1a64(group.as_bytes());
    for b in std::iter::once(&b'/').chain(node) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

impl EdgeNodes {
    /// Renders the node of a device into `self.name` and returns its hash.
    pub fn locate(
        &mut self,
        spec: &Spec,
        device_id: &str,
        device_type: &str,
        labels: &BTreeMap<String, String>,
    ) -> u64 {
        self.name.clear();
        spec.edge_node.render(&mut self.name, device_id, device_type, labels);
        node_hash(&spec.group_id, &self.name)
    }

    fn node(&mut self, hash: u64) -> &mut Node {
        let name = &self.name;
        self.nodes.entry(hash).or_insert_with(|| Node {
            name: String::from_utf8_lossy(name).into_owned(),
            next_seq: 0,
            bd_seq: 0,
            born: false,
            devices: BTreeMap::new(),
        })
    }

    /// The node of a hash, if it has sent anything.
    pub fn get(&self, hash: u64) -> Option<&Node> {
        self.nodes.get(&hash)
    }

    /// A sample of `device_id` on the node `hash` (located first): what to send.
    pub fn sample(&mut self, hash: u64, device_id: &str) -> Plan {
        let node = self.node(hash);
        let nbirth = (!node.born).then(|| {
            node.born = true;
            node.next_seq = 1;
            node.bd_seq
        });
        let next_ord = node.devices.len() as u32 + 1;
        let (ordinal, born) = match node.devices.get_mut(device_id) {
            Some(d) => (d.ordinal, std::mem::replace(&mut d.born, true)),
            None => {
                let d = Device { ordinal: next_ord, born: true, profile: 0, last: vec![] };
                node.devices.insert(device_id.to_string(), d);
                (next_ord, false)
            }
        };
        Plan { nbirth, birth: !born, seq: node.take_seq(), ordinal }
    }

    /// Keeps what `device_id` (of node `hash`) just sent, for a rebirth's DBIRTH.
    pub fn remember(&mut self, hash: u64, device_id: &str, profile: usize, samples: &[Sample]) {
        if let Some(d) = self.nodes.get_mut(&hash).and_then(|n| n.devices.get_mut(device_id)) {
            d.profile = profile;
            d.last.clear();
            d.last.extend_from_slice(samples);
        }
    }

    /// Whether `device_id` of node `hash` is born (its DBIRTH went out since its last DDEATH
    /// or its node's last NBIRTH), with its ordinal.
    pub fn born(&self, hash: u64, device_id: &str) -> Option<u32> {
        let node = self.nodes.get(&hash).filter(|n| n.born)?;
        node.devices.get(device_id).filter(|d| d.born).map(|d| d.ordinal)
    }

    /// The next `seq` of a born device's message other than its sample (an event).
    pub fn next_seq(&mut self, hash: u64) -> u8 {
        self.nodes.get_mut(&hash).map_or(0, Node::take_seq)
    }

    /// A device stops, goes offline or is disconnected: its DDEATH's `seq`, when it was born.
    pub fn death(&mut self, hash: u64, device_id: &str) -> Option<u8> {
        let node = self.nodes.get_mut(&hash)?;
        if !node.born {
            return None;
        }
        let d = node.devices.get_mut(device_id)?;
        if !std::mem::replace(&mut d.born, false) {
            return None;
        }
        Some(node.take_seq())
    }

    /// A DCMD to `device` of node `hash`: its writes show in the device's next DDATA.
    pub fn write(&mut self, hash: u64, device: &str, w: Vec<Write>) {
        if !w.is_empty() {
            self.pending.push((hash, device.to_string(), w));
        }
    }

    /// Applies the DCMD writes pending for `device` of node `hash` (ordinal `ordinal`) to its
    /// sample: a number to a numeric field, a state name to a Markov field (other writes are
    /// left out); marks them changed. Returns how many were applied.
    pub fn apply_writes(
        &mut self,
        hash: u64,
        device: &str,
        ordinal: u32,
        fields: &[FieldSpec],
        samples: &mut [Sample],
    ) -> usize {
        if self.pending.is_empty() {
            return 0;
        }
        let mut applied = 0;
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].0 != hash || self.pending[i].1 != device {
                i += 1;
                continue;
            }
            let (_, _, writes) = self.pending.remove(i);
            for w in writes {
                let by_alias = w.alias.and_then(|a| {
                    (a >> 16 == ordinal as u64 && a & 0xffff > 0).then(|| (a & 0xffff) as usize - 1)
                });
                let field = by_alias.or_else(|| {
                    w.name.as_deref().and_then(|n| fields.iter().position(|f| f.name == n))
                });
                let Some(fi) = field.filter(|fi| *fi < fields.len().min(samples.len())) else {
                    continue;
                };
                let new = match (&w.value, &fields[fi].generator, samples[fi]) {
                    (Written::Num(v), _, Sample::Number(_)) => Some(Sample::Number(*v)),
                    (Written::Text(t), super::generator::GenSpec::Markov(m), _) => {
                        m.states.iter().position(|s| s == t).map(Sample::State)
                    }
                    _ => None,
                };
                if let Some(new) = new {
                    samples[fi] = new;
                    if let Some(c) = self.changed.get_mut(fi) {
                        *c = true;
                    }
                    applied += 1;
                }
            }
        }
        applied
    }

    /// The node's session connected again (with the next `bdSeq` in its will): a rebirth
    /// with that `bdSeq`.
    pub fn reconnected(&mut self, hash: u64) -> Option<Rebirth> {
        let node = self.nodes.get_mut(&hash)?;
        node.bd_seq = (node.bd_seq + 1) % 256;
        self.rebirth(hash)
    }

    /// A rebirth (NCMD `Node Control/Rebirth`): the NBIRTH's `bdSeq` (its `seq` is 0), then at
    /// once a DBIRTH for every device that was born (with the values it last sent), each with
    /// its `seq`; a device that was dead (DDEATH) is born again at its next sample.
    pub fn rebirth(&mut self, hash: u64) -> Option<Rebirth> {
        let node = self.nodes.get_mut(&hash)?;
        node.born = true;
        node.next_seq = 1;
        let mut births = vec![];
        for (id, d) in node.devices.iter_mut() {
            if d.born && !d.last.is_empty() {
                births.push(Reborn {
                    device: id.clone(),
                    ordinal: d.ordinal,
                    profile: d.profile,
                    samples: d.last.clone(),
                    seq: 0,
                });
            } else {
                d.born = false;
            }
        }
        for b in &mut births {
            b.seq = node.take_seq();
        }
        Some(Rebirth { node: node.name.clone(), bd_seq: node.bd_seq, births })
    }
}

/// What a rebirth sends: the node's NBIRTH, then its devices' DBIRTHs.
#[derive(Debug)]
pub struct Rebirth {
    pub node: String,
    pub bd_seq: u64,
    pub births: Vec<Reborn>,
}

/// A device's DBIRTH in a rebirth.
#[derive(Debug)]
pub struct Reborn {
    pub device: String,
    pub ordinal: u32,
    pub profile: usize,
    pub samples: Vec<Sample>,
    pub seq: u8,
}

/// Whether an NCMD payload asks for a rebirth: a metric named `Node Control/Rebirth` (or with
/// its alias) whose boolean value is true. A minimal protobuf reader: unknown fields skipped.
pub fn is_rebirth(payload: &[u8]) -> bool {
    let mut r = Reader(payload);
    while let Some((field, wt)) = r.key() {
        if field == 2 && wt == 2 {
            let Some(m) = r.bytes() else { return false };
            let mut m = Reader(m);
            let (mut named, mut on) = (false, false);
            while let Some((f, wt)) = m.key() {
                match (f, wt) {
                    (1, 2) => named |= m.bytes() == Some(REBIRTH.as_bytes()),
                    (2, 0) => named |= m.varint() == Some(REBIRTH_ALIAS),
                    (14, 0) => on = m.varint().is_some_and(|v| v != 0),
                    _ => {
                        if !m.skip(wt) {
                            return false;
                        }
                    }
                }
            }
            if named && on {
                return true;
            }
        } else if !r.skip(wt) {
            return false;
        }
    }
    false
}

/// A value a DCMD writes to a metric.
#[derive(Clone, Debug, PartialEq)]
pub enum Written {
    Num(f64),
    Bool(bool),
    Text(String),
}

/// One write of a DCMD: the metric by name or alias, and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    pub name: Option<String>,
    pub alias: Option<u64>,
    pub value: Written,
}

/// The writes of a DCMD payload (metrics without a value are left out).
pub fn writes(payload: &[u8]) -> Vec<Write> {
    let mut r = Reader(payload);
    let mut out = vec![];
    while let Some((field, wt)) = r.key() {
        if field == 2 && wt == 2 {
            let Some(m) = r.bytes() else { break };
            let mut m = Reader(m);
            let (mut name, mut alias, mut value) = (None, None, None);
            while let Some((f, wt)) = m.key() {
                match (f, wt) {
                    (1, 2) => name = m.bytes().map(|b| String::from_utf8_lossy(b).into_owned()),
                    (2, 0) => alias = m.varint(),
                    // Int types travel as two's complement in uint32 / uint64.
                    (10, 0) => value = m.varint().map(|v| Written::Num(v as u32 as i32 as f64)),
                    (11, 0) => value = m.varint().map(|v| Written::Num(v as i64 as f64)),
                    (12, 5) if m.0.len() >= 4 => {
                        let b = [m.0[0], m.0[1], m.0[2], m.0[3]];
                        m.0 = &m.0[4..];
                        value = Some(Written::Num(f32::from_le_bytes(b) as f64));
                    }
                    (13, 1) if m.0.len() >= 8 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&m.0[..8]);
                        m.0 = &m.0[8..];
                        value = Some(Written::Num(f64::from_le_bytes(b)));
                    }
                    (14, 0) => value = m.varint().map(|v| Written::Bool(v != 0)),
                    (15, 2) => {
                        value = m
                            .bytes()
                            .map(|b| Written::Text(String::from_utf8_lossy(b).into_owned()))
                    }
                    _ => {
                        if !m.skip(wt) {
                            break;
                        }
                    }
                }
            }
            if let Some(value) = value {
                out.push(Write { name, alias, value });
            }
        } else if !r.skip(wt) {
            break;
        }
    }
    out
}

/// The `seq` of a payload, if it has one.
pub fn read_seq(payload: &[u8]) -> Option<u64> {
    let mut r = Reader(payload);
    while let Some((field, wt)) = r.key() {
        if field == 3 && wt == 0 {
            return r.varint();
        }
        if !r.skip(wt) {
            return None;
        }
    }
    None
}

/// Counts the metrics of a DCMD payload (the writes it asks for).
pub fn count_metrics(payload: &[u8]) -> u64 {
    let mut r = Reader(payload);
    let mut n = 0;
    while let Some((field, wt)) = r.key() {
        if field == 2 && wt == 2 {
            n += 1;
        }
        if !r.skip(wt) {
            break;
        }
    }
    n
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn key(&mut self) -> Option<(u64, u8)> {
        if self.0.is_empty() {
            return None;
        }
        let k = self.varint()?;
        Some((k >> 3, (k & 7) as u8))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.varint()? as usize;
        if n > self.0.len() {
            self.0 = &[];
            return None;
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(b)
    }

    fn skip(&mut self, wt: u8) -> bool {
        let n = match wt {
            0 => return self.varint().is_some(),
            1 => 8,
            2 => return self.bytes().is_some(),
            5 => 4,
            _ => return false,
        };
        if self.0.len() < n {
            return false;
        }
        self.0 = &self.0[n..];
        true
    }
}

/// A decoded view of a Sparkplug payload for the console and `payload preview`:
/// `{timestamp, seq, metrics: [{name, alias, datatype, value}]}` as JSON text.
pub fn describe(payload: &[u8]) -> String {
    let mut r = Reader(payload);
    let mut parts = vec![];
    let mut metrics = vec![];
    while let Some((field, wt)) = r.key() {
        match (field, wt) {
            (1, 0) => parts.push(format!("\"timestamp\":{}", r.varint().unwrap_or(0))),
            (3, 0) => parts.push(format!("\"seq\":{}", r.varint().unwrap_or(0))),
            (2, 2) => {
                let mut m = Reader(r.bytes().unwrap_or(&[]));
                let mut fs = vec![];
                while let Some((f, wt)) = m.key() {
                    let text = match (f, wt) {
                        (1, 2) => format!(
                            "\"name\":{}",
                            serde_json::Value::from(String::from_utf8_lossy(
                                m.bytes().unwrap_or(&[])
                            ))
                        ),
                        (2, 0) => format!("\"alias\":{}", m.varint().unwrap_or(0)),
                        (4, 0) => format!("\"datatype\":{}", m.varint().unwrap_or(0)),
                        (7, 0) => format!("\"is_null\":{}", m.varint().unwrap_or(0) != 0),
                        (10 | 11, 0) => format!("\"value\":{}", m.varint().unwrap_or(0)),
                        (13, 1) => {
                            let mut b = [0u8; 8];
                            if m.0.len() >= 8 {
                                b.copy_from_slice(&m.0[..8]);
                                m.0 = &m.0[8..];
                            }
                            let v = f64::from_le_bytes(b);
                            format!(
                                "\"value\":{}",
                                serde_json::Number::from_f64(v)
                                    .map_or("null".to_string(), |n| n.to_string())
                            )
                        }
                        (14, 0) => format!("\"value\":{}", m.varint().unwrap_or(0) != 0),
                        (15, 2) => format!(
                            "\"value\":{}",
                            serde_json::Value::from(String::from_utf8_lossy(
                                m.bytes().unwrap_or(&[])
                            ))
                        ),
                        _ => {
                            if !m.skip(wt) {
                                break;
                            }
                            continue;
                        }
                    };
                    fs.push(text);
                }
                metrics.push(format!("{{{}}}", fs.join(",")));
            }
            _ => {
                if !r.skip(wt) {
                    break;
                }
            }
        }
    }
    parts.push(format!("\"metrics\":[{}]", metrics.join(",")));
    format!("{{{}}}", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_wraps_per_node_and_births_come_first() {
        let mut n = EdgeNodes::default();
        n.name.extend_from_slice(b"line1");
        let h = node_hash("plant1", b"line1");
        let p = n.sample(h, "d1");
        assert_eq!(p, Plan { nbirth: Some(0), birth: true, seq: 1, ordinal: 1 });
        let p = n.sample(h, "d2");
        assert_eq!(p, Plan { nbirth: None, birth: true, seq: 2, ordinal: 2 });
        let p = n.sample(h, "d1");
        assert_eq!(p, Plan { nbirth: None, birth: false, seq: 3, ordinal: 1 });
        for _ in 0..300 {
            n.sample(h, "d1");
        }
        // 3 + 300 messages after NBIRTH(0): 304 % 256.
        assert_eq!(n.sample(h, "d1").seq, (304 % 256) as u8);
        assert!(n.death(h, "d2").is_some());
        assert!(n.death(h, "d2").is_none(), "a dead device dies once");
        assert!(n.sample(h, "d2").birth);
        // d1 sent values (remembered); d2 dies before the rebirth.
        n.remember(h, "d1", 0, &[Sample::Number(1.5)]);
        n.remember(h, "d2", 0, &[Sample::Number(2.5)]);
        assert!(n.death(h, "d2").is_some());
        let r = n.rebirth(h).unwrap();
        assert_eq!((r.node.as_str(), r.bd_seq), ("line1", 0));
        // d1's DBIRTH goes out at once after the NBIRTH (seq 1), with what it last sent; the
        // dead d2 is born at its next sample.
        assert_eq!(r.births.len(), 1);
        let b = &r.births[0];
        assert_eq!((b.device.as_str(), b.ordinal, b.seq), ("d1", 1, 1));
        assert_eq!(b.samples, vec![Sample::Number(1.5)]);
        let p = n.sample(h, "d1");
        assert_eq!((p.nbirth, p.birth, p.seq), (None, false, 2));
        let p = n.sample(h, "d2");
        assert_eq!((p.nbirth, p.birth, p.seq), (None, true, 3));
        assert_eq!(n.born(h, "d2"), Some(2));
    }

    #[test]
    fn a_rebirth_command_is_recognised_by_name_or_alias() {
        let mut cmd = vec![];
        header(&mut cmd, 5);
        metric(&mut cmd, |out| {
            string(out, tag::NAME, REBIRTH);
            out.push(tag::DATATYPE);
            varint(out, datatype::BOOLEAN as u64);
            out.push(tag::BOOLEAN);
            out.push(1);
        });
        assert!(is_rebirth(&cmd));
        let mut by_alias = vec![];
        header(&mut by_alias, 5);
        metric(&mut by_alias, |out| {
            out.push(tag::ALIAS);
            varint(out, REBIRTH_ALIAS);
            out.push(tag::BOOLEAN);
            out.push(1);
        });
        assert!(is_rebirth(&by_alias));
        let mut nbirth = vec![];
        encode_nbirth(&mut nbirth, 5, 0);
        assert!(!is_rebirth(&nbirth), "Rebirth = false is no command");
        assert!(!is_rebirth(&[0xff, 0xff]));
        assert_eq!(count_metrics(&nbirth), 2);
    }

    #[test]
    fn a_long_metric_gets_a_multi_byte_length() {
        let mut out = vec![];
        metric(&mut out, |out| string(out, tag::NAME, &"x".repeat(200)));
        assert_eq!(out[0], tag::METRIC);
        // Name tag, two length bytes, 200 bytes: 203 = varint cb 01.
        assert_eq!(&out[1..3], &[0xcb, 0x01]);
        assert_eq!(out.len(), 3 + 203);
    }

    #[test]
    fn dcmd_writes_and_seq_are_read_back() {
        // temperature = -2 as Int32 by name; state = "idle" by alias (ordinal 1, field 1).
        let mut cmd = vec![];
        header(&mut cmd, 5);
        metric(&mut cmd, |out| {
            string(out, tag::NAME, "temperature");
            out.push(10 << 3);
            varint(out, (-2i32) as u32 as u64);
        });
        metric(&mut cmd, |out| {
            out.push(tag::ALIAS);
            varint(out, alias(1, 1));
            string(out, tag::STRING, "idle");
        });
        let w = writes(&cmd);
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].name.as_deref(), &w[0].value), (Some("temperature"), &Written::Num(-2.0)));
        assert_eq!((w[1].alias, &w[1].value), (Some(alias(1, 1)), &Written::Text("idle".into())));
        assert_eq!(read_seq(&cmd), None);
        let mut d = vec![];
        encode_ddeath(&mut d, 5, 200);
        assert_eq!(read_seq(&d), Some(200));
    }

    #[test]
    fn ids_with_topic_characters_are_refused() {
        assert!(id_problem("line/1").is_some());
        assert!(id_problem("a+").is_some());
        assert!(id_problem("#").is_some());
        assert!(id_problem("").is_some());
        assert!(id_problem("line-1").is_none());
    }
}
