//! Who should be publishing: the fleet file's devices, found by id without a map. A fleet
//! device's id is `<profile>-<ordinal>` (`sim/profile.rs`), so the id names its profile (found
//! by binary search in a sorted list of names) and its ordinal (found in the profile's groups
//! by binary search on their first ordinal); its dense index is the group's offset plus its
//! place in the group. Groups with explicit ids (spawned ones) are looked up in a sorted list.
//! Nothing is allocated per message.

use crate::sim::device::device_seed;
use crate::sim::profile::{Fleet, Profile};
use crate::sim::seed::phase_ms;

/// The fleet's devices, indexed densely.
#[derive(Debug)]
pub struct Roster {
    /// Profile names, sorted, with the profile's index.
    names: Vec<(String, usize)>,
    /// Per profile: its groups' (first ordinal, count, group index), sorted.
    ranges: Vec<Vec<(u64, u64, usize)>>,
    /// Per group: the dense index of its first device.
    pub offsets: Vec<u64>,
    /// Explicit ids (groups with `ids`), sorted, with their dense index.
    explicit: Vec<(String, u64)>,
    total: u64,
}

impl Roster {
    pub fn new(fleet: &Fleet) -> Roster {
        let mut names: Vec<(String, usize)> =
            fleet.profiles.iter().enumerate().map(|(i, p)| (p.name.clone(), i)).collect();
        names.sort();
        let mut ranges = vec![vec![]; fleet.profiles.len()];
        let mut offsets = vec![];
        let mut explicit = vec![];
        let mut total = 0;
        for (gi, g) in fleet.groups.iter().enumerate() {
            offsets.push(total);
            if g.ids.is_empty() {
                ranges[g.profile].push((g.first_ordinal, g.count, gi));
            } else {
                explicit
                    .extend(g.ids.iter().enumerate().map(|(i, id)| (id.clone(), total + i as u64)));
            }
            total += g.count;
        }
        for r in &mut ranges {
            r.sort();
        }
        explicit.sort();
        Roster { names, ranges, offsets, explicit, total }
    }

    /// Adds a group of one device with an explicit id (spawned at runtime); returns its dense
    /// index.
    pub fn push_spawned(&mut self, id: &str) -> u64 {
        let dense = self.total;
        self.offsets.push(dense);
        let at = self.explicit.partition_point(|(s, _)| s.as_str() < id);
        self.explicit.insert(at, (id.to_string(), dense));
        self.total += 1;
        dense
    }

    /// Number of devices.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// The dense index and group of a device id, if it belongs to the fleet.
    pub fn find(&self, id: &str) -> Option<(u64, usize)> {
        if let Some((name, digits)) = id.rsplit_once('-')
            && digits.len() >= 4
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits.len() == 4 || !digits.starts_with('0'))
            && let Ok(i) = self.names.binary_search_by(|(n, _)| n.as_str().cmp(name))
            && let Ok(ordinal) = digits.parse::<u64>()
        {
            let groups = &self.ranges[self.names[i].1];
            let at = groups.partition_point(|g| g.0 <= ordinal);
            if at > 0 {
                let (first, count, gi) = groups[at - 1];
                if ordinal < first + count {
                    return Some((self.offsets[gi] + ordinal - first, gi));
                }
            }
        }
        let i = self.explicit.binary_search_by(|(s, _)| s.as_str().cmp(id)).ok()?;
        let dense = self.explicit[i].1;
        let gi = self.offsets.partition_point(|&o| o <= dense) - 1;
        Some((dense, gi))
    }
}

/// The sim time of a device's first tick: the run's start plus its phase (`sim/seed.rs`).
pub fn first_tick(seed: u64, id: &str, profile: &Profile, start_ms: u64) -> u64 {
    start_ms + phase_ms(device_seed(seed, id), profile.interval_ms)
}

/// Messages a periodic device sends from `first` every `interval_ms` before `end`.
pub fn scheduled(first: u64, interval_ms: u64, end: u64) -> u64 {
    if end <= first || interval_ms == 0 { 0 } else { (end - first).div_ceil(interval_ms) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::profile::{Group, Profile};
    use std::collections::BTreeMap;

    fn group(profile: usize, first: u64, count: u64) -> Group {
        Group {
            profile,
            count,
            first_ordinal: first,
            labels: BTreeMap::new(),
            labels_json: String::new(),
            ids: vec![],
        }
    }

    #[test]
    fn ids_are_found_by_profile_and_ordinal_arithmetic() {
        let fleet = Fleet {
            profiles: vec![Profile::for_tests("a-b"), Profile::for_tests("c")],
            groups: vec![group(0, 0, 3), group(1, 0, 20000), group(0, 3, 2)],
        };
        let r = Roster::new(&fleet);
        assert_eq!(r.len(), 20005);
        assert_eq!(r.find("a-b-0000"), Some((0, 0)));
        assert_eq!(r.find("a-b-0004"), Some((20004, 2)));
        assert_eq!(r.find("c-12345"), Some((3 + 12345, 1)));
        assert_eq!(r.find("a-b-0005"), None);
        assert_eq!(r.find("c-012345"), None, "not how ids are padded");
        assert_eq!(r.find("d-0001"), None);
        assert_eq!(r.find("c-1"), None);
    }

    #[test]
    fn the_schedule_counts_ticks_before_the_end() {
        assert_eq!(scheduled(100, 1000, 100), 0);
        assert_eq!(scheduled(100, 1000, 101), 1);
        assert_eq!(scheduled(100, 1000, 1100), 1);
        assert_eq!(scheduled(100, 1000, 1101), 2);
    }
}
