//! Spawning at runtime: the id index (compact, built in steps so a million ids do not stall the
//! ticks), one device per spec, runtime profiles and groups interned and freed when their last
//! device goes, and id slots of stopped devices reused.

use super::Shard;
use super::command::{SpawnReply, SpawnSpec};
use super::event::EventKind;
use super::inbox::*;
use crate::measure::clock::mono_ns;
use crate::measure::stats::{ProfileStats, Retired};
use crate::sim::device::{DeviceTable, device_seed};
use crate::sim::profile::{self, Group, Profile};
use crate::sim::seed;
use crate::sink::Sink;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// The order in which a spawn's devices first fall due: the positions of `items` (id, interval)
/// sorted by the offset of each device's first tick in its interval (what `spawn_one` arms),
/// then by position. A shard takes free keys and appends ids, generator state and wheel entries
/// in the order it spawns, so spawning in this order puts the devices due in the same
/// millisecond side by side, as a fleet file's are (`DeviceTable::build`): a spawned fleet is
/// ticked at the same speed as one built from a file. An id met again comes after every first
/// one, in its own order, so the first spec of an id is still the one spawned.
pub(crate) fn due_order<'a>(seed: u64, items: impl Iterator<Item = (&'a str, u64)>) -> Vec<u32> {
    let mut seen = std::collections::HashSet::new();
    let mut keyed: Vec<(u64, u32)> = items
        .enumerate()
        .map(|(i, (id, interval_ms))| {
            let phase = if seen.insert(id) {
                seed::phase_ms(device_seed(seed, id), interval_ms)
            } else {
                u64::MAX
            };
            (phase, i as u32)
        })
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// `specs` in [`due_order`], each id copied anew in that order: the shard keeps a spec's id
/// string as it is (no copy on the shard), so the copies, made one after another, lie in the
/// order the shard reads them in each tick rather than in the request's.
pub(crate) fn in_due_order(seed: u64, specs: Vec<SpawnSpec>) -> Vec<SpawnSpec> {
    if specs.len() < 2 {
        return specs;
    }
    let order = due_order(seed, specs.iter().map(|s| (s.id.as_str(), s.profile.interval_ms)));
    // Every copy is made before any old string is freed, so none reuses a freed one.
    let ids: Vec<String> = order.iter().map(|&i| specs[i as usize].id.clone()).collect();
    let mut old: Vec<Option<SpawnSpec>> = specs.into_iter().map(Some).collect();
    order
        .iter()
        .zip(ids)
        .filter_map(|(&i, id)| old[i as usize].take().map(|s| SpawnSpec { id, ..s }))
        .collect()
}

/// A hasher for keys that are hashes already (the id index's).
#[derive(Default)]
pub(super) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | *b as u64;
        }
    }
    fn write_u32(&mut self, n: u32) {
        // Spread over the 64 bits: the map takes its bucket from the low bits and a tag from
        // the high ones.
        self.0 = crate::sim::seed::mix64(n as u64);
    }
}

/// Device id -> key, compact: a 32-bit hash of the id -> key (8 bytes and a control byte per
/// device, against ~100 for a map of id strings: a million-device fleet's index took ~100 MB
/// and kept it, issue 25). Ids whose hashes collide go to a small side map. A hit is confirmed
/// by the id its key has now (`confirm`), so the index never answers for another device.
#[derive(Default)]
pub(crate) struct IdIndex {
    first: HashMap<u32, u32, BuildHasherDefault<Prehashed>>,
    more: HashMap<u32, Vec<u32>>,
}

impl IdIndex {
    fn hash(id: &str) -> u32 {
        let h = crate::sim::seed::fnv1a64(id.as_bytes());
        (h ^ (h >> 32)) as u32
    }

    pub fn len(&self) -> usize {
        self.first.len() + self.more.values().map(Vec::len).sum::<usize>()
    }

    /// Makes room for `n` more ids at once (growing by doubling rehashes everything so far in
    /// one go).
    pub fn reserve(&mut self, n: usize) {
        self.first.reserve(n);
    }

    pub fn capacity(&self) -> usize {
        self.first.capacity()
    }

