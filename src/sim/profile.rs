//! Compiled (validated) device profiles and fleet groups: what the shards run.

use super::generator::GenSpec;
use super::payload::put;
use std::collections::BTreeMap;
use std::fmt;

/// Where a profile's messages go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Console,
    File,
    Null,
    Mqtt,
    Amqp,
    Http,
    Coap,
}

impl Protocol {
    /// Every protocol this build can publish to.
    pub const ALL: [Protocol; 7] = [
        Protocol::Console,
        Protocol::File,
        Protocol::Null,
        Protocol::Mqtt,
        Protocol::Amqp,
        Protocol::Http,
        Protocol::Coap,
    ];

    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Console => "console",
            Protocol::File => "file",
            Protocol::Null => "null",
            Protocol::Mqtt => "mqtt",
            Protocol::Amqp => "amqp",
            Protocol::Http => "http",
            Protocol::Coap => "coap",
        }
    }

    /// Looks a protocol up by its configuration name.
    pub fn parse(s: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Dense index, for per-protocol arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// True for sinks that talk to a server and complete asynchronously.
    pub fn is_network(self) -> bool {
        matches!(self, Protocol::Mqtt | Protocol::Amqp | Protocol::Http | Protocol::Coap)
    }
}

/// What a network sink does when a connection's queue of unsent messages is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backpressure {
    /// Evict the oldest unsent message and count it as dropped.
    #[default]
    DropOldest,
    /// Double the device's interval while the queue is above 80%, restore it below 50%.
    SlowDown,
}

/// Per-profile delivery settings that override the sink's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delivery {
    /// MQTT QoS (0, 1, 2).
    pub qos: Option<u8>,
    /// MQTT retain flag.
    pub retain: Option<bool>,
    pub backpressure: Backpressure,
    /// HTTP endpoint template (replaces `[sink.http] endpoint`).
    pub endpoint: Option<String>,
    /// CoAP confirmable (CON) or not (NON).
    pub confirmable: Option<bool>,
    /// MQTT: each device is its own client with its own connection (`connection =
    /// "per_device"`), instead of sharing the shard's pool.
    pub per_device: bool,
    /// MQTT 5 PUBLISH properties (`[profiles.X.mqtt5]`); ignored by MQTT 3.1.1.
    pub mqtt5: Option<std::sync::Arc<Mqtt5>>,
}

/// A profile's `[mqtt5]` block: the MQTT 5 properties of its PUBLISH packets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mqtt5 {
    /// User Property pairs, in the file's key order; values are templates over the device id,
    /// type and labels, rendered once per device.
    pub user_properties: Vec<(String, TopicTemplate)>,
    /// Message Expiry Interval, seconds.
    pub message_expiry_s: Option<u32>,
    /// Send topic aliases, up to the broker's Topic Alias Maximum.
    pub topic_alias: bool,
    /// Payload Format Indicator 1 (UTF-8 text).
    pub payload_format_indicator: bool,
}

impl Mqtt5 {
    /// Whether a user property depends on the device (not the same for every device).
    pub fn per_device(&self) -> bool {
        self.user_properties
            .iter()
            .any(|(_, t)| t.parts.iter().any(|p| !matches!(p, TopicPart::Literal(_))))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A piece of a topic template.
#[derive(Clone, Debug, PartialEq)]
pub enum TopicPart {
    Literal(String),
    DeviceId,
    DeviceType,
    Label(String),
}

/// A parsed topic template such as `devices/{device_id}/telemetry`.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicTemplate {
    pub source: String,
    pub parts: Vec<TopicPart>,
}

impl TopicTemplate {
    /// Parses `{device_id}`, `{device_type}` and `{labels.KEY}` placeholders.
    pub fn parse(s: &str) -> Result<TopicTemplate, String> {
        let mut parts = vec![];
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(TopicPart::Literal(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                return Err(format!("unclosed '{{' in topic {s:?}"));
            };
            let name = &rest[open + 1..open + close];
            parts.push(match name {
                "device_id" => TopicPart::DeviceId,
                "device_type" => TopicPart::DeviceType,
                _ => match name.strip_prefix("labels.") {
                    Some(key) if !key.is_empty() => TopicPart::Label(key.to_string()),
                    _ => {
                        return Err(format!(
                            "unknown placeholder {{{name}}} in topic {s:?}; use {{device_id}}, {{device_type}} or {{labels.KEY}}"
                        ));
                    }
                },
            });
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("stray '}}' in topic {s:?}"));
        }
        if !rest.is_empty() {
            parts.push(TopicPart::Literal(rest.to_string()));
        }
        Ok(TopicTemplate { source: s.to_string(), parts })
    }

