//! `[profiles.NAME.replay]`: a recorded trace. The keys are checked like any table's (every
//! problem with its path and value); the trace itself is read once from end to end by the
//! pre-pass (`trace::scan`), whose first problem is reported under `replay.file` with its
//! line and column. What the pre-pass found goes into the profile's
//! [`ReplaySpec`](crate::sim::replay::ReplaySpec); its fields are the trace's columns.

use super::keys;
use crate::sim::generator::{GenSpec, Markov};
use crate::sim::payload;
use crate::sim::profile::FieldSpec;
use crate::sim::replay::{ReplayField, ReplaySpec};
use crate::walk::{Problems, Table, join, show};
use std::collections::BTreeMap;
use std::path::Path;
use toml::Value;

/// Compiles the replay table; returns the spec and the profile's fields (by name).
pub(crate) fn compile(
    mut t: Table<'_>,
    base: &Path,
    p: &mut Problems,
) -> Option<(ReplaySpec, Vec<FieldSpec>)> {
    let before = p.0.len();
    let file = t.req_str("file", p);
    let time = t.req_str("time", p);
    let device = t.str("device", p);
    let devices = match t.int("devices", p) {
        Some(n) if (1..=super::MAX_COUNT).contains(&n) => Some(n as u64),
        Some(n) => {
            p.add(
                t.path_of("devices"),
                format!("must be between 1 and {}, got {n}", super::MAX_COUNT),
            );
            None
        }
        None => None,
    };
    let fields: Option<Vec<String>> = t.array("fields", p).map(|a| {
        let mut out = vec![];
        for (i, v) in a.iter().enumerate() {
            match v.as_str() {
                Some(s) => out.push(s.to_string()),
                None => p.add(
                    format!("{}[{i}]", t.path_of("fields")),
                    format!("expected a column name (a string), got {}", show(v)),
                ),
            }
        }
        out
    });
    if fields.as_ref().is_some_and(Vec::is_empty) {
        p.add(t.path_of("fields"), "must name at least one column");
    }
    let speed = match t.f64("speed", p) {
        Some(s) if s > 0.0 && s <= 1e9 => s,
        Some(s) => {
            p.add(t.path_of("speed"), format!("must be greater than 0 (and at most 1e9), got {s}"));
            1.0
        }
        None => 1.0,
    };
    let looped = t.bool("loop", p).unwrap_or(false);
    let scale = numbers(&mut t, "scale", p);
    let offset = numbers(&mut t, "offset", p);
    let file_path = t.path_of("file");
    let t_path = t.path.clone();
    t.finish_with(&keys::REPLAY.names(), p);
    let (file, time) = (file?, time?);
    if p.0.len() > before {
        return None;
    }
    let full = base.join(file);
    let trace_problem = |p: &mut Problems, e: crate::trace::TraceError| {
        p.add(file_path.clone(), format!("{}: {e}", full.display()));
    };
    let (layout, published) =
        match crate::trace::open_layout(&full, time, device, fields.as_deref()) {
            Ok(x) => x,
            Err(e) => {
                trace_problem(p, e);
                return None;
            }
        };
    let mut names: Vec<&str> = published.iter().map(|f| f.0.as_str()).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        p.add(join(&t_path, "fields"), format!("two columns publish as {:?}", w[0]));
    }
    if published.len() > crate::limits::MAX_FIELDS {
        p.add(
            join(&t_path, "fields"),
            format!(
                "{} columns to publish, more than the {} fields allowed",
                published.len(),
                crate::limits::MAX_FIELDS
            ),
        );
    }
    for (name, _) in &published {
        if let Err(e) = crate::limits::check_name("field name", name) {
            p.add(join(&t_path, "fields"), e);
        }
    }
    for (key, map) in [("scale", &scale), ("offset", &offset)] {
        for k in map.keys() {
            if !published.iter().any(|f| &f.0 == k) {
                p.add(
                    join(&join(&t_path, key), k),
                    format!(
                        "not a published field; they are: {}",
                        published.iter().map(|f| f.0.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
    }
    if p.0.len() > before {
        return None;
    }
    let mut rfields: Vec<ReplayField> = published
        .iter()
        .map(|(name, column)| ReplayField {
            name: name.clone(),
            column: column.clone(),
            text: None,
            scale: scale.get(name).copied().unwrap_or(1.0),
            offset: offset.get(name).copied().unwrap_or(0.0),
        })
        .collect();
    let scan = match crate::trace::scan(&layout, &mut rfields) {
        Ok(s) => s,
        Err(e) => {
            trace_problem(p, e);
            return None;
        }
    };
    for f in &rfields {
        if f.text.is_some() && (scale.contains_key(&f.name) || offset.contains_key(&f.name)) {
            p.add(
                join(&t_path, if scale.contains_key(&f.name) { "scale" } else { "offset" }),
                format!(
                    "field {:?} holds text in the trace; only numbers take a scale or offset",
                    f.name
                ),
            );
        }
    }
    if p.0.len() > before {
        return None;
    }
    // The profile's fields are in name order; the reader's columns follow them.
    let mut order: Vec<usize> = (0..rfields.len()).collect();
    order.sort_by(|a, b| rfields[*a].name.cmp(&rfields[*b].name));
    let rfields: Vec<ReplayField> = order.iter().map(|&i| rfields[i].clone()).collect();
    let mut layout = layout;
    let head = 1 + layout.has_device as usize;
    let mut columns: Vec<String> = layout.columns[..head].to_vec();
    columns.extend(order.iter().map(|&i| layout.columns[head + i].clone()));
    if !layout.indices.is_empty() {
        let mut indices: Vec<usize> = layout.indices[..head].to_vec();
        indices.extend(order.iter().map(|&i| layout.indices[head + i]));
        layout.indices = indices;
    }
    layout.columns = columns;
    let specs = rfields
        .iter()
        .map(|f| FieldSpec {
            name: f.name.clone(),
            key_json: payload::key_json(&f.name),
            generator: match &f.text {
                // Never run: a replay device's values come from the trace. Text values are
                // the states of a chain that stays put, so every format writes them by index.
                Some(states) => {
                    GenSpec::Markov(Markov::new(states.clone(), &vec![vec![1.0]; states.len()], 0))
                }
                None => GenSpec::Static { json: "0.0".into(), number: Some(0.0) },
            },
            decimals: None,
            battery: false,
            first_slot: 0,
            deadband: None,
        })
        .collect();
    let spec = ReplaySpec {
        layout,
        fields: rfields,
        devices,
        speed,
        looped,
        series: scan.series,
        rows: scan.rows,
        first_ms: scan.first_ms,
        last_ms: scan.last_ms,
        lap_ms: scan.lap_ms,
    };
    Some((spec, specs))
}

fn numbers(t: &mut Table<'_>, key: &str, p: &mut Problems) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Some(tt) = t.table(key, p) else { return out };
    for (k, v) in tt.table {
        match v {
            Value::Integer(i) => {
                out.insert(k.clone(), *i as f64);
            }
            Value::Float(f) if f.is_finite() => {
                out.insert(k.clone(), *f);
            }
            _ => p.add(join(&tt.path, k), format!("expected a finite number, got {}", show(v))),
        }
    }
    out
}
