//! The per-device state that control commands leave behind, and what it does to a tick: active
//! faults, pauses and latency-spike deferrals. Pure data and functions of (state, key, sim
//! time): no clock, no channel, no sink. The shard asks [`DeviceStates::gate`] before a tick
//! and [`DeviceStates::effects`] after generating a message; the command executor
//! (`inbox.rs`) changes the state.

use crate::sim::fault::{
    ActiveFault, CorruptionMode, FaultKind, FaultSpec, corrupt_value, corruption_draw, drained,
    drift_ms,
};
use crate::sim::generator::Sample;
use crate::sim::profile::Profile;
use crate::sim::time::SimMs;
use std::collections::{HashMap, HashSet};

/// What to do with a device that the wheel says is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Tick it now, for a message intended at this sim time (earlier than the wheel's time when
    /// a latency spike delayed it).
    Tick { intended: SimMs },
    /// Do not tick now; re-arm it at this sim time (paused, or delayed by a latency spike).
    Rearm { at: SimMs },
}

/// What the active faults do to one generated message.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Effects {
    /// False under DISCONNECT.
    pub publish: bool,
    /// The timestamp to publish (moved by CLOCK_DRIFT).
    pub timestamp: SimMs,
    /// Set when DATA_CORRUPTION in `bytes` mode hits this message.
    pub corrupt_bytes: Option<u64>,
    /// Set when a fault changed field values (DATA_CORRUPTION `nan`/`zero`/`spike`,
    /// BATTERY_DRAIN on a battery field).
    pub values_changed: bool,
}

/// Faults, pauses and deferrals of one shard's devices, by device key.
#[derive(Default)]
pub(crate) struct DeviceStates {
    /// Active faults per device, in injection order.
    faults: HashMap<u32, Vec<ActiveFault>>,
    faults_active: u64,
    /// Active faults and faults injected so far, by `FaultType` number - 1 (for `/metrics`).
    active_by_type: [u64; 5],
    injected_by_type: [u64; 5],
    paused: HashSet<u32>,
    /// Devices whose publish is being delayed by a latency spike: key -> intended time.
    deferred: HashMap<u32, SimMs>,
    /// Messages not published because of DISCONNECT.
    suppressed: u64,
    /// One bit per device key: set while the device may have a fault, pause or deferral. A
    /// tick looks at this dense bitmap first, so the devices without state (most of them,
    /// while a fault covers 100,000 of a million) skip the hash lookups.
    marked: Vec<u64>,
}

/// Index of a fault kind in the per-type arrays.
fn type_index(k: &FaultKind) -> usize {
    (k.type_number() - 1) as usize
}

impl DeviceStates {
    /// True when no device has any state (the tick's fast path).
    #[inline]
    pub fn is_quiet(&self) -> bool {
        self.paused.is_empty() && self.deferred.is_empty() && self.faults.is_empty()
    }

    pub fn faults_active(&self) -> u64 {
        self.faults_active
    }

    /// Active faults by `FaultType` number - 1.
    pub fn active_by_type(&self) -> [u64; 5] {
        self.active_by_type
    }

    /// Faults injected since the start, by `FaultType` number - 1.
    pub fn injected_by_type(&self) -> [u64; 5] {
        self.injected_by_type
    }

    fn ended(&mut self, kinds: impl IntoIterator<Item = FaultKind>) {
        for k in kinds {
            self.faults_active -= 1;
            self.active_by_type[type_index(&k)] -= 1;
        }
    }

    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// The device's active faults (kinds), in injection order.
    pub fn faults_of(&self, key: u32) -> Vec<FaultKind> {
        self.faults.get(&key).map(|l| l.iter().map(|f| f.kind).collect()).unwrap_or_default()
    }

    /// Paused devices.
    pub fn paused_count(&self) -> u64 {
        self.paused.len() as u64
    }

    pub fn is_paused(&self, key: u32) -> bool {
        self.paused.contains(&key)
    }

    #[inline]
    fn is_marked(&self, key: u32) -> bool {
        self.marked.get(key as usize / 64).is_some_and(|w| w & (1 << (key % 64)) != 0)
    }

