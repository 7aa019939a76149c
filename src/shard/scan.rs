//! Selection commands: the per-device gate before a tick (pauses, latency-spike deferral), the
//! scan of a selection in slices under the turn's budget, and what each action does to a
//! selected device (stop, status, list, fault, pause, count, behaviour update).

use super::Shard;
use super::command::{Action, BehaviourUpdate, DeviceInfo, DeviceState, Selection};
use super::event::EventKind;
use super::faults::Gate;
use super::inbox::*;
use super::streams::group_matches;
use crate::measure::clock::mono_ns;
use crate::sim::device::device_seed;
use crate::sim::time::SimMs;
use std::collections::HashMap;
use std::sync::Arc;

impl Shard {
    /// Before a device's tick: pause and latency-spike deferral. `None` means the tick was
    /// consumed here (the device is re-armed); otherwise the (possibly earlier) intended time
    /// of the message to generate now, and its intended monotonic time (realtime).
    pub(crate) fn control_gate(
        &mut self,
        key: u32,
        due: SimMs,
        intended_ns: Option<u64>,
    ) -> Option<(SimMs, Option<u64>)> {
        if self.ctl.states.is_quiet() {
            return Some((due, intended_ns));
        }
        match self.ctl.states.gate(key, due, self.device_interval(key)) {
            Gate::Tick { intended } if intended == due => Some((due, intended_ns)),
            Gate::Tick { intended } => {
                Some((intended, intended_ns.map(|_| self.wall_at(intended))))
            }
            Gate::Rearm { at } => {
                if self.ctl.states.is_paused(key) {
                    // A paused device publishes nothing, events included: those due before
                    // its next look are dropped, not sent in a burst when it resumes.
                    let fleet = &*self.plan.fleet;
                    if let Some(d) = self.table.get(key) {
                        let b = &fleet.profiles[fleet.groups[d.group as usize].profile].behaviour;
                        if !b.events.is_empty()
                            && let Some(block) = self.table.block_mut(fleet, key)
                        {
                            b.skip_events(block, at);
                        }
                    }
                }
                self.wheel.insert(key, at);
                None
            }
        }
    }

    pub(super) fn device_interval(&self, key: u32) -> u64 {
        self.table.get(key).map_or(1000, |d| d.interval_ms.max(1) as u64)
    }

    /// Works on a selection command until it is done (true) or the deadline passes.
    pub(super) fn scan_step(&mut self, scan: &mut Scan, deadline: u64) -> bool {
        let selection = scan.selection.clone();
        match &*selection {
            Selection::Ids(ids) => {
                while scan.cursor < ids.len() {
                    let id = &ids[scan.cursor];
                    scan.cursor += 1;
                    match self.key_of(id) {
                        Some(key) => self.apply(scan, key),
                        None => scan.acc.not_found.push(id.clone()),
                    }
                    if scan.cursor.is_multiple_of(SCAN_CHUNK) && mono_ns() >= deadline {
                        return false;
                    }
                }
                true
            }
            sel => {
                let end = self.table.key_capacity();
                while scan.cursor < end {
                    let key = scan.cursor as u32;
                    scan.cursor += 1;
                    if let Some(d) = self.table.get(key) {
                        let gi = d.group as usize;
                        let fleet = &*self.plan.fleet;
                        if group_matches(&mut scan.group_match, gi, &fleet.groups[gi], sel) {
                            self.apply(scan, key);
                        }
                    }
                    if scan.cursor.is_multiple_of(SCAN_CHUNK) && mono_ns() >= deadline {
                        return false;
                    }
                }
                true
            }
        }
    }

