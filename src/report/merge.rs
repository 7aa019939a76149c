//! Merging what the shards hand back into one fleet and one set of statistics for the report.

use crate::measure::stats::{ProfileStats, ShardStats};
use crate::sim::profile::Fleet;

/// Merges the shards' outcomes into one fleet and one set of statistics for the report.
/// `base` is the run's fleet, which every shard started from. What a shard created at runtime
/// (the profiles and groups of devices spawned or changed over gRPC) is appended, with its
/// statistics; the count of a fleet-file group is corrected by what shards moved out of it.
pub(crate) fn merge_outcomes(
    base: &Fleet,
    shards: &[(&Fleet, &ShardStats)],
) -> (Fleet, ShardStats) {
    let mut fleet = base.clone();
    let mut stats = ShardStats::new(base.profiles.len());
    for (f, st) in shards {
        // Shard profile index -> merged index.
        let mut map: Vec<usize> = (0..base.profiles.len().min(f.profiles.len())).collect();
        for p in f.profiles.iter().skip(map.len()) {
            fleet.profiles.push(p.clone());
            stats.profiles.push(ProfileStats::new());
            map.push(fleet.profiles.len() - 1);
        }
        for (i, g) in f.groups.iter().enumerate() {
            match base.groups.get(i) {
                Some(b) => {
                    let moved = b.count.saturating_sub(g.count);
                    fleet.groups[i].count = fleet.groups[i].count.saturating_sub(moved);
                }
                None => {
                    let mut g = g.clone();
                    g.profile = map.get(g.profile).copied().unwrap_or(g.profile);
                    g.ids = vec![];
                    fleet.groups.push(g);
                }
            }
        }
        for (i, p) in st.profiles.iter().enumerate() {
            if let Some(&m) = map.get(i) {
                stats.profiles[m].merge(p);
            }
        }
        // Scenario phases: the same profile mapping.
        if stats.phases.len() < st.phases.len() {
            stats.phases.resize_with(st.phases.len(), Vec::new);
        }
        for (ph, per) in st.phases.iter().enumerate() {
            let merged = &mut stats.phases[ph];
            if merged.len() < stats.profiles.len() {
                merged.resize_with(stats.profiles.len(), ProfileStats::new);
            }
            for (i, p) in per.iter().enumerate() {
                if let Some(&m) = map.get(i) {
                    merged[m].merge(p);
                }
            }
        }
        let _ = stats.step_lateness.add(&st.step_lateness);
        let _ = stats.lateness.add(&st.lateness);
        for (k, v) in &st.sink_events {
            *stats.sink_events.entry(k.clone()).or_insert(0) += v;
        }
    }
    (fleet, stats)
}
