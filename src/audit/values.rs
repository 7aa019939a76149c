//! `verify = "values"`: each received message's field values checked against what the seed
//! says its device sent with that seq.
//!
//! The auditor keeps, per fleet device, the same generator state the shard keeps: a
//! [`DeviceTable`] built like the shard's (same device seeds, same slot layout), advanced with
//! the shard's own [`DeviceTable::generate`] sample by sample. A device's `seq` numbers its
//! samples (the ticks it took a sample at: a DISCONNECT-suppressed or an unpublished on_change
//! sample uses a seq too; a device away or asleep takes none), and a generator's state depends
//! only on how many samples it took, not on when (only diurnal's output reads the time, which
//! is taken from the message's timestamp). So the auditor generates the samples of seqs that did
//! not arrive (or were not published) to stay in step, and a message older than the state (it
//! arrived after a later one) cannot be checked: it is `unverified`.
//!
//! Values are compared as text, written as the payload writes them: the generated value
//! rounded to the field's decimals (`generate` does it), in the shortest round-trip form (`null` when
//! not finite), Markov states and constants as the shard writes them (`payload::write_sample`),
//! against the received value's JSON text. Same text: same value (a publisher that writes
//! `22.50` for `22.5` is counted as a mismatch).

use crate::limits::MAX_AUDIT_VALUES_CATCHUP;
use crate::sim::device::{DeviceTable, device_seed};
use crate::sim::generator::Sample;
use crate::sim::payload::write_sample;
use crate::sim::profile::{FieldSpec, Fleet};
use crate::sim::time::SimMs;
use serde::Serialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// What the check of one message found (each kind at most once per message).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub value_mismatch: bool,
    pub field_missing: bool,
    pub field_extra: bool,
    pub type_mismatch: bool,
}

impl Findings {
    pub fn any(&self) -> bool {
        self.value_mismatch || self.field_missing || self.field_extra || self.type_mismatch
    }
}

/// Counts of the value checks, per message.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ValueCounts {
    /// Messages whose every field matched.
    pub verified: u64,
    /// Messages older than the device's generator state (arrived after a later seq), or not
    /// JSON with a `fields` object: not checked.
    pub unverified: u64,
    /// Messages with at least one number, state or constant not as generated.
    pub value_mismatch: u64,
    /// Messages without one of the profile's fields.
    pub field_missing: u64,
    /// Messages with a field the profile does not have.
    pub field_extra: u64,
    /// Messages with a field of the wrong JSON type (a string for a number...).
    pub type_mismatch: u64,
}

#[derive(serde::Deserialize)]
struct FieldsOnly<'a> {
    #[serde(borrow)]
    fields: BTreeMap<Cow<'a, str>, &'a RawValue>,
}

/// Per-device generator state and mismatch counters of a values audit.
pub struct Values {
    table: DeviceTable,
    samples: Vec<Sample>,
    /// The expected text of one value.
    want: Vec<u8>,
    /// Per device (dense index): messages that did not match.
    pub mismatched: Vec<u32>,
    bytes: u64,
}

impl Values {
    /// The state of every fleet device, keyed by its dense index (groups in order).
    pub fn new(fleet: &Fleet, seed: u64) -> Values {
        let mut table = DeviceTable::default();
        let devices = fleet.device_count() as usize;
        let slots: usize =
            fleet.groups.iter().map(|g| g.count as usize * fleet.profiles[g.profile].slots).sum();
        table.reserve(devices, slots);
        let mut id = String::with_capacity(64);
        for (gi, g) in fleet.groups.iter().enumerate() {
            let profile = &fleet.profiles[g.profile];
            for i in 0..g.count {
                g.device_id(profile, i, &mut id);
                table.insert(fleet, gi as u32, i as u32, device_seed(seed, &id));
            }
        }
        let bytes = (devices * std::mem::size_of::<crate::sim::device::Device>()
            + slots * std::mem::size_of::<crate::sim::generator::SlotState>()
            + devices * 4) as u64;
        Values {
            table,
            samples: Vec::with_capacity(16),
            want: Vec::with_capacity(32),
            mismatched: vec![0; devices],
            bytes,
        }
    }