    /// The key of `id`; `confirm(key)` says whether a key has that id.
    pub fn get(&self, id: &str, mut confirm: impl FnMut(u32) -> bool) -> Option<u32> {
        let h = Self::hash(id);
        let k = *self.first.get(&h)?;
        if confirm(k) {
            return Some(k);
        }
        self.more.get(&h)?.iter().copied().find(|&k| confirm(k))
    }

    /// Adds `id` at `key` (again: nothing changes).
    pub fn insert(&mut self, id: &str, key: u32) {
        let h = Self::hash(id);
        match self.first.get(&h) {
            None => {
                self.first.insert(h, key);
            }
            Some(&k) if k == key => {}
            Some(_) => {
                let v = self.more.entry(h).or_default();
                if !v.contains(&key) {
                    v.push(key);
                }
            }
        }
    }

    /// Removes `id`, which is at `key`.
    pub fn remove(&mut self, id: &str, key: u32) {
        let h = Self::hash(id);
        if self.first.get(&h) == Some(&key) {
            match self.more.get_mut(&h).and_then(Vec::pop) {
                Some(k) => {
                    self.first.insert(h, k);
                }
                None => {
                    self.first.remove(&h);
                }
            }
        } else if let Some(v) = self.more.get_mut(&h) {
            v.retain(|&k| k != key);
        }
        if self.more.get(&h).is_some_and(Vec::is_empty) {
            self.more.remove(&h);
        }
    }

    /// `id` moved from key `old` to key `new`.
    pub fn rekey(&mut self, id: &str, old: u32, new: u32) {
        self.remove(id, old);
        self.insert(id, new);
    }
}

impl Shard {
    /// The key of device `id`, from the id index (complete or not).
    pub(super) fn key_of(&self, id: &str) -> Option<u32> {
        let ids = self.ctl.ids.as_ref()?;
        let mut buf = String::new();
        ids.get(id, |k| {
            buf.clear();
            self.id_of(k, &mut buf) && buf == id
        })
    }

    pub(super) fn id_of(&self, key: u32, out: &mut String) -> bool {
        let fleet = &*self.plan.fleet;
        match self.table.get(key) {
            Some(d) => {
                let g = &fleet.groups[d.group as usize];
                g.device_id(&fleet.profiles[g.profile], d.index as u64, out);
                true
            }
            None => false,
        }
    }

    /// Builds the id index a step at a time; true once it is complete. Stops, spawns and
    /// behaviour changes keep a partial index right (they insert and remove their own keys).
    pub(super) fn id_index_step(&mut self, deadline: u64) -> bool {
        if self.ctl.ids_ready {
            return true;
        }
        let mut map = self.ctl.ids.take().unwrap_or_default();
        let mut id = String::new();
        let end = self.table.key_capacity();
        let mut n = 0usize;
        while self.ctl.ids_cursor < end {
            let k = self.ctl.ids_cursor as u32;
            self.ctl.ids_cursor += 1;
            if self.id_of(k, &mut id) {
                if map.len() >= map.capacity() {
                    // Grow once to the full size rather than by doubling (each doubling
                    // rehashes everything so far in one go).
                    // A quarter of headroom: spawns that follow then do not rehash a full map.
                    map.reserve((self.table.len() + self.table.len() / 4).max(1024));
                }
                map.insert(&id, k);
            }
            n += 1;
            if n.is_multiple_of(CHUNK) && mono_ns() >= deadline {
                break;
            }
        }
        self.ctl.ids = Some(map);
        self.ctl.ids_ready = self.ctl.ids_cursor >= end;
        self.ctl.ids_ready
    }

