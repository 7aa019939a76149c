//! `iot-sim payload preview --config F [--profile X] [--count N]`: the first messages of a
//! profile (topic, content type, payload; a binary payload as hex and decoded: CBOR in
//! diagnostic notation, protobuf in the text format of its message), without running the fleet: what a user checks before pointing the
//! simulator at a backend.
//!
//! The devices are the profile's first fleet entry's, seeded as a run with the file's seed
//! (or 1) would seed them; message `k` is device `k mod D`'s at tick `k / D` (D: the entry's
//! devices, at most `count`), from the file's `start_time` (or the epoch). A replay profile's
//! messages are its trace's first `count` rows, each from the first device it is dealt to, at
//! its recorded offset and with its recorded values (only those rows are read).

use super::exit;
use crate::config::Overrides;
use crate::sim::device::{DeviceTable, device_seed};
use crate::sim::format::{Body, Kind, write_hex};
use crate::sim::payload;
use crate::sim::sparkplug;
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum PayloadCommand {
    /// Print the first messages of a profile without running the fleet.
    Preview(PreviewArgs),
}

#[derive(Args, Debug)]
pub struct PreviewArgs {
    /// The fleet file (TOML).
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
    /// The profile (default: the first fleet entry's).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// How many messages.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub count: u32,
}

