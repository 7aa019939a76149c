//! Devices as plain structs in a slab, with their generator state in a flat arena.
//!
//! A device costs `size_of::<Device>()` (24 B) + 24 B per slot of its profile (random streams,
//! and the state of on_change, events, availability and sleep where the profile uses them) + the
//! wheel's 16 B; its id is not stored but rebuilt from (group, ordinal) when needed.

use super::generator::{GenSpec, Sample, SlotState, round_to};
use super::profile::Fleet;
use super::seed;
use super::time::SimMs;
use std::collections::BTreeMap;

/// One simulated device.
#[derive(Clone, Debug)]
pub struct Device {
    /// Index of its fleet group; `u32::MAX` marks a free slab entry.
    pub group: u32,
    /// Index within the group.
    pub index: u32,
    /// First arena slot of its generator state.
    pub slots_at: u32,
    /// Current interval (may differ from the profile's under backpressure or live updates).
    pub interval_ms: u32,
    /// Messages produced so far.
    pub seq: u64,
}

const FREE: u32 = u32::MAX;

/// The devices of one shard.
#[derive(Default)]
pub struct DeviceTable {
    devices: Vec<Device>,
    free: Vec<u32>,
    slots: Vec<SlotState>,
    /// Freed slot blocks by size, reused by later spawns.
    free_blocks: BTreeMap<usize, Vec<u32>>,
    live: usize,
    /// Live devices per profile (indexed like `Fleet::profiles`), for metrics.
    live_by_profile: Vec<u64>,
}

impl DeviceTable {
    /// Live devices.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Live devices per profile (indexed like `Fleet::profiles`; shorter when the last
    /// profiles have none).
    pub fn live_by_profile(&self) -> &[u64] {
        &self.live_by_profile
    }

    /// True when the shard has no device.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Reserves room for `devices` more devices with `slots` slots in all.
    pub fn reserve(&mut self, devices: usize, slots: usize) {
        self.devices.reserve(devices);
        self.slots.reserve(slots);
        super::mem::advise_huge_pages(&self.devices);
        super::mem::advise_huge_pages(&self.slots);
    }

    /// Capacity in keys (for the wheel).
    pub fn key_capacity(&self) -> usize {
        self.devices.len()
    }

    /// Adds a device and seeds its generators; returns its key.
    pub fn insert(&mut self, fleet: &Fleet, group: u32, index: u32, device_seed: u64) -> u32 {
        let g = &fleet.groups[group as usize];
        let profile = &fleet.profiles[g.profile];
        let block = profile.slots;
        let slots_at = match self.free_blocks.get_mut(&block).and_then(Vec::pop) {
            Some(at) => {
                let mut fresh = Vec::with_capacity(block);
                init_fields(fleet, g.profile, device_seed, &mut fresh);
                self.slots[at as usize..at as usize + block].clone_from_slice(&fresh);
                at
            }
            None => {
                let at = self.slots.len() as u32;
                init_fields(fleet, g.profile, device_seed, &mut self.slots);
                at
            }
        };
        let device =
            Device { group, index, slots_at, interval_ms: profile.interval_ms as u32, seq: 0 };
        self.live += 1;
        if self.live_by_profile.len() <= g.profile {
            self.live_by_profile.resize(g.profile + 1, 0);
        }
        self.live_by_profile[g.profile] += 1;
        match self.free.pop() {
            Some(key) => {
                self.devices[key as usize] = device;
                key
            }
            None => {
                self.devices.push(device);
                (self.devices.len() - 1) as u32
            }
        }
    }

    /// Removes a device; its key and slots are reused later.
    pub fn remove(&mut self, fleet: &Fleet, key: u32) -> Option<Device> {
        let d = self.devices.get_mut(key as usize)?;
        if d.group == FREE {
            return None;
        }
        let removed = d.clone();
        d.group = FREE;
        let profile = fleet.groups[removed.group as usize].profile;
        let block = fleet.profiles[profile].slots;
        if let Some(n) = self.live_by_profile.get_mut(profile) {
            *n -= 1;
        }
        if block > 0 {
            self.free_blocks.entry(block).or_default().push(removed.slots_at);
        }
        self.free.push(key);
        self.live -= 1;
        Some(removed)
    }