    pub(super) fn spawn_one(&mut self, spec: SpawnSpec, acc: &mut SpawnReply) {
        // The caller completed the id index first (`id_index_step`).
        if self.key_of(&spec.id).is_some() {
            let reason = format!("device {:?} already exists", spec.id);
            acc.failed.push((spec.id, reason));
            return;
        }
        // The profile first, so that a sink opened now knows it (HTTP endpoints, per-profile
        // statistics of network sinks).
        let known = self.ctl.profiles.len();
        let profile_ix = self.intern_profile(&spec.profile);
        let proto_ix = spec.profile.protocol.index();
        // A new per-device (Sparkplug) profile on an open MQTT sink: its sessions take it.
        if spec.profile.delivery.per_device
            && self.ctl.profiles.len() > known
            && let Some(sink) = &self.sinks[proto_ix]
            && !sink.add_per_device_profile(&self.plan.fleet)
        {
            let reason = "this runtime's MQTT sink has no per-device sessions (its fleet has no \
                          per-device or Sparkplug profile): spawn such a profile into a runtime \
                          whose fleet file has one"
                .to_string();
            self.ctl.retire.insert(profile_ix);
            acc.failed.push((spec.id, reason));
            return;
        }
        // A new pooled MQTT profile on a sink opened for per-device profiles only: the pooled
        // connections start now (or its messages would only queue).
        if spec.profile.protocol == profile::Protocol::Mqtt
            && !spec.profile.delivery.per_device
            && self.ctl.profiles.len() > known
            && let Some(sink) = &mut self.sinks[proto_ix]
            && let Err(e) = sink.add_pooled_profile(&self.plan.fleet)
        {
            self.ctl.retire.insert(profile_ix);
            acc.failed.push((spec.id, format!("cannot start the MQTT connections: {e}")));
            return;
        }
        if self.sinks[proto_ix].is_none() {
            let opened = Sink::open(
                spec.profile.protocol,
                &self.plan.sinks,
                self.plan.index,
                self.plan.shards,
                &self.plan.fleet,
            );
            // A sink opened now must also be started (its connection tasks spawned on this
            // shard's LocalSet), or its messages would only queue.
            let started = opened.map_err(|e| e.to_string()).and_then(|mut s| s.start().map(|()| s));
            match started {
                Ok(s) => self.sinks[proto_ix] = Some(s),
                Err(e) => {
                    let reason = format!("cannot open the {} sink: {e}", spec.profile.protocol);
                    acc.failed.push((spec.id, reason));
                    return;
                }
            }
        }
        if let Some(asked) = &spec.profile.requested_protocol {
            *self.ctl.fallback_devices.entry(asked.clone()).or_default() += 1;
            self.publish_fallback();
        }
        // A group index is reused only when no other command is under way: a scan caches
        // whether each group matches its selector.
        let reuse = self.ctl.work.is_empty();
        let gi = self.intern_group(profile_ix, spec.labels, reuse);
        let free = self.ctl.free_ids.get_mut(&(gi as u32)).and_then(Vec::pop);
        let ds = device_seed(self.plan.seed, &spec.id);
        let fleet = Arc::make_mut(&mut self.plan.fleet);
        let group = &mut fleet.groups[gi];
        // The id itself moves into the group at the end: the shard allocates nothing for it
        // (a clone per device grew the shard's heap during a large spawn, issue 25).
        let index = match free {
            Some(i) => i,
            None => {
                group.ids.push(String::new());
                group.ids.len() as u32 - 1
            }
        };
        group.count += 1;
        let key = self.table.insert(fleet, gi as u32, index, ds);
        let now = self.control_now();
        let interval = spec.profile.interval_ms;
        self.wheel.insert(key, now + seed::phase_ms(ds, interval).max(1));
        self.ctl.emit(
            &spec.id,
            &self.plan.fleet.groups[gi].labels,
            EventKind::Spawned,
            "device started".into(),
            now,
            vec![("device_type", spec.profile.device_type.clone())],
        );
        if let Some(tap) = &self.plan.excuses {
            let g = &self.plan.fleet.groups[gi];
            tap.spawned(crate::shard::tap::SpawnNote {
                id: spec.id.clone(),
                profile: spec.profile.clone(),
                labels: g.labels.clone(),
                labels_json: g.labels_json.clone(),
                at_ms: now,
            });
        }
        if let Some(ids) = &mut self.ctl.ids {
            ids.insert(&spec.id, key);
        }
        Arc::make_mut(&mut self.plan.fleet).groups[gi].ids[index as usize] = spec.id;
        acc.spawned += 1;
    }