    fn mark(&mut self, key: u32) {
        let w = key as usize / 64;
        if self.marked.len() <= w {
            self.marked.resize(w + 1, 0);
        }
        self.marked[w] |= 1 << (key % 64);
    }

    /// Clears the device's bit once it has no state left.
    fn unmark_if_clean(&mut self, key: u32) {
        if !self.faults.contains_key(&key)
            && !self.paused.contains(&key)
            && !self.deferred.contains_key(&key)
            && let Some(w) = self.marked.get_mut(key as usize / 64)
        {
            *w &= !(1 << (key % 64));
        }
        self.release_empty();
    }

    /// Gives back the room of a map that emptied: a fault on a million devices sizes the fault
    /// map for all of them at once (~32 MiB a shard), which stayed after ClearFaults (issue 25).
    fn release_empty(&mut self) {
        const KEEP: usize = 1024;
        if self.faults.is_empty() && self.faults.capacity() > KEEP {
            self.faults = HashMap::new();
        }
        if self.paused.is_empty() && self.paused.capacity() > KEEP {
            self.paused = HashSet::new();
        }
        if self.deferred.is_empty() && self.deferred.capacity() > KEEP {
            self.deferred = HashMap::new();
        }
    }

    /// Before a tick of device `key` due at `due` (its interval `interval_ms`): a paused device
    /// skips this tick; a device under a latency spike publishes later, with its original
    /// intended time.
    pub fn gate(&mut self, key: u32, due: SimMs, interval_ms: u64) -> Gate {
        if self.is_quiet() || !self.is_marked(key) {
            return Gate::Tick { intended: due };
        }
        if let Some(t0) = self.deferred.remove(&key) {
            // The delayed publish of the message intended at t0 (the device stays marked:
            // `effects` runs next and clears the bit if nothing is left).
            return Gate::Tick { intended: t0 };
        }
        if self.paused.contains(&key) {
            return Gate::Rearm { at: due + interval_ms };
        }
        if let Some(list) = self.faults.get(&key) {
            let live = || list.iter().filter(|f| f.started_ms <= due && !f.expired(due));
            let disconnected = live().any(|f| f.kind == FaultKind::Disconnect);
            let spike: u64 = live()
                .filter_map(|f| match f.kind {
                    FaultKind::LatencySpike { latency_ms } => Some(latency_ms),
                    _ => None,
                })
                .sum();
            if spike > 0 && !disconnected {
                self.deferred.insert(key, due);
                return Gate::Rearm { at: due + spike };
            }
        }
        Gate::Tick { intended: due }
    }

    /// Applies the device's active faults to a message generated for sim time `due`
    /// (`samples`, message number `seq`; `device_seed` is asked only when DATA_CORRUPTION needs it), expiring those whose time is up; returns what the
    /// faults do and the kinds that expired (for FAULT_CLEARED events). A fault applies to
    /// messages intended from its injection on: a device ticked late for an earlier time is
    /// not affected.
    pub fn effects(
        &mut self,
        key: u32,
        due: SimMs,
        seq: u64,
        device_seed: impl Fn() -> u64,
        profile: &Profile,
        samples: &mut [Sample],
    ) -> (Effects, Vec<FaultKind>) {
        let mut fx =
            Effects { publish: true, timestamp: due, corrupt_bytes: None, values_changed: false };
        let mut expired = vec![];
        if self.faults.is_empty() || !self.is_marked(key) {
            return (fx, expired);
        }
        let Some(list) = self.faults.get_mut(&key) else {
            self.unmark_if_clean(key);
            return (fx, expired);
        };
        list.retain(|f| {
            let keep = !f.expired(due);
            if !keep {
                expired.push(f.kind);
            }
            keep
        });
        for f in list.iter().filter(|f| f.started_ms <= due) {
            match f.kind {
                FaultKind::Disconnect => fx.publish = false,
                FaultKind::LatencySpike { .. } => {}
                FaultKind::DataCorruption { rate, mode } => {
                    let (u, word) = corruption_draw(device_seed(), seq);
                    if u < rate {
                        if mode == CorruptionMode::Bytes {
                            fx.corrupt_bytes = Some(word);
                        } else {
                            fx.values_changed = true;
                            for s in samples.iter_mut() {
                                if let Sample::Number(v) = s {
                                    *v = corrupt_value(mode, *v);
                                }
                            }
                        }
                    }
                }
                FaultKind::BatteryDrain { multiplier } => {
                    for (s, field) in samples.iter_mut().zip(&profile.fields) {
                        if let (true, Sample::Number(v)) = (field.battery, &mut *s) {
                            fx.values_changed = true;
                            *v = drained(*v, multiplier, f.started_ms, due);
                        }
                    }
                }
                FaultKind::ClockDrift { rate_ms_per_s } => {
                    let off = drift_ms(rate_ms_per_s, f.started_ms, due);
                    fx.timestamp = fx.timestamp.saturating_add_signed(off);
                }
            }
        }
        if list.is_empty() {
            self.faults.remove(&key);
            self.unmark_if_clean(key);
        }
        self.ended(expired.iter().copied());
        if !fx.publish {
            self.suppressed += 1;
        }
        (fx, expired)
    }

