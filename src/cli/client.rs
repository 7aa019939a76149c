//! `iot-sim serve` and the gRPC client commands (spawn, stop, status, stream, fault, pause,
//! resume). Client commands accept several `--runtime` addresses: spawn routes each device by
//! rendezvous hashing of its id (see `control::client`), the others fan out and merge.

use crate::control::client::Pool;
use crate::control::client::{pb_duration, table_to_pb};
use crate::control::proto;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where the runtimes are.
#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Runtime address(es), host:port; repeat or separate with commas for several.
    /// `dns:///NAME:PORT` stands for every address behind NAME (a headless Service's pods).
    #[arg(
        short,
        long,
        value_name = "HOST:PORT",
        value_delimiter = ',',
        default_value = "127.0.0.1:50051"
    )]
    pub runtime: Vec<String>,
}

/// Which devices a command applies to.
#[derive(Args, Debug, Clone)]
pub struct SelectArgs {
    /// Every device.
    #[arg(long, conflicts_with_all = ["selector", "ids"])]
    pub all: bool,
    /// Label selector, such as `site=berlin,tier in (a,b)`.
    #[arg(short, long, value_name = "S")]
    pub selector: Option<String>,
    /// Device ids, comma separated.
    #[arg(long, value_name = "A,B", value_delimiter = ',', conflicts_with = "selector")]
    pub ids: Option<Vec<String>>,
}

impl SelectArgs {
    fn to_proto(&self) -> Option<proto::DeviceSelector> {
        use proto::device_selector::Selector;
        if let Some(ids) = &self.ids {
            return Some(proto::DeviceSelector {
                selector: Some(Selector::DeviceIds(proto::DeviceIdList { ids: ids.clone() })),
            });
        }
        self.selector
            .as_ref()
            .map(|s| proto::DeviceSelector { selector: Some(Selector::LabelSelector(s.clone())) })
    }