    /// Appends the topic of one device.
    pub fn render(
        &self,
        out: &mut Vec<u8>,
        device_id: &str,
        device_type: &str,
        labels: &BTreeMap<String, String>,
    ) {
        for p in &self.parts {
            match p {
                TopicPart::Literal(s) => put(out, s.as_bytes()),
                TopicPart::DeviceId => put(out, device_id.as_bytes()),
                TopicPart::DeviceType => put(out, device_type.as_bytes()),
                TopicPart::Label(k) => {
                    put(out, labels.get(k).map_or("", String::as_str).as_bytes())
                }
            }
        }
    }
}

/// One telemetry field of a profile.
#[derive(Clone, Debug)]
pub struct FieldSpec {
    pub name: String,
    /// `"name":`, JSON-encoded once.
    pub key_json: String,
    pub generator: GenSpec,
    pub decimals: Option<u32>,
    /// Drained faster by a BATTERY_DRAIN fault.
    pub battery: bool,
    /// Index of the field's first slot within the device's slot block.
    pub first_slot: usize,
    /// Report-on-change: publish when the value moved more than this since it was last
    /// published.
    pub deadband: Option<f64>,
}

/// What UpdateDeviceBehavior or a scenario's `update` changes, compiled by the control plane
/// or the scenario loader; `None` keeps what the device's profile has. Applied by
/// [`Profile::updated`].
#[derive(Clone, Debug, Default)]
pub struct BehaviourUpdate {
    /// The new fields (compiled together: correlated members point into `correlated`,
    /// derived expressions are re-linked by name on arrival).
    pub fields: Vec<FieldSpec>,
    /// The correlated groups of `fields`.
    pub correlated: Vec<super::correlated::CorrelatedGroup>,
    /// false: `fields` replace every field (UpdateDeviceBehavior); true: they replace the
    /// fields of the same name, or are added (a scenario's `update`).
    pub merge: bool,
    /// Leave the fields alone (an update that changes only the behaviour).
    pub keep_fields: bool,
    /// A new telemetry interval.
    pub interval_ms: Option<u64>,
    /// Labels merged into the device's labels.
    pub labels: BTreeMap<String, String>,
    pub report: Option<super::behaviour::ReportMode>,
    pub events: Option<Vec<super::behaviour::EventSpec>>,
    pub availability: Option<Option<super::behaviour::Availability>>,
    pub sleep: Option<Option<super::behaviour::Sleep>>,
    /// A new payload format (`format` and its keys in the update).
    pub format: Option<std::sync::Arc<super::format::PayloadFormat>>,
    /// New MQTT 5 properties (`mqtt5` in the update): replace the profile's block.
    pub mqtt5: Option<Option<std::sync::Arc<Mqtt5>>>,
    /// What the update was compiled from (`fields` with defaults applied, `report`, `events`,
    /// `availability`, `sleep`, format keys): what the session journal records.
    pub source: Option<std::sync::Arc<toml::Table>>,
}

/// A validated device profile.
#[derive(Clone, Debug)]
pub struct Profile {
    pub name: String,
    pub device_type: String,
    pub protocol: Protocol,
    pub topic: TopicTemplate,
    pub interval_ms: u64,
    pub seq: bool,
    /// The profile's own labels (fleet labels are merged per group).
    pub labels: BTreeMap<String, String>,
    /// Sorted by name, which is also the order of the payload's `fields` object.
    pub fields: Vec<FieldSpec>,
    /// Slots per device: the sum over fields.
    pub slots: usize,
    /// `"device_type":"...","timestamp":"`, JSON-encoded once.
    pub type_json: String,
    /// Delivery overrides for network sinks.
    pub delivery: Delivery,
    /// Set when a device spawned over gRPC asked for a protocol this runtime has no sink for
    /// and is published to the fallback sink (`protocol`) instead: what it asked for.
    pub requested_protocol: Option<String>,
    /// Correlated gaussian groups, drawn after the plain fields.
    pub correlated: Vec<super::correlated::CorrelatedGroup>,
    /// Derived fields (indices into `fields`) in evaluation order (dependencies first).
    pub derived: Vec<usize>,
    /// Report mode, events, availability, sleep (the default: periodic, always on).
    pub behaviour: super::behaviour::Behaviour,
    /// The payload format (the default: the envelope).
    pub format: std::sync::Arc<super::format::PayloadFormat>,
    /// A replay profile's trace: its devices publish the recorded rows instead of generating.
    pub replay: Option<std::sync::Arc<super::replay::ReplaySpec>>,
}