    pub(super) fn intern_profile(&mut self, p: &Arc<Profile>) -> usize {
        let addr = Arc::as_ptr(p) as usize;
        if let Some(&ix) = self.ctl.profiles.get(&addr) {
            return ix;
        }
        let fleet = Arc::make_mut(&mut self.plan.fleet);
        // A freed index has empty statistics here and in every sink (`retire_profile`).
        let ix = match self.ctl.free_profiles.pop() {
            Some(ix) => {
                fleet.profiles[ix] = (**p).clone();
                ix
            }
            None => {
                fleet.profiles.push((**p).clone());
                self.stats.profiles.push(ProfileStats::new());
                for ph in &mut self.stats.phases {
                    ph.push(ProfileStats::new());
                }
                fleet.profiles.len() - 1
            }
        };
        // Network sinks record per profile too: make room for the new one.
        for sink in self.sinks.iter().flatten() {
            sink.forget_profile(ix);
            if let Some(net) = sink.net_shared() {
                let mut st = net.stats.borrow_mut();
                if st.len() <= ix {
                    st.resize_with(ix + 1, ProfileStats::new);
                }
            }
        }
        self.ctl.profiles.insert(addr, ix);
        self.ctl.kept.insert(ix, p.clone());
        ix
    }

    /// Frees the runtime profiles that no device uses any more and of which no network sink
    /// still holds a message (`NetShared::pending`); one that still has messages out is looked
    /// at again on the next turn. Only between commands: a command in progress may hold
    /// profile and group indices (a scan's `remap`, its group matches).
    pub(super) fn retire_profiles(&mut self) {
        if self.ctl.retire.is_empty() || !self.ctl.work.is_empty() {
            return;
        }
        // A failed file write is counted against its profile before the index can change.
        self.account_lost();
        let mut freed = false;
        for ix in std::mem::take(&mut self.ctl.retire) {
            if !self.ctl.kept.contains_key(&ix)
                || self.table.live_by_profile().get(ix).is_some_and(|&n| n > 0)
            {
                // A fleet-file profile, one already freed, or one with devices (it is
                // looked at again when one of them stops).
                continue;
            }
            let held =
                self.sinks.iter().flatten().filter_map(Sink::net_shared).any(|n| n.pending(ix) > 0);
            if held {
                self.ctl.retire.insert(ix);
            } else {
                self.retire_profile(ix);
                freed = true;
            }
        }
        if freed && self.table.is_empty() {
            // As in `release_memory`: the stop that emptied the shard trimmed before this.
            // SAFETY: malloc_trim only releases free heap memory; no pointer is invalidated.
            unsafe { libc::malloc_trim(0) };
        }
    }

    /// Folds profile `ix`'s statistics (the shard's, every network sink's, per phase too) and
    /// its groups' device counts into the retired entry of its report row
    /// (`ShardStats::retired`), then frees the profile (a husk keeps its slot until a new
    /// profile takes it) and its groups (reused by the next new group).
    pub(super) fn retire_profile(&mut self, ix: usize) {
        let Some(arc) = self.ctl.kept.remove(&ix) else { return };
        self.settle_service(Some(ix));
        self.ctl.profiles.remove(&(Arc::as_ptr(&arc) as usize));
        drop(arc);
        let fleet = Arc::make_mut(&mut self.plan.fleet);
        let p = &fleet.profiles[ix];
        let names: Vec<&str> = p.behaviour.events.iter().map(|e| e.name.as_str()).collect();
        let key = (p.protocol.name(), p.device_type.as_str(), p.requested_protocol.as_deref());
        let take = |st: &mut ProfileStats| std::mem::take(st);
        let mut folded = Retired::default();
        folded.total.fold(&take(&mut self.stats.profiles[ix]), &names);
        let nets: Vec<_> = self.sinks.iter().flatten().filter_map(Sink::net_shared).collect();
        for net in &nets {
            if let Some(st) = net.stats.borrow_mut().get_mut(ix) {
                folded.total.fold(&take(st), &names);
            }
        }
        let phases = nets.iter().map(|n| n.phase_stats.borrow().len()).max().unwrap_or(0);
        folded.phases.resize_with(self.stats.phases.len().max(phases), Default::default);
        for (ph, f) in folded.phases.iter_mut().enumerate() {
            if let Some(st) = self.stats.phases.get_mut(ph).and_then(|v| v.get_mut(ix)) {
                f.fold(&take(st), &names);
            }
            for net in &nets {
                let mut per = net.phase_stats.borrow_mut();
                if let Some(st) = per.get_mut(ph).and_then(|v| v.get_mut(ix)) {
                    f.fold(&take(st), &names);
                }
            }
        }
        // The report counts every device a row ever had (a stopped one too).
        for gi in 0..fleet.groups.len() {
            if fleet.groups[gi].profile != ix || self.ctl.free_groups.contains(&gi) {
                continue;
            }
            let g = &mut fleet.groups[gi];
            folded.devices += g.count;
            if let Some(by_labels) = self.ctl.groups.get_mut(&ix) {
                by_labels.remove(&std::mem::take(&mut g.labels));
                if by_labels.is_empty() {
                    self.ctl.groups.remove(&ix);
                }
            }
            g.count = 0;
            g.ids = vec![];
            g.labels_json = profile::labels_json(&g.labels);
            self.ctl.free_ids.remove(&(gi as u32));
            self.ctl.free_groups.insert(gi);
        }
        self.stats.retired_mut(key).merge(&folded);
        let husk = Profile::husk(p.protocol, &p.device_type, p.requested_protocol.clone(), &[]);
        fleet.profiles[ix] = husk;
        self.ctl.free_profiles.push(ix);
    }