    fn require(&self) -> anyhow::Result<()> {
        if !self.all && self.selector.is_none() && self.ids.is_none() {
            bail!("say which devices: --all, --selector S or --ids a,b");
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct SpawnArgs {
    #[command(flatten)]
    pub rt: RuntimeArgs,
    /// A profile file (TOML, as in a fleet's profile files) or a name looked up as
    /// `$IOT_SIM_PROFILES_DIR/NAME.toml` (default folder: `profiles`).
    #[arg(short, long, value_name = "FILE|NAME")]
    pub profile: String,
    /// Number of devices.
    #[arg(short = 'n', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// First ordinal of the ids (`<type>-<ordinal, 4 digits>`).
    #[arg(long, default_value_t = 0)]
    pub offset: u32,
    /// Extra labels, k=v,k=v.
    #[arg(short, long, value_name = "K=V,...", value_delimiter = ',')]
    pub labels: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SelectCmd {
    #[command(flatten)]
    pub rt: RuntimeArgs,
    #[command(flatten)]
    pub sel: SelectArgs,
}

#[derive(Args, Debug)]
pub struct StreamArgs {
    #[command(flatten)]
    pub rt: RuntimeArgs,
    /// Label selector.
    #[arg(short, long, value_name = "S")]
    pub selector: Option<String>,
    /// Device ids, comma separated.
    #[arg(long, value_name = "A,B", value_delimiter = ',', conflicts_with = "selector")]
    pub ids: Option<Vec<String>>,
    /// Stop after this many points (default: run until interrupted).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum FaultCmd {
    /// Inject a fault into the selected devices.
    Inject(FaultInjectArgs),
    /// Clear faults (all types, or --type) from the selected devices.
    Clear(FaultClearArgs),
}

#[derive(Args, Debug)]
pub struct FaultInjectArgs {
    #[command(flatten)]
    pub rt: RuntimeArgs,
    #[command(flatten)]
    pub sel: SelectArgs,
    /// disconnect, latency_spike, data_corruption, battery_drain, clock_drift.
    #[arg(short, long = "type", value_name = "T")]
    pub kind: String,
    /// How long, such as 60s; 0 = until cleared.
    #[arg(short, long, value_name = "D", default_value = "60s")]
    pub duration: String,
    /// Parameters, k=v (numbers, or strings such as mode=spike); repeatable.
    #[arg(short, long = "param", value_name = "K=V")]
    pub params: Vec<String>,
}

#[derive(Args, Debug)]
pub struct FaultClearArgs {
    #[command(flatten)]
    pub rt: RuntimeArgs,
    #[command(flatten)]
    pub sel: SelectArgs,
    /// Only this fault type.
    #[arg(short, long = "type", value_name = "T")]
    pub kind: Option<String>,
}

fn fault_type(s: &str) -> anyhow::Result<proto::FaultType> {
    let up = format!("FAULT_TYPE_{}", s.to_ascii_uppercase().replace('-', "_"));
    proto::FaultType::from_str_name(&up).filter(|t| *t != proto::FaultType::Unspecified).with_context(|| {
        format!("unknown fault type {s:?}; accepted: disconnect, latency_spike, data_corruption, battery_drain, clock_drift")
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start tokio")
}

fn pool(rt: &RuntimeArgs) -> anyhow::Result<Pool> {
    Ok(Pool::new(&rt.runtime)?)
}

/// Builds the specs of `iot-sim spawn` from a profile file (validated locally first).
pub fn specs_from_profile(args: &SpawnArgs) -> anyhow::Result<Vec<proto::DeviceSpec>> {
    let path = {
        let p = PathBuf::from(&args.profile);
        if p.exists() || args.profile.contains('/') || args.profile.ends_with(".toml") {
            p
        } else {
            let dir = std::env::var("IOT_SIM_PROFILES_DIR").unwrap_or_else(|_| "profiles".into());
            PathBuf::from(dir).join(format!("{}.toml", args.profile))
        }
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read profile {}", path.display()))?;
    let doc: toml::Table =
        text.parse().with_context(|| format!("{} is not valid TOML", path.display()))?;
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut problems = crate::walk::Problems::default();
    let profile = crate::config::compile_profile(
        &name,
        crate::walk::Table::new(format!("{}:", path.display()), &doc),
        &mut problems,
    );
    let Some(profile) = profile.filter(|_| problems.is_empty()) else {
        bail!("invalid profile {}: {problems}", path.display());
    };
    let mut labels: BTreeMap<String, String> = profile.labels.clone();
    for kv in &args.labels {
        let Some((k, v)) = kv.split_once('=') else { bail!("--labels: expected k=v, got {kv:?}") };
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    labels.entry("device_type".into()).or_insert_with(|| profile.device_type.clone());
    let fields = match doc.get("fields") {
        Some(toml::Value::Table(t)) => t.clone(),
        _ => bail!("profile {} has no [fields]", path.display()),
    };
    let mut params = toml::Table::new();
    params.insert("fields".into(), toml::Value::Table(fields));
    let behaviour = table_to_pb(&params);
    Ok((0..args.count)
        .map(|i| proto::DeviceSpec {
            device_id: format!("{}-{:04}", profile.device_type, args.offset as u64 + i as u64),
            device_type: profile.device_type.clone(),
            labels: labels.clone().into_iter().collect(),
            telemetry_interval: Some(pb_duration(profile.interval_ms)),
            behavior_params: Some(behaviour.clone()),
            protocol: profile.protocol.name().to_string(),
            topic_template: profile.topic.source.clone(),
        })
        .collect())
}

pub fn spawn(args: &SpawnArgs) -> anyhow::Result<i32> {
    let specs = specs_from_profile(args)?;
    runtime()?.block_on(async {
        let pool = pool(&args.rt)?;
        let r = pool.spawn(specs).await.map_err(anyhow::Error::msg)?;
        println!("Spawned {} device(s)", r.spawned);
        if !r.failed_device_ids.is_empty() {
            println!("Failed: {:?}", r.failed_device_ids);
            for id in r.failed_device_ids.iter().take(10) {
                if let Some(why) = r.failure_reasons.get(id) {
                    println!("  {id}: {why}");
                }
            }
        }
        Ok(0)
    })
}

pub fn stop(args: &SelectCmd) -> anyhow::Result<i32> {
    args.sel.require()?;
    let sel = args.sel.to_proto();
    runtime()?.block_on(async {
        let pool = pool(&args.rt)?;
        let rs = pool
            .all(|mut c| {
                let req = proto::StopDevicesRequest { selector: sel.clone(), graceful: true };
                async move { c.stop_devices(req).await }
            })
            .await
            .map_err(anyhow::Error::msg)?;
        let stopped: i32 = rs.iter().map(|r| r.stopped).sum();
        println!("Stopped {stopped} device(s)");
        Ok(0)
    })
}

pub fn pause(args: &SelectCmd, resume: bool) -> anyhow::Result<i32> {
    args.sel.require()?;
    let sel = args.sel.to_proto();
    runtime()?.block_on(async {
        let pool = pool(&args.rt)?;
        let rs = pool
            .all(|mut c| {
                let sel = sel.clone();
                async move {
                    if resume {
                        c.resume_devices(proto::ResumeDevicesRequest { selector: sel }).await
                    } else {
                        c.pause_devices(proto::PauseDevicesRequest { selector: sel }).await
                    }
                }
            })
            .await
            .map_err(anyhow::Error::msg)?;
        let n: i32 = rs.iter().map(|r| r.affected).sum();
        println!("{} {n} device(s)", if resume { "Resumed" } else { "Paused" });
        Ok(0)
    })
}

pub fn status(args: &SelectCmd) -> anyhow::Result<i32> {
    let sel = args.sel.to_proto();
    runtime()?.block_on(async {
        let pool = pool(&args.rt)?;
        let fleets = pool
            .all(|mut c| {
                let req = proto::GetFleetStatusRequest { selector: sel.clone(), counts_only: true };
                async move { c.get_fleet_status(req).await }
            })
            .await
            .map_err(anyhow::Error::msg)?;
        let runtimes = pool
            .all(|mut c| async move { c.get_runtime_status(()).await })
            .await
            .map_err(anyhow::Error::msg)?;
        let mut by_state: BTreeMap<String, i32> = BTreeMap::new();
        let mut by_type: BTreeMap<String, i32> = BTreeMap::new();
        let mut total = 0;
        for f in &fleets {
            total += f.total_devices;
            for (k, v) in &f.by_state {
                *by_state.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &f.by_type {
                *by_type.entry(k.clone()).or_default() += v;
            }
        }
        println!("Total devices: {total}");
        println!("By state: {by_state:?}");
        println!("By type: {by_type:?}");
        for (addr, r) in pool.addrs.iter().zip(&runtimes) {
            let up = r.uptime.as_ref().map_or(0, |d| d.seconds);
            println!(
                "Runtime {addr}: devices={} threads={} memory={}MB uptime={}:{:02}:{:02} messages={} msg/s={:.0} suppressed={} faults_active={}",
                r.active_devices,
                r.goroutine_count,
                r.memory_bytes / 1_000_000,
                up / 3600,
                up / 60 % 60,
                up % 60,
                r.messages_sent_total,
                r.messages_per_second,
                r.messages_suppressed_total,
                r.faults_active
            );
        }
        Ok(0)
    })
}

pub fn stream(args: &StreamArgs) -> anyhow::Result<i32> {
    use proto::device_selector::Selector;
    let selector = match (&args.ids, &args.selector) {
        (Some(ids), _) => Some(Selector::DeviceIds(proto::DeviceIdList { ids: ids.clone() })),
        (None, Some(s)) => Some(Selector::LabelSelector(s.clone())),
        _ => None,
    }
    .map(|s| proto::DeviceSelector { selector: Some(s) });
    runtime()?.block_on(async {
        let pool = pool(&args.rt)?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<proto::TelemetryBatch, String>>(64);
        for i in 0..pool.addrs.len() {
            let req = proto::StreamTelemetryRequest {
                selector: selector.clone(),
                batch_size: 50,
                flush_interval: None,
            };
            let mut stream = pool
                .call(i, move |mut c| {
                    let req = req.clone();
                    async move { c.stream_telemetry(req).await }
                })
                .await
                .map_err(anyhow::Error::msg)?;
            let tx = tx.clone();
            let addr = pool.addrs[i].clone();
            tokio::spawn(async move {
                loop {
                    match stream.message().await {
                        Ok(Some(b)) => {
                            if tx.send(Ok(b)).await.is_err() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(s) => {
                            let _ = tx.send(Err(format!("runtime {addr}: {}", s.message()))).await;
                            break;
                        }
                    }
                }
            });
        }
        drop(tx);
        let mut seen = 0u64;
        while let Some(b) = rx.recv().await {
            let b = b.map_err(anyhow::Error::msg)?;
            for p in b.points {
                use proto::telemetry_point::Value;
                let v = match p.value {
                    Some(Value::DoubleValue(d)) => d.to_string(),
                    Some(Value::IntValue(i)) => i.to_string(),
                    Some(Value::StringValue(s)) => s,
                    Some(Value::BoolValue(b)) => b.to_string(),
                    None => "null".into(),
                };
                let ts =
                    p.timestamp.map_or(0, |t| t.seconds as u64 * 1000 + t.nanos as u64 / 1_000_000);
                println!(
                    "{} {}={}  ts={}",
                    p.device_id,
                    p.metric_name,
                    v,
                    crate::sim::time::rfc3339_ms(ts)
                );
                seen += 1;
                if args.limit.is_some_and(|l| seen >= l) {
                    return Ok(0);
                }
            }
            if b.dropped_points > 0 {
                eprintln!(
                    "(the runtime dropped {} points so far: this client reads too slowly)",
                    b.dropped_points
                );
            }
        }
        Ok(0)
    })
}

pub fn fault(cmd: &FaultCmd) -> anyhow::Result<i32> {
    match cmd {
        FaultCmd::Inject(a) => {
            a.sel.require()?;
            let kind = fault_type(&a.kind)?;
            let ms = crate::sim::time::parse_duration_ms(&a.duration)
                .or_else(|e| if a.duration.trim() == "0" { Ok(0) } else { Err(e) })
                .map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
            let mut params = toml::Table::new();
            for kv in &a.params {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("--param: expected k=v, got {kv:?}")
                };
                let v = match v.trim().parse::<f64>() {
                    Ok(n) => toml::Value::Float(n),
                    Err(_) => toml::Value::String(v.trim().to_string()),
                };
                params.insert(k.trim().to_string(), v);
            }
            let req = proto::InjectFaultRequest {
                selector: a.sel.to_proto(),
                fault_type: kind as i32,
                duration: Some(pb_duration(ms)),
                parameters: Some(table_to_pb(&params)),
            };
            runtime()?.block_on(async {
                let pool = pool(&a.rt)?;
                pool.all(|mut c| {
                    let req = req.clone();
                    async move { c.inject_fault(req).await }
                })
                .await
                .map_err(anyhow::Error::msg)?;
                println!(
                    "Injected {} into the selected devices on {} runtime(s)",
                    a.kind,
                    pool.addrs.len()
                );
                Ok(0)
            })
        }
        FaultCmd::Clear(a) => {
            a.sel.require()?;
            let kind = match &a.kind {
                Some(k) => fault_type(k)? as i32,
                None => 0,
            };
            let req = proto::ClearFaultsRequest { selector: a.sel.to_proto(), fault_type: kind };
            runtime()?.block_on(async {
                let pool = pool(&a.rt)?;
                let rs = pool
                    .all(|mut c| {
                        let req = req.clone();
                        async move { c.clear_faults(req).await }
                    })
                    .await
                    .map_err(anyhow::Error::msg)?;
                println!(
                    "Cleared faults on {} device(s)",
                    rs.iter().map(|r| r.cleared).sum::<i32>()
                );
                Ok(0)
            })
        }
    }
}