impl Profile {
    /// Prepares the generators for the interval and lays out a device's slot block: the
    /// fields' streams, one per correlated group, then the behaviour's state (on_change
    /// watches follow the fields). Sets `slots`.
    pub fn lay_out(&mut self) {
        let dt = self.interval_ms as f64 / 1000.0;
        let mut slots = 0;
        for f in &mut self.fields {
            f.generator.prepare(dt);
            f.first_slot = slots;
            slots += f.generator.slots();
        }
        for g in &mut self.correlated {
            g.slot = slots;
            slots += 1;
        }
        self.behaviour.watch_fields(&self.fields);
        slots += self.behaviour.lay_out(slots);
        self.slots = slots;
    }

    /// This profile with `u` applied: the one function behind UpdateDeviceBehavior and a
    /// scenario's `update` (the shard applies it; the scenario loader runs it ahead to refuse an
    /// update that breaks the profile). Also returns what no longer holds together (see
    /// [`Profile::relink`]); empty when the update is sound.
    pub fn updated(&self, u: &BehaviourUpdate) -> (Profile, Vec<String>) {
        let mut p = self.clone();
        let mut broken = vec![];
        if !u.keep_fields {
            // Correlated members name their group by index: the update's groups come after
            // the profile's when merging.
            let offset = if u.merge { p.correlated.len() } else { 0 };
            let shifted = u.fields.iter().map(|f| {
                let mut f = f.clone();
                if let GenSpec::Correlated { group, .. } = &mut f.generator {
                    *group += offset;
                }
                f
            });
            if u.merge {
                for f in shifted {
                    match p.fields.iter_mut().find(|x| x.name == f.name) {
                        Some(x) => *x = f,
                        None => p.fields.push(f),
                    }
                }
                // The payload lists fields in name order.
                p.fields.sort_by(|a, b| a.name.cmp(&b.name));
            } else {
                p.fields = shifted.collect();
                p.correlated.clear();
            }
            p.correlated.extend(u.correlated.iter().cloned());
            broken = p.relink();
        }
        if let Some(ms) = u.interval_ms {
            p.interval_ms = ms;
        }
        let b = &mut p.behaviour;
        if let Some(r) = u.report {
            b.report = r;
        }
        if let Some(e) = &u.events {
            b.events = e.clone();
            b.retopic(&p.topic);
        }
        if let Some(a) = u.availability {
            b.availability = a;
        }
        if let Some(s) = u.sleep {
            b.sleep = s;
        }
        if let Some(f) = &u.format {
            p.format = f.clone();
        }
        if let Some(m) = &u.mqtt5 {
            p.delivery.mqtt5 = m.clone();
        }
        p.lay_out();
        (p, broken)
    }