    /// Applies a selection command's action to one device.
    pub(super) fn apply(&mut self, scan: &mut Scan, key: u32) {
        let now = self.control_now();
        let mut id = String::new();
        let fleet = self.plan.fleet.clone();
        let Some(d) = self.table.get(key) else { return };
        let gi = d.group as usize;
        let group = &fleet.groups[gi];
        let profile = &fleet.profiles[group.profile];
        let needs_id = !matches!(scan.action, Action::Status { list: false } | Action::CountBy(_));
        if needs_id {
            group.device_id(profile, d.index as u64, &mut id);
        }
        scan.acc.affected += 1;
        match &scan.action {
            Action::Status { list } => {
                let state = if self.ctl.states.is_paused(key) {
                    DeviceState::Paused
                } else {
                    DeviceState::Running
                };
                *scan.acc.by_state.entry(state).or_default() += 1;
                *scan.acc.by_type.entry(profile.device_type.clone()).or_default() += 1;
                if *list {
                    scan.acc.devices.push(DeviceInfo {
                        id,
                        device_type: profile.device_type.clone(),
                        labels: group.labels.clone(),
                        state,
                        faults: self.ctl.states.faults_of(key),
                        messages: d.seq,
                    });
                }
            }
            Action::List { after, limit } => {
                if after.as_deref().is_some_and(|a| id.as_str() <= a) {
                    return;
                }
                scan.acc.beyond += 1;
                let state = if self.ctl.states.is_paused(key) {
                    DeviceState::Paused
                } else {
                    DeviceState::Running
                };
                scan.acc.devices.push(DeviceInfo {
                    id,
                    device_type: profile.device_type.clone(),
                    labels: group.labels.clone(),
                    state,
                    faults: self.ctl.states.faults_of(key),
                    messages: d.seq,
                });
                // Keep the `limit` smallest ids; trimming at twice that keeps it amortised.
                if scan.acc.devices.len() >= 2 * (*limit).max(1) {
                    scan.acc.devices.sort_unstable_by(|a, b| a.id.cmp(&b.id));
                    scan.acc.devices.truncate(*limit);
                }
            }
            Action::Stop => {
                // A Sparkplug device's DDEATH (when it was born).
                if profile.format.sparkplug().is_some() {
                    self.id.clone_from(&id);
                    self.sparkplug_death(gi, now, None, mono_ns());
                }
                self.wheel.remove(key);
                self.ctl.states.forget(key);
                if let Some(asked) = &profile.requested_protocol
                    && let Some(n) = self.ctl.fallback_devices.get_mut(asked)
                {
                    *n = n.saturating_sub(1);
                    self.publish_fallback();
                }
                if let Some(ids) = &mut self.ctl.ids {
                    ids.remove(&id, key);
                }
                if let Some(d) = self.table.remove(&fleet, key) {
                    self.ctl.released.push((d.group, d.index));
                    self.ctl.retire.insert(group.profile);
                }
                self.ctl.emit(
                    &id,
                    &group.labels,
                    EventKind::Stopped,
                    "device stopped".into(),
                    now,
                    vec![("device_type", profile.device_type.clone())],
                );
            }
            Action::CountBy(label) => {
                let value = group.labels.get(&**label).cloned();
                *scan.acc.by_label.entry(value).or_default() += 1;
            }
            Action::Fault(spec) => {
                self.ctl.states.inject(key, spec, now, self.table.len());
                if matches!(spec.kind, crate::sim::fault::FaultKind::Disconnect) {
                    self.drop_session(profile, &id, spec, now);
                }
                let duration = if spec.duration_ms == 0 {
                    "until cleared".to_string()
                } else {
                    crate::sim::time::format_duration_ms(spec.duration_ms)
                };
                self.ctl.emit(
                    &id,
                    &group.labels,
                    EventKind::FaultInjected,
                    format!("{} for {duration}", spec.kind),
                    now,
                    vec![
                        ("fault_type", spec.kind.type_name().to_string()),
                        ("device_type", profile.device_type.clone()),
                        ("duration_ms", spec.duration_ms.to_string()),
                    ],
                );
            }
            Action::ClearFaults(kind) => {
                let cleared = self.ctl.states.clear(key, *kind);
                if cleared.is_empty() {
                    scan.acc.affected -= 1;
                }
                if cleared.iter().any(|k| matches!(k, crate::sim::fault::FaultKind::Disconnect)) {
                    self.release_session(profile, &id);
                }
                for k in cleared {
                    self.ctl.emit(
                        &id,
                        &group.labels,
                        EventKind::FaultCleared,
                        format!("{k} cleared"),
                        now,
                        vec![("fault_type", k.type_name().to_string())],
                    );
                }
            }
            Action::Pause(pause) => {
                let changed = self.ctl.states.set_paused(key, *pause, self.table.len());
                if changed {
                    let (kind, msg) = if *pause {
                        (EventKind::Paused, "device paused")
                    } else {
                        (EventKind::Resumed, "device resumed")
                    };
                    self.ctl.emit(&id, &group.labels, kind, msg.into(), now, vec![]);
                } else {
                    scan.acc.affected -= 1;
                }
            }
            Action::Behaviour(update) => {
                let update = update.clone();
                // No second reference to the fleet while it is changed (see update_behaviour).
                drop(fleet);
                self.update_behaviour(key, &id, &update, &mut scan.remap)
            }
        }
    }

