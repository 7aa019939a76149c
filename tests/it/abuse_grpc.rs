//! Abuse of the gRPC control plane (issue 15): oversized, malformed and hostile requests,
//! abandoned streams. Each case once crashed, starved or bloated a runtime, or was accepted as
//! nonsense. The runtime must answer with a clear status and keep serving: every test ends by
//! checking that it still answers. Every wait is bounded.

use crate::common::Running;
use crate::grpc_common;

use grpc_common::*;
use iot_sim::control::proto::{self, device_runtime_service_client::DeviceRuntimeServiceClient};
use iot_sim::limits;
use proto::device_selector::Selector;
use std::time::Duration;
use tonic::Code;

type Client = DeviceRuntimeServiceClient<tonic::transport::Channel>;

/// Runs a test body, failing it after 180 s instead of hanging CI.
async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    if tokio::time::timeout(Duration::from_secs(180), body).await.is_err() {
        panic!("the test did not finish within 180 s");
    }
}

async fn client(rt: &Running) -> Client {
    Client::connect(rt.url())
        .await
        .unwrap()
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20)
}

fn serve(extra: &[&str]) -> Running {
    let mut args = vec!["serve", "--cores", "2", "--grpc", "127.0.0.1:0", "--seed", "3", "--quiet"];
    args.extend_from_slice(extra);
    Running::grpc(&args)
}

async fn alive(c: &mut Client) {
    c.get_runtime_status(()).await.expect("the runtime still answers");
}

fn ids(v: &[&str]) -> Option<proto::DeviceSelector> {
    Some(proto::DeviceSelector {
        selector: Some(Selector::DeviceIds(proto::DeviceIdList {
            ids: v.iter().map(|s| s.to_string()).collect(),
        })),
    })
}

fn stream_req(batch_size: i32, flush: Option<(i64, i32)>) -> proto::StreamTelemetryRequest {
    proto::StreamTelemetryRequest {
        selector: None,
        batch_size,
        flush_interval: flush.map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
    }
}

#[tokio::test]
async fn client_supplied_sizes_beyond_their_bounds_are_invalid_argument() {
    bounded(async {
        let rt = serve(&[]);
        let mut c = client(&rt).await;
        // batch_size = 2^31 - 1 aborted the process (an allocation of 309 GB).
        for (batch, flush) in [
            (i32::MAX, None),
            (limits::MAX_STREAM_BATCH as i32 + 1, None),
            (-5, None),
            (10, Some((limits::MAX_FLUSH_INTERVAL_S as i64 + 1, 0))),
            (10, Some((0, 1_000_000_000))),
            (10, Some((0, -1))),
            (10, Some((-1, 0))),
            (10, Some((i64::MAX, 0))),
        ] {
            let e = c.stream_telemetry(stream_req(batch, flush)).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{batch} {flush:?}: {}", e.message());
        }
        let ok =
            c.stream_telemetry(stream_req(limits::MAX_STREAM_BATCH as i32, Some((1, 0)))).await;
        assert!(ok.is_ok(), "{:?}", ok.err());
        alive(&mut c).await;
    })
    .await;
}