pub fn main(cmd: &PayloadCommand) -> anyhow::Result<i32> {
    let PayloadCommand::Preview(a) = cmd;
    let config = match super::load(&a.config, &Overrides::default()) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let fleet = &config.fleet;
    let group_ix = match &a.profile {
        Some(name) => {
            let Some(pi) = fleet.profiles.iter().position(|p| &p.name == name) else {
                let known: Vec<&str> = fleet.profiles.iter().map(|p| p.name.as_str()).collect();
                eprintln!("error: --profile: no profile {name:?}; profiles: {}", known.join(", "));
                return Ok(exit::BAD_CONFIG);
            };
            match fleet.groups.iter().position(|g| g.profile == pi) {
                Some(g) => g,
                None => {
                    eprintln!("error: --profile: no [[fleet]] entry uses profile {name:?}");
                    return Ok(exit::BAD_CONFIG);
                }
            }
        }
        None if fleet.groups.is_empty() => {
            eprintln!("error: the file has no [[fleet]] entry");
            return Ok(exit::BAD_CONFIG);
        }
        None => 0,
    };
    let group = &fleet.groups[group_ix];
    let profile = &fleet.profiles[group.profile];
    let seed = config.run.seed.unwrap_or(1);
    let start = config.run.start_ms.unwrap_or(0);
    let mut table = DeviceTable::default();
    let mut ids = vec![];
    let mut keys = vec![];
    let mut add = |ordinal: u64, ids: &mut Vec<String>, keys: &mut Vec<u32>| {
        let mut id = String::new();
        group.device_id(profile, ordinal, &mut id);
        keys.push(table.insert(fleet, group_ix as u32, ordinal as u32, device_seed(seed, &id)));
        ids.push(id);
    };
    // Message k: (device, sim time, a replay row's values).
    let mut plan: Vec<(usize, u64, Option<Vec<f64>>)> = vec![];
    match &profile.replay {
        // A replay: the trace's first rows, each to the (first) device it is dealt to, at its
        // recorded offset.
        Some(spec) => {
            let rows = match crate::trace::first_rows(spec, a.count as usize) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {}: {e}", spec.layout.file.display());
                    return Ok(exit::BAD_CONFIG);
                }
            };
            let mut local = std::collections::BTreeMap::new();
            for (t, series, row, values) in rows {
                let ordinal = spec.targets(series, row).0;
                let d = *local.entry(ordinal).or_insert_with(|| {
                    add(ordinal, &mut ids, &mut keys);
                    ids.len() - 1
                });
                plan.push((d, spec.schedule(start, t, 0), Some(values)));
            }
        }
        None => {
            let devices = group.count.min(a.count as u64);
            for i in 0..devices {
                add(i, &mut ids, &mut keys);
            }
            for k in 0..a.count as u64 {
                let t = start + (k / devices) * profile.interval_ms;
                plan.push(((k % devices) as usize, t, None));
            }
        }
    }
    let f = &profile.format;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# profile {:?}: format {}, content type {}, CoAP Content-Format {}; seed {seed}",
        profile.name,
        f.name(),
        f.wire.content_type,
        f.wire.coap
    )?;
    let (mut samples, mut buf, mut topic) = (vec![], vec![], vec![]);
    let show = |out: &mut std::io::StdoutLock<'_>, topic: &[u8], buf: &[u8]| {
        writeln!(out, "topic: {}", String::from_utf8_lossy(topic))?;
        match f.wire.body {
            Body::Binary => {
                let mut hex = vec![];
                write_hex(&mut hex, buf);
                writeln!(
                    out,
                    "payload ({} bytes, hex): {}",
                    buf.len(),
                    String::from_utf8_lossy(&hex)
                )?;
                if f.sparkplug().is_some() {
                    writeln!(out, "decoded (Sparkplug B): {}", sparkplug::describe(buf))
                } else if let Kind::Protobuf(p) = &f.kind {
                    let view = p.view.as_ref().map_or_else(
                        || crate::sim::proto::raw_view(buf).unwrap_or_default(),
                        |v| v(buf),
                    );
                    writeln!(out, "decoded ({}): {view}", p.message)
                } else {
                    writeln!(out, "decoded (CBOR): {}", crate::sim::cbor::diagnostic(buf))
                }
            }
            _ => writeln!(out, "payload ({} bytes): {}", buf.len(), String::from_utf8_lossy(buf)),
        }
    };
    // Sparkplug: the edge nodes' births, then data, as the shard sends them.
    let mut nodes = sparkplug::EdgeNodes::default();
    for (d, t, values) in plan {
        let seq = match (&profile.replay, values) {
            (Some(spec), Some(values)) => {
                spec.samples(profile, &values, &mut samples);
                table.next_seq(keys[d])
            }
            _ => table.generate(fleet, keys[d], t, &mut samples).0,
        };
        if let Some(spec) = f.sparkplug() {
            let hash = nodes.locate(spec, &ids[d], &profile.device_type, &group.labels);
            let plan = nodes.sample(hash, &ids[d]);
            let node = String::from_utf8_lossy(&nodes.name).into_owned();
            if let Some(bd) = plan.nbirth {
                sparkplug::encode_nbirth(&mut buf, t, bd);
                topic.clear();
                sparkplug::write_topic(&mut topic, &spec.group_id, "NBIRTH", &node, None);
                show(&mut out, &topic, &buf)?;
            }
            let kind = if plan.birth {
                sparkplug::encode_dbirth(
                    &mut buf,
                    t,
                    plan.seq,
                    plan.ordinal,
                    &profile.fields,
                    &samples,
                    &profile.behaviour.events,
                );
                "DBIRTH"
            } else {
                sparkplug::encode_ddata(
                    &mut buf,
                    t,
                    plan.seq,
                    plan.ordinal,
                    &profile.fields,
                    &samples,
                    None,
                );
                "DDATA"
            };
            topic.clear();
            sparkplug::write_topic(&mut topic, &spec.group_id, kind, &node, Some(&ids[d]));
            show(&mut out, &topic, &buf)?;
            continue;
        }
        payload::encode(
            &mut buf,
            &ids[d],
            profile,
            t,
            &samples,
            (&group.labels, &group.labels_json),
            seq,
        );
        topic.clear();
        profile.topic.render(&mut topic, &ids[d], &profile.device_type, &group.labels);
        if let Some(m) = &profile.delivery.mqtt5 {
            writeln!(
                out,
                "mqtt5: {}",
                mqtt5_line(m, f.wire.content_type, &ids[d], profile, group)
            )?;
        }
        show(&mut out, &topic, &buf)?;
    }
    out.flush()?;
    Ok(exit::OK)
}

/// A profile's MQTT 5 properties for one device, as `[mqtt5]` sends them (MQTT 5 sinks only).
fn mqtt5_line(
    m: &crate::sim::profile::Mqtt5,
    content_type: &str,
    id: &str,
    profile: &crate::sim::profile::Profile,
    group: &crate::sim::profile::Group,
) -> String {
    let mut parts = vec![format!("content_type={content_type:?}")];
    if let Some(s) = m.message_expiry_s {
        parts.push(format!("message_expiry={s}s"));
    }
    if m.payload_format_indicator {
        parts.push("payload_format_indicator=1".into());
    }
    if m.topic_alias {
        parts.push("topic_alias".into());
    }
    for (k, t) in &m.user_properties {
        let mut v = vec![];
        t.render(&mut v, id, &profile.device_type, &group.labels);
        parts.push(format!("user_property {k:?}={:?}", String::from_utf8_lossy(&v)));
    }
    parts.join(", ")
}