    /// After a stop: the memory of what it stopped goes back, all of it when the shard is
    /// empty ([`Self::release_memory`]), else the freed tail of the device, generator-state and
    /// wheel arrays when it is large (`DeviceTable::trim_tail`).
    pub(super) fn after_stop(&mut self) {
        if self.table.is_empty() {
            self.release_memory();
        } else if let Some(keys) = self.table.trim_tail() {
            self.wheel.truncate_keys(keys);
            self.ctl.ids_cursor = self.ctl.ids_cursor.min(keys);
        }
    }

    /// Gives memory back once the last device of the shard has stopped: the device table and
    /// the id index start over, the freed id slots are released, and the allocator returns
    /// what it holds free to the system (glibc keeps freed memory otherwise: 30 "spawn 50,000,
    /// stop all" cycles left a runtime at 6x its idle size).
    pub(super) fn release_memory(&mut self) {
        self.reclaim_ids();
        self.table = DeviceTable::default();
        self.ctl.ids = None;
        self.ctl.ids_cursor = 0;
        self.ctl.ids_ready = false;
        // SAFETY: malloc_trim only releases free heap memory; no pointer is invalidated.
        unsafe { libc::malloc_trim(0) };
    }

    /// Frees the id text of stopped spawned devices and keeps their slots for the next spawn
    /// into the same group: `Group::ids` grew by every device ever spawned (measured: ~2 MiB
    /// per "spawn 50,000, stop all" cycle, never returned). Done between commands, when no
    /// clone of the fleet is held, so `Arc::make_mut` does not copy it.
    pub(super) fn reclaim_ids(&mut self) {
        if self.ctl.released.is_empty() {
            return;
        }
        let fleet = Arc::make_mut(&mut self.plan.fleet);
        for (gi, index) in self.ctl.released.drain(..) {
            // Fleet-file groups derive their ids and have no slots.
            if let Some(slot) = fleet.groups[gi as usize].ids.get_mut(index as usize) {
                *slot = String::new();
                self.ctl.free_ids.entry(gi).or_default().push(index);
            }
        }
    }