    /// After the fields changed at runtime (replaced or merged by name, re-sorted): points the
    /// correlated groups at their members' new indices and recompiles the derived expressions
    /// against the new field order, then orders them. What no longer holds together (a group
    /// missing a member, an expression naming a field that is gone or not numeric, a cycle)
    /// publishes `null`; the returned list says what broke, one line per field, so that a
    /// caller can refuse the change instead (gRPC and scenario updates do).
    pub fn relink(&mut self) -> Vec<String> {
        let mut broken = vec![];
        use super::generator::GenSpec;
        let null = || GenSpec::Static { json: "null".into(), number: None };
        // Correlated groups: members by (group, member) as the fields name them.
        let mut members: Vec<Vec<Option<usize>>> =
            self.correlated.iter().map(|g| vec![None; g.means.len()]).collect();
        for (i, f) in self.fields.iter().enumerate() {
            if let GenSpec::Correlated { group, member } = f.generator
                && let Some(slot) = members.get_mut(group).and_then(|m| m.get_mut(member))
            {
                *slot = Some(i);
            }
        }
        for (g, m) in self.correlated.iter_mut().zip(&members) {
            g.members = m.iter().flatten().copied().collect();
            if g.members.len() != g.means.len() {
                g.members.clear();
            }
        }
        for f in &mut self.fields {
            if let GenSpec::Correlated { group, .. } = f.generator
                && self.correlated.get(group).is_none_or(|g| g.members.is_empty())
            {
                let name = self.correlated.get(group).map_or("?", |g| g.name.as_str());
                broken.push(format!(
                    "field {:?}: its correlated group {name:?} lost a member (a member was \
                     replaced by a field of another type)",
                    f.name
                ));
                f.generator = null();
            }
        }
        // Derived expressions, recompiled by name.
        let names: Vec<(String, bool, bool)> = self
            .fields
            .iter()
            .map(|f| {
                let derived = matches!(f.generator, GenSpec::Derived(_));
                (f.name.clone(), derived, f.generator.is_numeric())
            })
            .collect();
        for (me, f) in self.fields.iter_mut().enumerate() {
            if let GenSpec::Derived(e) = &f.generator {
                let r = super::expr::Expr::compile(&e.source, |name| {
                    match names.iter().position(|n| n.0 == name) {
                        Some(i) if i != me && (names[i].1 || names[i].2) => Ok(i),
                        Some(i) if i != me => Err(format!("field {name:?} is not numeric")),
                        Some(_) => Err(format!("field {name:?} refers to itself")),
                        None => Err(format!("unknown field {name:?}")),
                    }
                });
                f.generator = match r {
                    Ok(e) => GenSpec::Derived(Box::new(e)),
                    Err(why) => {
                        broken.push(format!("field {:?} = {:?}: {why}", f.name, e.source));
                        null()
                    }
                };
            }
        }
        // Dependencies first; fields on a cycle publish null.
        let n = self.fields.len();
        let mut state = vec![0u8; n]; // 0 new, 1 on the path, 2 done, 3 broken
        let mut order = vec![];
        fn visit(i: usize, fields: &[FieldSpec], state: &mut [u8], order: &mut Vec<usize>) -> bool {
            let GenSpec::Derived(e) = &fields[i].generator else { return true };
            match state[i] {
                2 => return true,
                1 | 3 => return false,
                _ => {}
            }
            state[i] = 1;
            let ok = e.deps.iter().all(|&d| visit(d, fields, state, order));
            state[i] = if ok { 2 } else { 3 };
            if ok {
                order.push(i);
            }
            ok
        }
        for i in 0..n {
            visit(i, &self.fields, &mut state, &mut order);
        }
        for (i, s) in state.iter().enumerate() {
            if *s == 3 {
                broken.push(format!(
                    "field {:?}: its expression depends on itself through other fields",
                    self.fields[i].name
                ));
                self.fields[i].generator = null();
            }
        }
        order.retain(|&i| state[i] == 2);
        self.derived = order;
        broken
    }

    /// What is left of a freed runtime profile: what names its report row (sink, device type,
    /// requested protocol) and its events' names, without fields, topic or behaviour. A shard
    /// keeps one in a freed profile slot; the report merge lists freed profiles' statistics
    /// under one (`report/merge.rs`).
    pub fn husk(
        protocol: Protocol,
        device_type: &str,
        requested_protocol: Option<String>,
        event_names: &[&str],
    ) -> Profile {
        let topic = TopicTemplate { source: String::new(), parts: vec![] };
        let events = event_names
            .iter()
            .map(|name| super::behaviour::EventSpec {
                name: (*name).to_string(),
                rate_per_hour: 0.0,
                fields: vec![],
                field_slots: 0,
                topic: topic.clone(),
                topic_is_default: false,
                event_json: String::new(),
            })
            .collect();
        Profile {
            name: device_type.to_string(),
            device_type: device_type.to_string(),
            protocol,
            topic,
            interval_ms: 1000,
            seq: false,
            labels: BTreeMap::new(),
            fields: vec![],
            slots: 0,
            type_json: String::new(),
            delivery: Delivery::default(),
            requested_protocol,
            correlated: vec![],
            derived: vec![],
            behaviour: super::behaviour::Behaviour { events, ..Default::default() },
            format: Default::default(),
            replay: None,
        }
    }

