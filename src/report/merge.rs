//! Merging what the shards hand back into one fleet and one set of statistics for the report.

use crate::measure::stats::{ProfileStats, ShardStats};
use crate::sim::profile::{Fleet, Profile, Protocol};

/// Merges the shards' outcomes into one fleet and one set of statistics for the report.
/// `base` is the run's fleet, which every shard started from. What a shard created at runtime
/// (the profiles and groups of devices spawned or changed over gRPC) is appended, with its
/// statistics; the count of a fleet-file group is corrected by what shards moved out of it.
/// What shards folded from the runtime profiles they freed (`ShardStats::retired`) is listed
/// under one husk profile per report row (`fold_retired`), so rows, phases and thresholds
/// see the same totals as if the profiles had been kept.
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
        for r in &st.retired {
            stats.retired_mut(r.key()).merge(r);
        }
    }
    fold_retired(&mut fleet, &mut stats);
    (fleet, stats)
}

/// Lists each retired entry as a profile of its own (a husk: the row's sink, device type,
/// requested protocol and event names) with its statistics, and empties `stats.retired`.
pub(crate) fn fold_retired(fleet: &mut Fleet, stats: &mut ShardStats) {
    for r in std::mem::take(&mut stats.retired) {
        let Some(protocol) = Protocol::parse(&r.sink) else { continue };
        let mut names: Vec<&str> = r.total.events.keys().map(String::as_str).collect();
        for ph in &r.phases {
            names.extend(ph.events.keys().map(String::as_str));
        }
        names.sort_unstable();
        names.dedup();
        let by_name = |f: &crate::measure::stats::Folded| -> ProfileStats {
            let mut st = f.stats.clone();
            st.events = names.iter().map(|n| f.events.get(*n).copied().unwrap_or(0)).collect();
            st
        };
        fleet.profiles.push(Profile::husk(
            protocol,
            &r.device_type,
            r.requested_protocol.clone(),
            &names,
        ));
        stats.profiles.push(by_name(&r.total));
        fleet.groups.push(crate::sim::profile::Group {
            profile: fleet.profiles.len() - 1,
            count: r.devices,
            first_ordinal: 0,
            labels_json: String::new(),
            labels: Default::default(),
            ids: vec![],
        });
        if stats.phases.len() < r.phases.len() {
            stats.phases.resize_with(r.phases.len(), Vec::new);
        }
        let n = stats.profiles.len();
        for (ph, merged) in stats.phases.iter_mut().enumerate() {
            merged.resize_with(n - 1, ProfileStats::new);
            merged.push(r.phases.get(ph).map(by_name).unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::stats::Folded;

    fn stats_with(messages: u64, events: Vec<u64>, latency_us: &[u64]) -> ProfileStats {
        let mut st = ProfileStats::new();
        st.counts.messages = messages;
        st.counts.errors = 1;
        st.events = events;
        for &v in latency_us {
            st.latency.record(v);
        }
        st
    }

    #[test]
    fn retired_statistics_fold_into_the_same_report_rows_as_kept_profiles() {
        // Two spawned profiles of one device type with different events, and one of another
        // type: kept, they make two rows; freed and folded, the same two rows and totals.
        let mut a = Profile::husk(Protocol::Null, "meter", None, &["open", "tamper"]);
        a.name = "a".into();
        let b = Profile::husk(Protocol::Null, "meter", None, &["tamper"]);
        let c = Profile::husk(Protocol::Null, "valve", None, &[]);
        let sa = stats_with(10, vec![2, 3], &[100, 200]);
        let sb = stats_with(5, vec![4], &[300]);
        let sc = stats_with(7, vec![], &[]);
        let facts_fleet = |profiles: Vec<Profile>| Fleet { profiles, groups: vec![] };

        let kept_fleet = facts_fleet(vec![a.clone(), b.clone(), c.clone()]);
        let mut kept = ShardStats::new(0);
        kept.profiles = vec![sa.clone(), sb.clone(), sc.clone()];
        kept.phases = vec![vec![sa.clone(), ProfileStats::new(), sc.clone()]];

        let mut freed = ShardStats::new(0);
        for (p, st, in_phase) in [(&a, &sa, true), (&b, &sb, false), (&c, &sc, true)] {
            let names: Vec<&str> = p.behaviour.events.iter().map(|e| e.name.as_str()).collect();
            let r = freed.retired_mut((p.protocol.name(), &p.device_type, None));
            r.total.fold(st, &names);
            r.phases.resize_with(1, Folded::default);
            if in_phase {
                r.phases[0].fold(st, &names);
            }
        }
        assert_eq!(freed.counts().messages, 22, "retired counts are part of the shard's totals");
        let empty = Fleet { profiles: vec![], groups: vec![] };
        let (fleet, merged) = merge_outcomes(&empty, &[(&empty, &freed)]);
        assert!(merged.retired.is_empty());
        assert_eq!(fleet.profiles.len(), 2, "one husk per row");

        let rows = |f: &Fleet, st: &ShardStats| {
            crate::report::phase_rows("all", 0, 1000, f, &st.profiles).runs
        };
        let phase = |f: &Fleet, st: &ShardStats| {
            crate::report::phase_rows("p", 0, 1000, f, &st.phases[0]).runs
        };
        for (x, y) in [
            (rows(&kept_fleet, &kept), rows(&fleet, &merged)),
            (phase(&kept_fleet, &kept), phase(&fleet, &merged)),
        ] {
            assert_eq!(x.len(), y.len());
            for (x, y) in x.iter().zip(&y) {
                assert_eq!((&x.sink, &x.device_type), (&y.sink, &y.device_type));
                assert_eq!(
                    (x.counts.messages, x.counts.errors, &x.events),
                    (y.counts.messages, y.counts.errors, &y.events)
                );
                assert_eq!(x.latency_us.p50, y.latency_us.p50);
            }
        }
        let meter = &rows(&fleet, &merged)[0];
        assert_eq!(meter.counts.messages, 15);
        assert_eq!(meter.events.get("tamper"), Some(&7));
        assert_eq!(meter.events.get("open"), Some(&2));
    }
}