    /// Swaps a device's generators. A field whose generator type (and slot count) is unchanged
    /// keeps its state, so a brownian level does not jump back to `start`.
    pub(super) fn update_behaviour(
        &mut self,
        key: u32,
        id: &str,
        update: &BehaviourUpdate,
        remap: &mut HashMap<usize, usize>,
    ) {
        // Copies of what is needed from the old group and profile: holding a second reference
        // to the fleet here would make every `Arc::make_mut` below clone the whole fleet (with
        // the ids of every spawned device), once per updated device.
        let Some(old) = self.table.get(key).cloned() else { return };
        let (old_profile_ix, old_labels, old_profile) = {
            let g = &self.plan.fleet.groups[old.group as usize];
            (g.profile, g.labels.clone(), self.plan.fleet.profiles[g.profile].clone())
        };
        let old_slots: Vec<_> =
            self.table.slots_mut(key, old_profile.slots).map(|s| s.to_vec()).unwrap_or_default();
        let profile_ix = match remap.get(&old_profile_ix) {
            Some(&ix) => ix,
            None => {
                // What broke was refused up front (gRPC compiles the whole field set, a
                // scenario checks every profile its update meets at load); anything left
                // publishes null.
                let (p, _broken) = old_profile.updated(update);
                let ix = self.intern_profile(&Arc::new(p));
                remap.insert(old_profile_ix, ix);
                ix
            }
        };
        let p = self.plan.fleet.profiles[profile_ix].clone();
        let mut labels = old_labels;
        labels.extend(update.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        let gi = self.intern_group(profile_ix, labels, false);
        let deadline = self.wheel.remove(key);
        self.table.remove(&self.plan.fleet, key);
        self.ctl.released.push((old.group, old.index));
        self.ctl.retire.insert(old_profile_ix);
        let f = Arc::make_mut(&mut self.plan.fleet);
        // The device moves to the new group: the report counts it once.
        let old_count = &mut f.groups[old.group as usize].count;
        *old_count = old_count.saturating_sub(1);
        let index = f.groups[gi].ids.len() as u32;
        f.groups[gi].ids.push(id.to_string());
        f.groups[gi].count += 1;
        let new_key = self.table.insert(f, gi as u32, index, device_seed(self.plan.seed, id));
        if let Some(dev) = self.table.get_mut(new_key) {
            dev.seq = old.seq;
            dev.interval_ms = match update.interval_ms {
                Some(ms) => ms as u32,
                None => old.interval_ms,
            };
        }
        if let Some(new_slots) = self.table.slots_mut(new_key, p.slots) {
            for nf in &p.fields {
                let Some(of) = old_profile.fields.iter().find(|of| of.name == nf.name) else {
                    continue;
                };
                let same = std::mem::discriminant(&of.generator)
                    == std::mem::discriminant(&nf.generator)
                    && of.generator.slots() == nf.generator.slots();
                if same {
                    let n = nf.generator.slots();
                    new_slots[nf.first_slot..nf.first_slot + n]
                        .clone_from_slice(&old_slots[of.first_slot..of.first_slot + n]);
                }
            }
            // Event clocks, outages and sleep phases carry over where the feature stays.
            let (ob, nb) = (&old_profile.behaviour, &p.behaviour);
            for (ne, &nat) in nb.events.iter().zip(&nb.event_at) {
                if let Some((oe, &oat)) =
                    ob.events.iter().zip(&ob.event_at).find(|(oe, _)| oe.name == ne.name)
                    && oe.fields.len() == ne.fields.len()
                    && oe.field_slots == ne.field_slots
                {
                    new_slots[nat..nat + 1 + ne.field_slots]
                        .clone_from_slice(&old_slots[oat..oat + 1 + oe.field_slots]);
                }
            }
            if ob.availability.is_some() && nb.availability.is_some() {
                new_slots[nb.availability_at] = old_slots[ob.availability_at].clone();
            }
            if ob.sleep == nb.sleep && nb.sleep.is_some() {
                new_slots[nb.sleep_at] = old_slots[ob.sleep_at].clone();
            }
        }
        if new_key != key {
            self.ctl.states.rekey(key, new_key);
            if let Some(ids) = &mut self.ctl.ids {
                ids.rekey(id, key, new_key);
            }
        }
        let now = self.control_now();
        self.wheel.insert(new_key, deadline.unwrap_or(now + old.interval_ms as u64));
    }
}