    /// A minimal profile for unit tests: null sink, 1 s interval, no fields.
    #[cfg(test)]
    pub fn for_tests(name: &str) -> Profile {
        Profile {
            name: name.into(),
            device_type: name.into(),
            protocol: Protocol::Null,
            topic: TopicTemplate::parse("x").unwrap(),
            interval_ms: 1000,
            seq: false,
            labels: BTreeMap::new(),
            fields: vec![],
            slots: 0,
            type_json: String::new(),
            delivery: Delivery::default(),
            requested_protocol: None,
            correlated: vec![],
            derived: vec![],
            behaviour: Default::default(),
            format: Default::default(),
            replay: None,
        }
    }
}

/// A fleet entry: `count` devices of one profile with the same labels.
#[derive(Clone, Debug)]
pub struct Group {
    pub profile: usize,
    pub count: u64,
    /// Ordinal of the group's first device within its profile.
    pub first_ordinal: u64,
    /// Profile labels + fleet labels + `device_type`.
    pub labels: BTreeMap<String, String>,
    /// `,"labels":{...}`, JSON-encoded once (empty when there are no labels).
    pub labels_json: String,
    /// Explicit ids of devices spawned over gRPC (index = device ordinal in the group); empty
    /// for fleet-file groups, whose ids are derived from the profile name and ordinal.
    pub ids: Vec<String>,
}

impl Group {
    /// The id of the group's `i`-th device.
    pub fn device_id(&self, profile: &Profile, i: u64, out: &mut String) {
        out.clear();
        // SAFETY: only whole UTF-8 strings (an id, a name, ASCII digits and '-') are appended.
        let v = unsafe { out.as_mut_vec() };
        if let Some(id) = self.ids.get(i as usize) {
            put(v, id.as_bytes());
            return;
        }
        put(v, profile.name.as_bytes());
        v.push(b'-');
        let ordinal = self.first_ordinal + i;
        let mut buf = itoa::Buffer::new();
        let digits = buf.format(ordinal);
        for _ in digits.len()..4 {
            v.push(b'0');
        }
        put(v, digits.as_bytes());
    }
}

/// Everything the shards need to build and run the fleet.
#[derive(Clone, Debug, Default)]
pub struct Fleet {
    pub profiles: Vec<Profile>,
    pub groups: Vec<Group>,
}

impl Fleet {
    /// Total number of devices.
    pub fn device_count(&self) -> u64 {
        self.groups.iter().map(|g| g.count).sum()
    }

    /// Protocols some profile uses.
    pub fn protocols(&self) -> Vec<Protocol> {
        let mut p: Vec<Protocol> = self.profiles.iter().map(|p| p.protocol).collect();
        p.sort();
        p.dedup();
        p
    }
}

/// Builds the labels JSON fragment of a group.
pub fn labels_json(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let mut out = Vec::from(&b",\"labels\":{"[..]);
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        super::payload::write_json_str(&mut out, k);
        out.push(b':');
        super::payload::write_json_str(&mut out, v);
    }
    out.push(b'}');
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_templates_render_placeholders() {
        let t = TopicTemplate::parse("site/{labels.site}/{device_type}/{device_id}").unwrap();
        let labels = BTreeMap::from([("site".to_string(), "berlin".to_string())]);
        let mut out = vec![];
        t.render(&mut out, "t-0001", "thermo", &labels);
        assert_eq!(out, b"site/berlin/thermo/t-0001");
    }

    #[test]
    fn topic_templates_reject_unknown_placeholders() {
        assert!(TopicTemplate::parse("a/{nope}").unwrap_err().contains("{nope}"));
        assert!(TopicTemplate::parse("a/{device_id").is_err());
        assert!(TopicTemplate::parse("a/}b").is_err());
    }

    #[test]
    fn device_ids_are_zero_padded_to_four_digits() {
        let p = Profile::for_tests("temperature_sensor");
        let g = Group {
            profile: 0,
            count: 3,
            first_ordinal: 9998,
            labels: BTreeMap::new(),
            labels_json: String::new(),
            ids: vec![],
        };
        let mut s = String::new();
        g.device_id(&p, 0, &mut s);
        assert_eq!(s, "temperature_sensor-9998");
        g.device_id(&p, 2, &mut s);
        assert_eq!(s, "temperature_sensor-10000");
        let g0 = Group { first_ordinal: 0, ..g };
        g0.device_id(&p, 7, &mut s);
        assert_eq!(s, "temperature_sensor-0007");
    }
}