    pub(super) fn intern_group(
        &mut self,
        profile_ix: usize,
        labels: BTreeMap<String, String>,
        reuse: bool,
    ) -> usize {
        if let Some(&gi) = self.ctl.groups.get(&profile_ix).and_then(|by| by.get(&labels)) {
            return gi;
        }
        let fleet = Arc::make_mut(&mut self.plan.fleet);
        let group = Group {
            profile: profile_ix,
            count: 0,
            first_ordinal: 0,
            labels_json: profile::labels_json(&labels),
            labels: labels.clone(),
            ids: vec![],
        };
        let free = if reuse { self.ctl.free_groups.pop_first() } else { None };
        let gi = match free {
            Some(gi) => {
                fleet.groups[gi] = group;
                self.ctl.streams.forget_group(gi);
                gi
            }
            None => {
                fleet.groups.push(group);
                fleet.groups.len() - 1
            }
        };
        self.ctl.groups.entry(profile_ix).or_default().insert(labels, gi);
        gi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two ids whose 32-bit index hashes are the same (found by trying).
    fn colliding() -> (String, String) {
        let mut seen: HashMap<u32, String> = HashMap::new();
        for i in 0.. {
            let id = format!("device-{i}");
            if let Some(other) = seen.insert(IdIndex::hash(&id), id.clone()) {
                return (other, id);
            }
        }
        unreachable!()
    }

    #[test]
    fn due_order_is_by_first_tick_then_position_and_an_id_met_again_comes_last() {
        let mut ids: Vec<(String, u64)> = (0..300).map(|i| (format!("d-{i}"), 1_000)).collect();
        // An id first met at position 10 (with another interval) and again at 201, and one met
        // again at the end ...
        ids.insert(10, ("d-200".into(), 7_000));
        ids.push(("d-3".into(), 1_000));
        let order = due_order(9, ids.iter().map(|(id, iv)| (id.as_str(), *iv)));
        assert_eq!(order.len(), ids.len());
        let mut seen = order.clone();
        seen.sort_unstable();
        assert!(seen.iter().copied().eq(0..ids.len() as u32), "a permutation");
        // ... : the repeats come after every first one, in their own order.
        assert_eq!(order[order.len() - 2..], [201, ids.len() as u32 - 1]);
        let key = |i: u32| {
            let (id, iv) = &ids[i as usize];
            (seed::phase_ms(device_seed(9, id), *iv), i)
        };
        let firsts = &order[..order.len() - 2];
        assert!(firsts.windows(2).all(|w| key(w[0]) < key(w[1])));
        // The request's own order is not the due order (so the check above can fail).
        assert!(!(0..200u32).map(key).is_sorted());
    }

    #[test]
    fn in_due_order_keeps_every_spec_and_its_fields() {
        let fleet = "[[fleet]]\nprofile = \"s\"\ncount = 1\n[profiles.s]\nprotocol = \"null\"\n\
                     interval = \"2s\"\nfields.t = { type = \"static\", value = 1 }\n";
        let config = crate::config::parse_str(fleet, std::path::Path::new(".")).expect("fleet");
        let p = Arc::new(config.fleet.profiles[0].clone());
        let spec = |id: &str, zone: &str| SpawnSpec {
            id: id.to_string(),
            profile: p.clone(),
            labels: [("zone".to_string(), zone.to_string())].into(),
            source: None,
        };
        let specs: Vec<SpawnSpec> =
            (0..50).map(|i| spec(&format!("x-{i}"), &i.to_string())).collect();
        let out = in_due_order(3, specs);
        assert_eq!(out.len(), 50);
        // Each id keeps its labels, and the order is the due order.
        assert!(out.iter().all(|s| s.id[2..] == s.labels["zone"]));
        let phases: Vec<u64> =
            out.iter().map(|s| seed::phase_ms(device_seed(3, &s.id), 2_000)).collect();
        assert!(phases.is_sorted());
    }

    #[test]
    fn ids_with_the_same_hash_are_told_apart_by_their_key() {
        let (a, b) = colliding();
        assert_ne!(a, b);
        // Key -> id, as the shard's table answers it.
        let mut table: HashMap<u32, String> = HashMap::new();
        let mut ix = IdIndex::default();
        for (key, id) in [(1, &a), (2, &b), (3, &"plain".to_string())] {
            table.insert(key, id.clone());
            ix.insert(id, key);
            ix.insert(id, key);
        }
        assert_eq!(ix.len(), 3);
        let get = |ix: &IdIndex, t: &HashMap<u32, String>, id: &str| {
            ix.get(id, |k| t.get(&k).is_some_and(|s| s == id))
        };
        assert_eq!(get(&ix, &table, &a), Some(1));
        assert_eq!(get(&ix, &table, &b), Some(2));
        assert_eq!(get(&ix, &table, "plain"), Some(3));
        assert_eq!(get(&ix, &table, "absent"), None);
        // The first of the two leaves: the second is still found, then moves.
        ix.remove(&a, 1);
        table.remove(&1);
        assert_eq!(get(&ix, &table, &a), None);
        assert_eq!(get(&ix, &table, &b), Some(2));
        ix.rekey(&b, 2, 7);
        table.insert(7, table[&2].clone());
        table.remove(&2);
        assert_eq!(get(&ix, &table, &b), Some(7));
        ix.remove(&b, 7);
        ix.remove("plain", 3);
        assert_eq!(ix.len(), 0);
    }
}