    /// Takes back the count of one message [`DeviceStates::effects`] called suppressed that
    /// was published after all (a per-device MQTT session queues it instead).
    pub fn unsuppress(&mut self) {
        self.suppressed = self.suppressed.saturating_sub(1);
    }

    /// Adds a fault to device `key` from sim time `now` on. A fault of a type the device
    /// already has replaces it (new parameters, duration counted from now): faults do not
    /// stack, so a device holds at most one fault per type. `devices` sizes the map for every
    /// device at once on first use: growing it by doubling under a million-device injection
    /// rehashes it all in single steps of ~30 ms.
    pub fn inject(&mut self, key: u32, spec: &FaultSpec, now: SimMs, devices: usize) {
        if self.faults.len() == self.faults.capacity() {
            self.faults.reserve(devices);
        }
        self.mark(key);
        let fault = ActiveFault { kind: spec.kind, started_ms: now, duration_ms: spec.duration_ms };
        let list = self.faults.entry(key).or_default();
        let ty = spec.kind.type_number();
        // A second fault of a type replaces the first (its parameters and window restart).
        match list.iter_mut().find(|f| f.kind.type_number() == ty) {
            Some(old) => *old = fault,
            None => {
                list.push(fault);
                self.faults_active += 1;
                self.active_by_type[type_index(&spec.kind)] += 1;
            }
        }
        self.injected_by_type[type_index(&spec.kind)] += 1;
    }

    /// Clears the device's faults of one `FaultType` number, or all; returns the cleared kinds.
    pub fn clear(&mut self, key: u32, type_number: Option<i32>) -> Vec<FaultKind> {
        let mut cleared = vec![];
        if let Some(list) = self.faults.get_mut(&key) {
            list.retain(|f| {
                let hit = type_number.is_none_or(|k| f.kind.type_number() == k);
                if hit {
                    cleared.push(f.kind);
                }
                !hit
            });
            if list.is_empty() {
                self.faults.remove(&key);
                self.unmark_if_clean(key);
            }
        }
        self.ended(cleared.iter().copied());
        cleared
    }

    /// Pauses (true) or resumes (false) a device; true if that changed its state.
    pub fn set_paused(&mut self, key: u32, pause: bool, devices: usize) -> bool {
        if pause {
            if self.paused.len() == self.paused.capacity() {
                self.paused.reserve(devices);
            }
            self.mark(key);
            self.paused.insert(key)
        } else {
            let changed = self.paused.remove(&key);
            self.unmark_if_clean(key);
            changed
        }
    }

    /// Forgets everything about a device that is stopped.
    pub fn forget(&mut self, key: u32) {
        if let Some(faults) = self.faults.remove(&key) {
            self.ended(faults.iter().map(|f| f.kind));
        }
        self.paused.remove(&key);
        self.deferred.remove(&key);
        self.unmark_if_clean(key);
    }