#[tokio::test]
async fn streams_beyond_the_maximum_count_are_resource_exhausted_and_freed_when_they_end() {
    bounded(async {
        let rt = serve(&["--config", "tests/abuse_fleet.toml"]);
        let mut c = client(&rt).await;
        let mut open = vec![];
        let mut conns = vec![];
        for i in 0..limits::MAX_STREAMS {
            if i % 50 == 0 {
                conns.push(client(&rt).await);
            }
            let cc = conns.last_mut().unwrap();
            open.push(cc.stream_telemetry(stream_req(0, None)).await.expect("within the maximum"));
        }
        let e = c.stream_telemetry(stream_req(0, None)).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
        assert!(e.message().contains(&limits::MAX_STREAMS.to_string()), "{}", e.message());
        // Unread for a while: points are dropped and counted, the server stays within its budget.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let s = c.get_runtime_status(()).await.unwrap().into_inner();
        assert!(s.telemetry_points_dropped_total > 0, "{s:?}");
        // Ending the calls frees their slots.
        drop(open);
        drop(conns);
        let mut again = None;
        for _ in 0..100 {
            match c.stream_telemetry(stream_req(0, None)).await {
                Ok(s) => {
                    again = Some(s);
                    break;
                }
                Err(e) if e.code() == Code::ResourceExhausted => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(again.is_some(), "the slots of ended streams were not freed within 5 s");
        alive(&mut c).await;
    })
    .await;
}

/// Unread streams hold at most the points budget: the runtime's RSS grows by less than the
/// budget and an allowance for its own buffers (h2 windows, the batch being encoded). On a busy
/// machine the streams' tasks fall behind the shards and the whole budget fills, so this is
/// where a point costing more than it is charged shows: in a loaded run the runtime grew by
/// 739 MB against the 384 MB bound while each queued point, with its own labels map and then
/// its wire form's tags map, cost ~3x its charge (issue 25). The charge is checked against what
/// the points hold in `src/shard/streams.rs`; `bench/hardening.sh` (streams case) measures the
/// same with 2,000 asked streams.
#[tokio::test]
async fn unread_streams_stay_within_the_memory_budget_and_sigterm_ends_the_process() {
    bounded(async {
        let mut rt = serve(&["--config", "tests/abuse_fleet.toml"]);
        let mut c = client(&rt).await;
        let idle = c.get_runtime_status(()).await.unwrap().into_inner().memory_bytes;
        let mut conns = vec![];
        let mut open = vec![];
        for i in 0..200 {
            if i % 50 == 0 {
                conns.push(client(&rt).await);
            }
            let cc = conns.last_mut().unwrap();
            open.push(cc.stream_telemetry(stream_req(0, None)).await.unwrap());
        }
        // Unread: once the streams' batches fill, points are dropped and counted.
        let mut s = c.get_runtime_status(()).await.unwrap().into_inner();
        for _ in 0..600 {
            if s.telemetry_points_dropped_total > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            s = c.get_runtime_status(()).await.unwrap().into_inner();
        }
        assert!(s.telemetry_points_dropped_total > 0, "{s:?}");
        // The largest RSS over the next 4 s of unread streams (10 looks).
        let bound = limits::STREAM_BUDGET_BYTES as i64 + (128 << 20);
        let mut most = s.memory_bytes;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            most = most.max(c.get_runtime_status(()).await.unwrap().into_inner().memory_bytes);
        }
        let grown = most - idle;
        assert!(grown < bound, "grew by {grown} bytes with 200 unread streams (bound {bound})");
        // SIGTERM with the streams still open ends the process (within the helper's 60 s bound;
        // it used to take longer than 6 s, or forever).
        let status = rt.terminate();
        assert!(status.success(), "{status:?}");
        drop(open);
    })
    .await;
}

fn fault(
    selector: Option<proto::DeviceSelector>,
    seconds: i64,
    nanos: i32,
) -> proto::InjectFaultRequest {
    proto::InjectFaultRequest {
        selector,
        fault_type: proto::FaultType::Disconnect as i32,
        duration: Some(prost_types::Duration { seconds, nanos }),
        parameters: None,
    }
}

#[tokio::test]
async fn fault_durations_out_of_range_are_invalid_argument_and_a_repeat_replaces() {
    bounded(async {
        let rt = serve(&["--config", "tests/abuse_fleet.toml"]);
        let mut c = client(&rt).await;
        let all = Some(proto::DeviceSelector {
            selector: Some(Selector::LabelSelector("zone=a".into())),
        });
        // Negative durations were "until cleared"; 2^61 s was permanent, 2^61 + 1 s immediate.
        for (s, n) in [
            (-5, 0),
            (0, -1),
            (i64::MIN, 0),
            (1 << 61, 0),
            ((1 << 61) + 1, 0),
            (limits::MAX_FAULT_DURATION_S as i64 + 1, 0),
            (1, i32::MAX),
            (1, -1),
            (1, 1_000_000_000),
        ] {
            let e = c.inject_fault(fault(all.clone(), s, n)).await.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{s}s {n}ns: {}", e.message());
            assert!(e.message().contains("duration"), "{}", e.message());
        }
        let st = c.get_runtime_status(()).await.unwrap().into_inner();
        assert_eq!(st.faults_active, 0);
        // The same fault again on the same devices replaces the first: it does not stack.
        for _ in 0..5 {
            c.inject_fault(fault(all.clone(), 60, 0)).await.unwrap();
        }
        let st = c.get_runtime_status(()).await.unwrap().into_inner();
        assert_eq!(st.faults_active, 200, "{st:?}");
        c.inject_fault(fault(all.clone(), 0, 0)).await.expect("0 = until cleared");
        c.inject_fault(fault(all.clone(), limits::MAX_FAULT_DURATION_S as i64, 0))
            .await
            .expect("the longest duration");
        alive(&mut c).await;
    })
    .await;
}

fn spec_with(f: impl FnOnce(&mut proto::DeviceSpec)) -> proto::DeviceSpec {
    let mut s = spec("ok-1", "thermo", &[("zone", "x")], 1000, "null");
    f(&mut s);
    s
}

#[tokio::test]
async fn hostile_specs_fail_one_by_one_with_a_reason() {
    bounded(async {
        let rt = serve(&[]);
        let mut c = client(&rt).await;
        let nan_mean = obj(vec![(
            "fields",
            objv(vec![(
                "temperature",
                objv(vec![
                    ("type", text("gaussian")),
                    ("mean", num(f64::NAN)),
                    ("stddev", num(1.0)),
                ]),
            )]),
        )]);
        let empty_field = obj(vec![(
            "fields",
            objv(vec![(
                "",
                objv(vec![("type", text("gaussian")), ("mean", num(1.0)), ("stddev", num(1.0))]),
            )]),
        )]);
        let cases: Vec<(&str, proto::DeviceSpec, &str)> = vec![
            ("empty id", spec_with(|s| s.device_id = String::new()), "must not be empty"),
            ("NUL", spec_with(|s| s.device_id = "a\0b".into()), "U+0000"),
            ("newline", spec_with(|s| s.device_id = "a\nb".into()), "U+000A"),
            ("bidi", spec_with(|s| s.device_id = "abc\u{202E}exe".into()), "U+202E"),
            ("10 KB id", spec_with(|s| s.device_id = "i".repeat(10_000)), "10000 bytes"),
            (
                "10 MB label",
                spec_with(|s| {
                    s.device_id = "big-label".into();
                    s.labels.insert("site".into(), "v".repeat(10 << 20));
                }),
                "10485760 bytes",
            ),
            (
                "100,000 labels",
                spec_with(|s| {
                    s.device_id = "many-labels".into();
                    s.labels = (0..100_000).map(|i| (format!("k{i}"), "v".into())).collect();
                }),
                "100000 labels",
            ),
            (
                "empty field name",
                spec_with(|s| {
                    s.device_id = "empty-field".into();
                    s.behavior_params = Some(empty_field);
                }),
                "field name must not be empty",
            ),
            (
                "nan mean",
                spec_with(|s| {
                    s.device_id = "nan-mean".into();
                    s.behavior_params = Some(nan_mean);
                }),
                "must be a finite number",
            ),
            (
                "missing topic label",
                spec_with(|s| {
                    s.device_id = "topic-label".into();
                    s.topic_template = "t/{labels.nosuch}".into();
                }),
                "{labels.nosuch}",
            ),
        ];
        let n = cases.len();
        let specs: Vec<proto::DeviceSpec> = cases.iter().map(|c| c.1.clone()).collect();
        let r = c
            .spawn_devices(proto::SpawnDevicesRequest { specs, scenario_id: String::new() })
            .await
            .expect("a request with bad specs is answered per device")
            .into_inner();
        assert_eq!(r.spawned, 0, "{r:?}");
        assert_eq!(r.failed_device_ids.len(), n);
        for (what, spec, want) in &cases {
            let key = limits::shorten(&spec.device_id);
            let reason = r
                .failure_reasons
                .iter()
                .find(|(k, _)| **k == key || **k == spec.device_id)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| {
                    panic!("{what}: no reason among {:?}", r.failure_reasons.keys())
                });
            assert!(reason.contains(want), "{what}: {reason}");
        }
        // UpdateDeviceBehavior with a nan parameter is refused as a whole.
        let e = c
            .update_device_behavior(proto::UpdateDeviceBehaviorRequest {
                selector: ids(&["ok-1"]),
                behavior_params: Some(obj(vec![(
                    "fields",
                    objv(vec![(
                        "temperature",
                        objv(vec![
                            ("type", text("gaussian")),
                            ("mean", num(f64::INFINITY)),
                            ("stddev", num(1.0)),
                        ]),
                    )]),
                )])),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        alive(&mut c).await;
    })
    .await;
}

#[tokio::test]
async fn oversized_selectors_are_refused_and_big_in_lists_are_fast_enough_to_serve() {
    bounded(async {
        let rt = serve(&["--config", "tests/abuse_fleet.toml"]);
        let mut c = client(&rt).await;
        let sel =
            |s: String| Some(proto::DeviceSelector { selector: Some(Selector::LabelSelector(s)) });
        // A 4 MB selector (2M values) took 21 s over 10,000 devices and blocked every other call.
        let huge = format!("zone in ({})", vec!["a"; 2_000_000].join(","));
        let e = c
            .get_fleet_status(proto::GetFleetStatusRequest {
                selector: sel(huge),
                counts_only: true,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("bytes"), "{}", e.message());
        let many: Vec<String> =
            (0..limits::MAX_SELECTOR_VALUES + 1).map(|i| format!("v{i}")).collect();
        let e = c
            .get_fleet_status(proto::GetFleetStatusRequest {
                selector: sel(format!("zone in ({})", many.join(","))),
                counts_only: true,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        // The largest allowed list still selects the right devices.
        let mut vals: Vec<String> =
            (0..limits::MAX_SELECTOR_VALUES - 1).map(|i| format!("v{i}")).collect();
        vals.push("a".into());
        let s = c
            .get_fleet_status(proto::GetFleetStatusRequest {
                selector: sel(format!("zone in ({})", vals.join(","))),
                counts_only: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.total_devices, 200);
        alive(&mut c).await;
    })
    .await;
}

#[tokio::test]
async fn reflection_serves_v1_and_v1alpha_and_lists_health() {
    bounded(async {
        use tonic_reflection::pb::{v1, v1alpha};
        let rt = serve(&[]);
        let list_v1 = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let channel = || async {
            tonic::transport::Endpoint::from_shared(rt.url()).unwrap().connect().await.unwrap()
        };
        let mut c1 = v1::server_reflection_client::ServerReflectionClient::new(channel().await);
        let mut s =
            c1.server_reflection_info(tokio_stream::iter([list_v1])).await.unwrap().into_inner();
        let r = s.message().await.unwrap().unwrap();
        let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(l)) =
            r.message_response
        else {
            panic!("{r:?}")
        };
        let names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&"simulator.v1.DeviceRuntimeService".to_string()), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");

        // grpcio-reflection, Evans, Postman and older grpcurl ask for v1alpha.
        let list_alpha = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let mut ca =
            v1alpha::server_reflection_client::ServerReflectionClient::new(channel().await);
        let mut s = ca
            .server_reflection_info(tokio_stream::iter([list_alpha]))
            .await
            .expect("v1alpha is served")
            .into_inner();
        let r = s.message().await.unwrap().unwrap();
        let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) =
            r.message_response
        else {
            panic!("{r:?}")
        };
        let names: Vec<String> = l.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&"simulator.v1.DeviceRuntimeService".to_string()), "{names:?}");
    })
    .await;
}

#[tokio::test]
async fn a_spawn_beyond_the_memory_limit_is_resource_exhausted() {
    bounded(async {
        let rt = Running::grpc_env(
            &["serve", "--cores", "2", "--grpc", "127.0.0.1:0", "--quiet"],
            &[("IOT_SIM_MEMORY_LIMIT", "40MiB")],
        );
        let mut c = client(&rt).await;
        let specs: Vec<proto::DeviceSpec> = (0..200_000)
            .map(|i| spec(&format!("m-{i}"), "thermo", &[("zone", "m")], 1000, "null"))
            .collect();
        let e = c
            .spawn_devices(proto::SpawnDevicesRequest { specs, scenario_id: String::new() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
        assert!(e.message().contains("needs about"), "{}", e.message());
        assert!(e.message().contains("IOT_SIM_MEMORY_LIMIT"), "{}", e.message());
        alive(&mut c).await;
    })
    .await;
}

/// utime + stime of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn out_of_file_descriptors_the_accept_loop_waits_instead_of_spinning() {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_iot-sim"));
    cmd.args(["serve", "--cores", "1", "--grpc", "127.0.0.1:0", "--quiet"]);
    // SAFETY: setrlimit is async-signal-safe and touches only this child's limits.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 64, rlim_max: 64 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut rt = Running::grpc_cmd(&mut cmd);
    // 100 idle connections: beyond the 64 descriptors, accept fails with EMFILE until some
    // close. The accept loop used to retry at once and burn a whole core meanwhile.
    let conns: Vec<std::net::TcpStream> =
        (0..100).map(|_| std::net::TcpStream::connect(&rt.addr).unwrap()).collect();
    // Exhausted: the runtime holds all its 64 descriptors (at most 30 s).
    let pid = rt.child.id();
    let open = || std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let t0 = std::time::Instant::now();
    while open() < 64 {
        assert!(t0.elapsed() < Duration::from_secs(30), "{} descriptors open, not 64", open());
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks(pid) - before;
    // Spinning costs ~300 ticks in 3 s; an idle 1-shard runtime a few.
    assert!(used < 100, "the runtime used {used} ticks of CPU in 3 s with descriptors exhausted");
    drop(conns);
    // Once connections close, it serves again.
    let tokio_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio_rt.block_on(bounded(async {
        let mut last = String::new();
        for _ in 0..100 {
            match Client::connect(rt.url()).await {
                Ok(mut c) => match c.get_runtime_status(()).await {
                    Ok(_) => return,
                    Err(e) => last = format!("status: {e}"),
                },
                Err(e) => last = format!("connect: {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the runtime did not serve again after the connections closed: {last}; exit {:?}; \
             stderr:\n{}",
            rt.child.try_wait(),
            rt.stderr.lock().unwrap()
        );
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_value_call_is_not_queued_behind_a_maximal_selector_scan() {
    bounded(async {
        // One shard, so both calls meet in the same inbox.
        let rt = Running::grpc(&["serve", "--cores", "1", "--grpc", "127.0.0.1:0", "--quiet"]);
        let mut c = client(&rt).await;
        const N: usize = 80_000;
        for start in (0..N).step_by(10_000) {
            let specs = (start..start + 10_000)
                .map(|i| {
                    let mut s = spec(&format!("s-{i}"), "zoned", &[], 60_000, "null");
                    s.labels.insert("zone".into(), format!("z{i:07}"));
                    s
                })
                .collect();
            c.spawn_devices(proto::SpawnDevicesRequest { specs, scenario_id: String::new() })
                .await
                .unwrap();
        }
        let sel =
            |s: String| Some(proto::DeviceSelector { selector: Some(Selector::LabelSelector(s)) });
        let values: Vec<String> =
            (0..limits::MAX_SELECTOR_VALUES).map(|i| format!("z{:07}", i * 7)).collect();
        let big = format!("zone in ({})", values.join(","));
        let mut c2 = c.clone();
        let big_call = tokio::spawn(async move {
            let r = c2
                .get_fleet_status(proto::GetFleetStatusRequest {
                    selector: sel(big),
                    counts_only: true,
                })
                .await
                .unwrap()
                .into_inner();
            (r.total_devices, std::time::Instant::now())
        });
        // The large scan is under way when the small call arrives (it takes far longer than
        // this in a debug build: one set lookup per device with a distinct label set).
        tokio::time::sleep(Duration::from_millis(40)).await;
        let sent = std::time::Instant::now();
        let r = c
            .get_fleet_status(proto::GetFleetStatusRequest {
                selector: sel("zone=z0000003".into()),
                counts_only: true,
            })
            .await
            .unwrap()
            .into_inner();
        let small_done = std::time::Instant::now();
        assert_eq!(r.total_devices, 1);
        let (n, big_done) = big_call.await.unwrap();
        assert_eq!(n, limits::MAX_SELECTOR_VALUES as i32);
        eprintln!(
            "small call {:?}, large call ended {:?} after the small one was sent",
            small_done - sent,
            big_done.saturating_duration_since(sent)
        );
        // Before: the shard worked through its commands in order, so the small call always
        // ended after the large one.
        assert!(small_done < big_done, "the one-value call waited for the maximal selector");
        alive(&mut c).await;
    })
    .await;
}