    /// A live device.
    pub fn get(&self, key: u32) -> Option<&Device> {
        self.devices.get(key as usize).filter(|d| d.group != FREE)
    }

    /// Live devices with their keys, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Device)> {
        self.devices.iter().enumerate().filter(|(_, d)| d.group != FREE).map(|(k, d)| (k as u32, d))
    }

    /// Generates the next value of every field of device `key` for the tick scheduled at `t`
    /// into `out`, and advances its sequence number. Returns the sequence number of this
    /// message and how many derived fields came out NaN or infinite (published as `null`).
    ///
    /// Order: the plain fields (rounded to their decimals), then the correlated groups, then
    /// the derived fields in dependency order, so an expression reads the values as published.
    pub fn generate(
        &mut self,
        fleet: &Fleet,
        key: u32,
        t: SimMs,
        out: &mut Vec<Sample>,
    ) -> (u64, u32) {
        let d = &mut self.devices[key as usize];
        let profile = &fleet.profiles[fleet.groups[d.group as usize].profile];
        let dt_s = d.interval_ms as f64 / 1000.0;
        let base = d.slots_at as usize;
        out.clear();
        for f in &profile.fields {
            let n = f.generator.slots();
            let at = base + f.first_slot;
            let mut s = f.generator.next(&mut self.slots[at..at + n], t, dt_s);
            if let (Some(dec), Sample::Number(v)) = (f.decimals, s) {
                s = Sample::Number(round_to(v, dec));
            }
            out.push(s);
        }
        for g in &profile.correlated {
            g.draw(&mut self.slots[base + g.slot], out);
        }
        let mut nonfinite = 0;
        for &i in &profile.derived {
            let f = &profile.fields[i];
            if let GenSpec::Derived(e) = &f.generator {
                let slot =
                    if e.uses_noise { self.slots.get_mut(base + f.first_slot) } else { None };
                let mut v = e.eval(out, slot);
                if !v.is_finite() {
                    nonfinite += 1;
                } else if let Some(dec) = f.decimals {
                    v = round_to(v, dec);
                }
                out[i] = Sample::Number(v);
            }
        }
        let seq = d.seq;
        d.seq += 1;
        (seq, nonfinite)
    }

    /// Advances device `key`'s sequence number without generating (a replay device's
    /// values come from its trace); returns the number of this message.
    pub fn next_seq(&mut self, key: u32) -> u64 {
        let d = &mut self.devices[key as usize];
        let seq = d.seq;
        d.seq += 1;
        seq
    }

    /// The values of event `event`'s fields at sim time `t` into `out`.
    pub fn generate_event(
        &mut self,
        fleet: &Fleet,
        key: u32,
        event: usize,
        t: SimMs,
        out: &mut Vec<Sample>,
    ) {
        let d = &self.devices[key as usize];
        let profile = &fleet.profiles[fleet.groups[d.group as usize].profile];
        let dt_s = d.interval_ms as f64 / 1000.0;
        let b = &profile.behaviour;
        let base = d.slots_at as usize + b.event_at[event] + 1;
        out.clear();
        for f in &b.events[event].fields {
            let n = f.generator.slots();
            let at = base + f.first_slot;
            let mut s = f.generator.next(&mut self.slots[at..at + n], t, dt_s);
            if let (Some(dec), Sample::Number(v)) = (f.decimals, s) {
                s = Sample::Number(round_to(v, dec));
            }
            out.push(s);
        }
    }

    /// The slot block of a live device and its profile index (for the behaviour's state).
    pub fn block_mut(&mut self, fleet: &Fleet, key: u32) -> Option<&mut [SlotState]> {
        let d = self.devices.get(key as usize).filter(|d| d.group != FREE)?;
        let n = fleet.profiles[fleet.groups[d.group as usize].profile].slots;
        let at = d.slots_at as usize;
        self.slots.get_mut(at..at + n)
    }

    /// Hints the CPU to load a device's struct (stage 1 of a two-stage prefetch: no load of
    /// the device itself, so it never stalls).
    #[inline]
    pub fn prefetch_device(&self, key: u32) {
        #[cfg(target_arch = "x86_64")]
        if (key as usize) < self.devices.len() {
            // SAFETY: the pointer is inside the slab; prefetching dereferences nothing.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    self.devices.as_ptr().add(key as usize).cast(),
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = key;
    }

    /// Hints the CPU to load a device's generator state (stage 2: reads the device, which
    /// stage 1 brought into cache a few iterations earlier).
    #[inline]
    pub fn prefetch_state(&self, key: u32) {
        #[cfg(target_arch = "x86_64")]
        if let Some(d) = self.devices.get(key as usize) {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            if let Some(s) = self.slots.get(d.slots_at as usize) {
                let p = (s as *const SlotState).cast::<i8>();
                // SAFETY: prefetching is a hint; nothing is dereferenced. A block of up to three
                // slots spans at most three cache lines.
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(p);
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(119));
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = key;
    }

    /// The generator state of a live device (`slots` = its profile's slot count).
    pub fn slots_mut(&mut self, key: u32, slots: usize) -> Option<&mut [SlotState]> {
        let at = self.get(key)?.slots_at as usize;
        self.slots.get_mut(at..at + slots)
    }

    /// Mutable access to a live device.
    pub fn get_mut(&mut self, key: u32) -> Option<&mut Device> {
        self.devices.get_mut(key as usize).filter(|d| d.group != FREE)
    }

    /// After a stop: drops the free keys at the end of the table and the free slot blocks at
    /// the end of the arena, and gives their memory back, when at least [`TRIM_MIN_KEYS`] keys
    /// at the end are free (a spawn appends its devices, so stopping what it spawned frees the
    /// tail: without this, the 100,000 devices of a spawn-and-stop stayed resident, ~110 B
    /// each, issue 25). Smaller tails are left for the next spawn to reuse. Returns the new
    /// key count when the table shrank (the wheel drops its nodes past it).
    pub fn trim_tail(&mut self) -> Option<usize> {
        let mut keys = self.devices.len();
        while keys > 0 && self.devices[keys - 1].group == FREE {
            keys -= 1;
        }
        if self.devices.len() - keys < TRIM_MIN_KEYS {
            return None;
        }
        self.devices.truncate(keys);
        self.free.retain(|&k| (k as usize) < keys);
        super::mem::shrink(&mut self.devices);
        super::mem::shrink(&mut self.free);
        // The free slot units, as a bitmap: the arena's free tail is the run of set bits at
        // its end (a live block's units are clear, so the run ends on a block boundary).
        let len = self.slots.len();
        let mut bits = vec![0u64; len.div_ceil(64)];
        for (&size, starts) in &self.free_blocks {
            for &at in starts {
                for u in at as usize..(at as usize + size).min(len) {
                    bits[u / 64] |= 1 << (u % 64);
                }
            }
        }
        let mut units = len;
        while units > 0 && bits[(units - 1) / 64] & (1 << ((units - 1) % 64)) != 0 {
            units -= 1;
        }
        if units < len {
            self.slots.truncate(units);
            for starts in self.free_blocks.values_mut() {
                starts.retain(|&at| (at as usize) < units);
            }
            self.free_blocks.retain(|_, starts| !starts.is_empty());
            super::mem::shrink(&mut self.slots);
        }
        Some(keys)
    }
}

/// Fewest free keys at the end of a table that [`DeviceTable::trim_tail`] gives back.
pub const TRIM_MIN_KEYS: usize = 4096;

/// The seed of a device.
pub fn device_seed(master: u64, device_id: &str) -> u64 {
    seed::derive(master, device_id)
}

/// A device's slot block: its fields' streams, one per correlated group, then the behaviour's
/// (events, availability, sleep, on_change; `sim/behaviour.rs`).
fn init_fields(fleet: &Fleet, profile: usize, device_seed: u64, out: &mut Vec<SlotState>) {
    let p = &fleet.profiles[profile];
    for f in &p.fields {
        f.generator.init_slots(seed::derive(device_seed, &f.name), 0, out);
    }
    let mut name = String::new();
    for g in &p.correlated {
        name.clear();
        name.push_str("~correlated:");
        name.push_str(&g.name);
        GenSpec::Gaussian { mean: 0.0, stddev: 1.0 }.init_slots(
            seed::derive(device_seed, &name),
            0,
            out,
        );
    }
    p.behaviour.init_slots(device_seed, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two profiles of different slot counts (1 and 3 fields), one group each.
    fn fleet() -> Fleet {
        let toml = r#"
[[fleet]]
profile = "one"
count = 1
[[fleet]]
profile = "three"
count = 1
[profiles.one]
protocol = "null"
interval = "1s"
fields.a = { type = "gaussian", mean = 1, stddev = 1 }
[profiles.three]
protocol = "null"
interval = "1s"
fields.a = { type = "gaussian", mean = 1, stddev = 1 }
fields.b = { type = "brownian", start = 5, volatility = 1, mean_reversion = 0.1 }
fields.c = { type = "gaussian", mean = 9, stddev = 2 }
"#;
        crate::config::parse_str(toml, std::path::Path::new(".")).unwrap().fleet
    }

    /// Every live device's next samples, by key.
    fn next_values(t: &mut DeviceTable, fleet: &Fleet) -> Vec<(u32, Vec<f64>)> {
        let keys: Vec<u32> = t.iter().map(|(k, _)| k).collect();
        let mut out = vec![];
        keys.into_iter()
            .map(|k| {
                t.generate(fleet, k, 1000, &mut out);
                let v = out.iter().map(|s| if let Sample::Number(x) = s { *x } else { 0.0 });
                (k, v.collect())
            })
            .collect()
    }

    #[test]
    fn a_freed_tail_is_dropped_and_the_rest_keeps_its_state() {
        let f = fleet();
        let (mut trimmed, mut kept) = (DeviceTable::default(), DeviceTable::default());
        let n = 3 * TRIM_MIN_KEYS as u32;
        for t in [&mut trimmed, &mut kept] {
            for i in 0..n {
                t.insert(&f, i % 2, i, 1000 + i as u64);
            }
            // Holes in the middle stay free for reuse; the last two thirds go.
            for k in (0..n / 3 - 1).step_by(7).chain(n / 3..n) {
                t.remove(&f, k);
            }
        }
        let slots_before = trimmed.slots.len();
        assert_eq!(trimmed.trim_tail(), Some(n as usize / 3));
        assert_eq!(trimmed.key_capacity(), n as usize / 3);
        assert!(trimmed.slots.len() < slots_before / 2, "{}", trimmed.slots.len());
        assert!(trimmed.free.iter().all(|&k| k < n / 3));
        assert!(
            trimmed.free_blocks.values().flatten().all(|&at| (at as usize) < trimmed.slots.len())
        );
        assert_eq!(trimmed.len(), kept.len());
        assert_eq!(next_values(&mut trimmed, &f), next_values(&mut kept, &f));
        // The next devices reuse the holes first, then grow the table again, alike in both.
        for t in [&mut trimmed, &mut kept] {
            for i in 0..2 * TRIM_MIN_KEYS as u32 {
                t.insert(&f, i % 2, n + i, 7 + i as u64);
            }
        }
        let (a, b) = (next_values(&mut trimmed, &f), next_values(&mut kept, &f));
        assert_eq!(a.len(), b.len());
        let sorted = |mut v: Vec<(u32, Vec<f64>)>| {
            v.iter_mut().for_each(|e| e.0 = 0);
            v.sort_by(|x, y| x.1.partial_cmp(&y.1).unwrap());
            v
        };
        assert_eq!(sorted(a), sorted(b), "the same devices, the same values (keys may differ)");
    }

    #[test]
    fn a_small_or_busy_tail_is_left_alone() {
        let f = fleet();
        let mut t = DeviceTable::default();
        let n = 2 * TRIM_MIN_KEYS as u32;
        for i in 0..n {
            t.insert(&f, 1, i, i as u64);
        }
        // Fewer than TRIM_MIN_KEYS free at the end.
        for k in n - 10..n {
            t.remove(&f, k);
        }
        assert_eq!(t.trim_tail(), None);
        // Many free, but the last key lives.
        for k in TRIM_MIN_KEYS as u32..n - 11 {
            t.remove(&f, k);
        }
        assert_eq!(t.trim_tail(), None);
        assert_eq!(t.key_capacity(), n as usize);
        t.remove(&f, n - 11);
        assert_eq!(t.trim_tail(), Some(TRIM_MIN_KEYS));
        assert_eq!(t.slots.len(), 3 * TRIM_MIN_KEYS);
    }

    #[test]
    fn a_device_is_small() {
        assert!(std::mem::size_of::<super::Device>() <= 24);
        assert_eq!(std::mem::size_of::<super::SlotState>(), 24);
    }
}