    /// Moves a device's state to a new key (its behaviour changed and it was re-inserted).
    pub fn rekey(&mut self, old: u32, new: u32) {
        if old == new {
            return;
        }
        if let Some(v) = self.faults.remove(&old) {
            self.faults.insert(new, v);
        }
        if self.paused.remove(&old) {
            self.paused.insert(new);
        }
        if let Some(v) = self.deferred.remove(&old) {
            self.deferred.insert(new, v);
        }
        if self.is_marked(old) {
            self.mark(new);
            self.unmark_if_clean(old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: FaultKind, duration_ms: u64) -> FaultSpec {
        FaultSpec { kind, duration_ms, disconnect: Default::default() }
    }

    fn profile() -> Profile {
        let mut p = Profile::for_tests("p");
        p.interval_ms = 1000;
        p
    }

    #[test]
    fn only_devices_with_state_are_marked_and_a_device_left_clean_is_unmarked() {
        let mut st = DeviceStates::default();
        st.inject(7, &spec(FaultKind::Disconnect, 0), 0, 100);
        st.set_paused(70, true, 100);
        assert!(st.is_marked(7) && st.is_marked(70) && !st.is_marked(8));
        // A device without state ticks as usual even while others have faults.
        assert_eq!(st.gate(8, 5, 1000), Gate::Tick { intended: 5 });
        assert_eq!(st.gate(70, 5, 1000), Gate::Rearm { at: 1005 });
        st.clear(7, None);
        assert!(!st.is_marked(7));
        st.set_paused(70, false, 100);
        assert!(!st.is_marked(70));
        // Moving a device keeps its mark with it.
        st.inject(3, &spec(FaultKind::Disconnect, 0), 0, 100);
        st.rekey(3, 300);
        assert!(!st.is_marked(3) && st.is_marked(300));
        st.forget(300);
        assert!(!st.is_marked(300));
    }

    #[test]
    fn maps_sized_for_a_whole_fleet_give_their_room_back_once_empty() {
        let mut st = DeviceStates::default();
        let n = 100_000u32;
        for k in 0..n {
            st.inject(k, &spec(FaultKind::Disconnect, 0), 0, n as usize);
            st.set_paused(k, true, n as usize);
        }
        assert!(st.faults.capacity() >= n as usize && st.paused.capacity() >= n as usize);
        for k in 0..n - 1 {
            st.clear(k, None);
            st.set_paused(k, false, n as usize);
        }
        // One device left: the room stays (the fault may be cleared next; a removal leaves a
        // tombstone, which `capacity` does not count).
        assert!(st.faults.capacity() > 1024 && st.paused.capacity() > 1024);
        st.forget(n - 1);
        assert_eq!((st.faults.capacity(), st.paused.capacity()), (0, 0));
        assert!(st.is_quiet());
    }

    #[test]
    fn a_quiet_shard_ticks_every_device_at_its_due_time() {
        let mut s = DeviceStates::default();
        assert!(s.is_quiet());
        assert_eq!(s.gate(3, 5_000, 1000), Gate::Tick { intended: 5_000 });
    }

    #[test]
    fn a_paused_device_skips_its_ticks_until_resumed() {
        let mut s = DeviceStates::default();
        assert!(s.set_paused(1, true, 10));
        assert!(!s.set_paused(1, true, 10), "pausing twice changes nothing");
        assert_eq!(s.gate(1, 5_000, 1000), Gate::Rearm { at: 6_000 });
        assert_eq!(s.gate(2, 5_000, 1000), Gate::Tick { intended: 5_000 });
        assert!(s.set_paused(1, false, 10));
        assert_eq!(s.gate(1, 6_000, 1000), Gate::Tick { intended: 6_000 });
    }

    #[test]
    fn a_latency_spike_delays_the_publish_and_keeps_the_intended_time() {
        let mut s = DeviceStates::default();
        s.inject(7, &spec(FaultKind::LatencySpike { latency_ms: 250 }, 0), 1_000, 10);
        assert_eq!(s.gate(7, 2_000, 1000), Gate::Rearm { at: 2_250 });
        // At the re-armed time, the delayed message is generated for its original time.
        assert_eq!(s.gate(7, 2_250, 1000), Gate::Tick { intended: 2_000 });
    }

    #[test]
    fn a_spike_does_not_delay_a_disconnected_device() {
        let mut s = DeviceStates::default();
        s.inject(7, &spec(FaultKind::LatencySpike { latency_ms: 250 }, 0), 0, 10);
        s.inject(7, &spec(FaultKind::Disconnect, 0), 0, 10);
        assert_eq!(s.gate(7, 2_000, 1000), Gate::Tick { intended: 2_000 });
        let (fx, _) = s.effects(7, 2_000, 1, || 42, &profile(), &mut []);
        assert!(!fx.publish);
        assert_eq!(s.suppressed(), 1);
    }

    #[test]
    fn a_fault_applies_only_from_its_injection_to_its_end() {
        let mut s = DeviceStates::default();
        s.inject(1, &spec(FaultKind::Disconnect, 1_000), 10_000, 10);
        assert!(s.effects(1, 9_999, 1, || 42, &profile(), &mut []).0.publish, "before");
        assert!(!s.effects(1, 10_000, 2, || 42, &profile(), &mut []).0.publish, "at injection");
        assert!(!s.effects(1, 10_999, 3, || 42, &profile(), &mut []).0.publish, "inside");
        let (fx, expired) = s.effects(1, 11_000, 4, || 42, &profile(), &mut []);
        assert!(fx.publish, "after its duration");
        assert_eq!(expired, vec![FaultKind::Disconnect]);
        assert_eq!(s.faults_active(), 0);
        assert!(s.is_quiet());
    }

    #[test]
    fn clock_drift_moves_the_published_timestamp() {
        let mut s = DeviceStates::default();
        s.inject(1, &spec(FaultKind::ClockDrift { rate_ms_per_s: 10.0 }, 0), 0, 10);
        let (fx, _) = s.effects(1, 60_000, 1, || 42, &profile(), &mut []);
        assert_eq!(fx.timestamp, 60_000 + 600);
    }

    #[test]
    fn corruption_at_rate_one_hits_every_numeric_field() {
        let mut s = DeviceStates::default();
        let kind = FaultKind::DataCorruption { rate: 1.0, mode: CorruptionMode::Zero };
        s.inject(1, &spec(kind, 0), 0, 10);
        let mut samples = [Sample::Number(21.5), Sample::State(1)];
        s.effects(1, 1_000, 1, || 42, &profile(), &mut samples);
        assert_eq!(samples, [Sample::Number(0.0), Sample::State(1)]);
    }

    #[test]
    fn the_same_fault_type_again_replaces_instead_of_stacking() {
        let mut st = DeviceStates::default();
        for _ in 0..4797 {
            st.inject(3, &spec(FaultKind::Disconnect, 1000), 0, 10);
        }
        st.inject(3, &spec(FaultKind::Disconnect, 5000), 2000, 10);
        st.inject(3, &spec(FaultKind::LatencySpike { latency_ms: 10 }, 0), 0, 10);
        assert_eq!(st.faults_active(), 2);
        // The replacement counts from its own injection: still disconnected at 6 s.
        assert_eq!(st.faults[&3].len(), 2);
        assert_eq!(st.faults[&3][0].started_ms, 2000);
        assert_eq!(st.faults[&3][0].duration_ms, 5000);
    }

    #[test]
    fn clearing_by_type_keeps_the_other_faults() {
        let mut s = DeviceStates::default();
        s.inject(1, &spec(FaultKind::Disconnect, 0), 0, 10);
        s.inject(1, &spec(FaultKind::ClockDrift { rate_ms_per_s: 1.0 }, 0), 0, 10);
        assert_eq!(s.faults_active(), 2);
        assert_eq!(s.clear(1, Some(1)), vec![FaultKind::Disconnect]);
        assert_eq!(s.faults_active(), 1);
        assert_eq!(s.clear(1, None).len(), 1);
        assert!(s.is_quiet());
    }

    #[test]
    fn a_stopped_or_moved_device_takes_its_state_along_or_forgets_it() {
        let mut s = DeviceStates::default();
        s.inject(1, &spec(FaultKind::Disconnect, 0), 0, 10);
        s.set_paused(1, true, 10);
        s.rekey(1, 9);
        assert!(s.is_paused(9) && !s.is_paused(1));
        assert_eq!(s.clear(9, None), vec![FaultKind::Disconnect]);
        s.inject(9, &spec(FaultKind::Disconnect, 0), 0, 10);
        s.forget(9);
        assert!(s.is_quiet());
        assert_eq!(s.faults_active(), 0);
    }
}