    /// Adds the state of a device spawned at runtime (group `gi` of `fleet`, its only device),
    /// at the next dense index.
    pub fn push_spawned(&mut self, fleet: &Fleet, gi: usize, id: &str, seed: u64) {
        let slots = fleet.profiles[fleet.groups[gi].profile].slots;
        self.table.insert(fleet, gi as u32, 0, device_seed(seed, id));
        self.mismatched.push(0);
        self.bytes += (std::mem::size_of::<crate::sim::device::Device>()
            + slots * std::mem::size_of::<crate::sim::generator::SlotState>()
            + 4) as u64;
    }

    /// Bytes of state: 24 B a device + 40 B a generator slot + 4 B of counter.
    pub fn state_bytes(&self) -> u64 {
        self.bytes
    }

    /// Checks the message of device `dense` with `seq` and timestamp `ts`; `None`: not
    /// checked (older than the state, more than `MAX_AUDIT_VALUES_CATCHUP` samples ahead of
    /// it, or no `fields` object).
    pub fn check(
        &mut self,
        fleet: &Fleet,
        dense: u64,
        seq: u64,
        ts: SimMs,
        payload: &[u8],
    ) -> Option<Findings> {
        let key = dense as u32;
        let at = self.table.get(key)?.seq;
        if seq < at || seq - at > MAX_AUDIT_VALUES_CATCHUP {
            return None;
        }
        let Ok(got) = serde_json::from_slice::<FieldsOnly<'_>>(payload) else { return None };
        // The samples of the seqs in between (lost, suppressed or not published): generated and
        // dropped so the state stays in step.
        for _ in at..seq {
            self.table.generate(fleet, key, ts, &mut self.samples);
        }
        self.table.generate(fleet, key, ts, &mut self.samples);
        let d = self.table.get(key)?;
        let profile = &fleet.profiles[fleet.groups[d.group as usize].profile];
        let mut f = Findings::default();
        for (field, sample) in profile.fields.iter().zip(&self.samples) {
            match got.fields.get(field.name.as_str()) {
                None => f.field_missing = true,
                Some(v) => match compare(&mut self.want, field, *sample, v.get().trim()) {
                    Cmp::Same => {}
                    Cmp::Value => f.value_mismatch = true,
                    Cmp::Type => f.type_mismatch = true,
                },
            }
        }
        if got.fields.keys().any(|k| !profile.fields.iter().any(|fs| fs.name == **k)) {
            f.field_extra = true;
        }
        if f.any() {
            self.mismatched[dense as usize] = self.mismatched[dense as usize].saturating_add(1);
        }
        Some(f)
    }
}

enum Cmp {
    Same,
    Value,
    Type,
}

/// One received value (its JSON text) against the generated sample, written as the payload
/// writes it (`payload::write_sample`): the same text is the same value.
fn compare(want: &mut Vec<u8>, field: &FieldSpec, sample: Sample, got: &str) -> Cmp {
    want.clear();
    write_sample(want, field, sample);
    if want.as_slice() == got.as_bytes() {
        return Cmp::Same;
    }
    match (class(want), class(got.as_bytes())) {
        (a, b) if a == b => Cmp::Value,
        // A value a fault made `null` (NaN), or a number the run could not compute.
        (Class::Null, _) | (_, Class::Null) => Cmp::Value,
        _ => Cmp::Type,
    }
}

#[derive(PartialEq)]
enum Class {
    Null,
    Str,
    Bool,
    Number,
    Other,
}

/// The JSON type of a value's text, by its first byte.
fn class(text: &[u8]) -> Class {
    match text.first() {
        Some(b'n') => Class::Null,
        Some(b'"') => Class::Str,
        Some(b't' | b'f') => Class::Bool,
        Some(b'-' | b'0'..=b'9') => Class::Number,
        _ => Class::Other,
    }
}
