//! The `simulator.v1.DeviceRuntimeService` server: each RPC is validated (`spec.rs`), carried
//! out by the [`ControlPlane`] and its domain answer mapped to the wire (`wire.rs`).
//!
//! Runs on its own small tokio runtime (thread `control`), never on a shard thread.

use super::plane::{ControlPlane, PlaneError};
use super::proto::{self, device_runtime_service_server as server};
use super::spec::{self, selection};
use super::wire;
use crate::shard::command::{Action, Selection};
use crate::shard::event::Point;
use crate::shard::streams::Charge;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Largest gRPC message accepted or sent: the original client sends every spec of a spawn in
/// one request (~400 B per device), and GetFleetStatus lists every device.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// How often a telemetry stream whose client fell behind looks whether it caught up.
const CONGESTION_CHECK: Duration = Duration::from_millis(100);
/// How long a shutdown waits for open gRPC calls (streams) before cutting them.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1000);

impl From<PlaneError> for Status {
    fn from(e: PlaneError) -> Status {
        match e {
            PlaneError::Exhausted(m) => Status::resource_exhausted(m),
            other => Status::unavailable(other.to_string()),
        }
    }
}

/// A batch on its way to a stream's client, still charged to the stream budget until the
/// client's connection takes it. It waits as the shards' compact points and becomes the wire
/// form only when the connection takes it (each wire point has its own tags map: queued that
/// way, a point cost several times what it was charged).
struct ChargedBatch {
    points: Vec<Point>,
    sequence_number: i64,
    dropped_points: i64,
    _charge: Charge,
}

impl ChargedBatch {
    /// The wire form; the charge is given back once it is made.
    fn into_wire(self) -> proto::TelemetryBatch {
        proto::TelemetryBatch {
            points: self.points.into_iter().map(wire::point).collect(),
            sequence_number: self.sequence_number,
            dropped_points: self.dropped_points,
        }
    }
}

/// The gRPC service.
pub struct Service {
    plane: Arc<ControlPlane>,
}

impl Service {
    pub fn new(plane: Arc<ControlPlane>) -> Service {
        Service { plane }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A plane call made for a gRPC request: the journal records it with `"source": "grpc"`.
fn via_grpc<F: std::future::Future>(f: F) -> impl std::future::Future<Output = F::Output> {
    super::journal::FRONT_END.scope("grpc", f)
}

/// A SpawnDevices call: the specs validated by `compile` (from the decoded or the encoded
/// request), spawned on the shards, the refusals merged into the reply.
pub(crate) async fn spawn(
    plane: &Arc<ControlPlane>,
    compile: impl FnOnce(&ControlPlane) -> Result<spec::CompiledSpecs, Status>,
) -> Result<proto::SpawnDevicesResponse, Status> {
    let t0 = std::time::Instant::now();
    let (specs, failed) = compile(plane)?;
    let compiled = t0.elapsed();
    let mut out = proto::SpawnDevicesResponse::default();
    for (id, reason) in failed {
        out.failure_reasons.insert(id.clone(), reason);
        out.failed_device_ids.push(id);
    }
    let r = via_grpc(plane.spawn(specs)).await?;
    // Where a large spawn's time goes (`IOT_SIM_LOG=iot_sim::control=debug`); the request's
    // transfer happens before this.
    tracing::debug!(
        compile_ms = compiled.as_secs_f64() * 1e3,
        total_ms = t0.elapsed().as_secs_f64() * 1e3,
        "spawn handled"
    );
    out.spawned = r.spawned as i32;
    for (id, reason) in r.failed {
        out.failure_reasons.insert(id.clone(), reason);
        out.failed_device_ids.push(id);
    }
    out.failed_device_ids.sort();
    Ok(out)
}

#[tonic::async_trait]
impl server::DeviceRuntimeService for Service {
    async fn spawn_devices(
        &self,
        req: Request<proto::SpawnDevicesRequest>,
    ) -> Result<Response<proto::SpawnDevicesResponse>, Status> {
        // Served by `spawn_wire::SpawnFastPath` (the encoded request); this typed form is what
        // a caller of the service itself gets.
        let specs = req.into_inner().specs;
        spawn(&self.plane, |plane| spec::compile_specs(specs, plane)).await.map(Response::new)
    }

    async fn stop_devices(
        &self,
        req: Request<proto::StopDevicesRequest>,
    ) -> Result<Response<proto::StopDevicesResponse>, Status> {
        let sel = selection(req.into_inner().selector, false)?;
        let r = via_grpc(self.plane.scan(sel, Action::Stop)).await?;
        Ok(Response::new(proto::StopDevicesResponse {
            stopped: r.affected as i32,
            failed_device_ids: r.not_found,
        }))
    }

    async fn get_fleet_status(
        &self,
        req: Request<proto::GetFleetStatusRequest>,
    ) -> Result<Response<proto::FleetStatus>, Status> {
        let req = req.into_inner();
        let sel = selection(req.selector, true)?;
        let list = !req.counts_only;
        let mut r = via_grpc(self.plane.scan(sel, Action::Status { list })).await?;
        r.devices.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(proto::FleetStatus {
            total_devices: r.affected as i32,
            by_state: r
                .by_state
                .into_iter()
                .map(|(k, v)| (wire::state_name(k).to_string(), v as i32))
                .collect(),
            by_type: r.by_type.into_iter().map(|(k, v)| (k, v as i32)).collect(),
            devices: r.devices.into_iter().map(wire::device).collect(),
        }))
    }

    async fn inject_fault(
        &self,
        req: Request<proto::InjectFaultRequest>,
    ) -> Result<Response<()>, Status> {
        let req = req.into_inner();
        let spec = spec::fault_spec(&req)?;
        let sel = selection(req.selector, false)?;
        via_grpc(self.plane.scan(sel, Action::Fault(spec))).await?;
        Ok(Response::new(()))
    }

    async fn update_device_behavior(
        &self,
        req: Request<proto::UpdateDeviceBehaviorRequest>,
    ) -> Result<Response<()>, Status> {
        let req = req.into_inner();
        let update = Arc::new(spec::behaviour_update(req.behavior_params.as_ref())?);
        let sel = selection(req.selector, false)?;
        via_grpc(self.plane.scan(sel, Action::Behaviour(update))).await?;
        Ok(Response::new(()))
    }

    type StreamTelemetryStream = BoxStream<proto::TelemetryBatch>;

    async fn stream_telemetry(
        &self,
        req: Request<proto::StreamTelemetryRequest>,
    ) -> Result<Response<Self::StreamTelemetryStream>, Status> {
        let req = req.into_inner();
        let (batch_size, flush) = spec::stream_shape(&req)?;
        let sel = Arc::new(selection(req.selector, true)?);
        let mut feed = self.plane.subscribe(sel).await?;
        // Four batches wait for the client at most; the task never waits for it: what does not
        // fit is dropped and counted, so an unread stream holds little and its shards' points
        // keep flowing (and being dropped) instead of piling up.
        let (out_tx, out_rx) = mpsc::channel::<ChargedBatch>(4);
        let plane = self.plane.clone();
        tokio::spawn(async move {
            let mut seq = 0i64;
            let mut batch: Vec<Point> = Vec::with_capacity(batch_size.min(1024));
            // What the points in `batch` and not yet converted are charged, and how many.
            let mut charge = Charge::default();
            let mut held = 0usize;
            let mut ticker = tokio::time::interval(flush);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // How often the client's queue is looked at to lift congestion.
            let mut check = tokio::time::interval(CONGESTION_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let congested = feed.congested.clone();
            let mut counted = 0u64;
            let dropped = feed.dropped.clone();
            // Hands the batch to the client's queue, or drops and counts it; false once the
            // client is gone.
            let mut emit = |batch: &mut Vec<Point>, charge: &mut Charge, held: &mut usize| {
                let mut points = std::mem::take(batch);
                let n = points.len();
                // Each point is charged the room of two (`streams::POINT_BYTES`).
                if points.capacity() > 2 * n {
                    points.shrink_to_fit();
                }
                let part = charge.split(charge.bytes() * n / (*held).max(1));
                *held = held.saturating_sub(n);
                seq += 1;
                plane.batch_sizes.record(n);
                let b = ChargedBatch {
                    points,
                    sequence_number: seq,
                    dropped_points: dropped.load(Ordering::Relaxed) as i64,
                    _charge: part,
                };
                match out_tx.try_send(b) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        dropped.fetch_add(n as u64, Ordering::Relaxed);
                        congested.store(true, Ordering::Relaxed);
                        true
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            };
            'outer: loop {
                tokio::select! {
                    biased;
                    // The call ended: free its buffers at once.
                    () = out_tx.closed() => break,
                    got = feed.rx.recv() => {
                        let Some(pb) = got else { break };
                        held += pb.points.len();
                        charge.absorb(pb.charge);
                        for p in pb.points {
                            batch.push(p);
                            if batch.len() >= batch_size && !emit(&mut batch, &mut charge, &mut held) {
                                break 'outer;
                            }
                        }
                    }
                    _ = ticker.tick() => {
                        if !batch.is_empty() && !emit(&mut batch, &mut charge, &mut held) {
                            break;
                        }
                    }
                    _ = check.tick() => {
                        feed.congested.store(out_tx.capacity() == 0, Ordering::Relaxed);
                    }
                }
                let d = feed.dropped.load(Ordering::Relaxed);
                if d > counted {
                    plane.dropped_points.fetch_add(d - counted, Ordering::Relaxed);
                    counted = d;
                }
            }
            let d = feed.dropped.load(Ordering::Relaxed);
            plane.dropped_points.fetch_add(d.saturating_sub(counted), Ordering::Relaxed);
            let id = feed.id;
            drop(feed);
            plane.unsubscribe(id).await;
        });
        let stream = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(out_rx),
            |c: ChargedBatch| Ok(c.into_wire()),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    type StreamEventsStream = BoxStream<proto::DeviceEvent>;

    async fn stream_events(
        &self,
        req: Request<proto::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let sel = selection(req.into_inner().selector, true)?;
        let ids: Option<HashSet<String>> = match &sel {
            Selection::Ids(v) => Some(v.iter().cloned().collect()),
            _ => None,
        };
        let mut rx = self.plane.events();
        let (out_tx, out_rx) = mpsc::channel::<Result<proto::DeviceEvent, Status>>(256);
        tokio::spawn(async move {
            let mut lost = 0u64;
            loop {
                let ev = match rx.recv().await {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        lost += n;
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                let wanted = match (&sel, &ids) {
                    (_, Some(ids)) => ids.contains(&ev.device_id),
                    (Selection::Labels(l), _) => l.matches(&ev.labels),
                    _ => true,
                };
                if !wanted {
                    continue;
                }
                let mut event = wire::event(&ev);
                if lost > 0 {
                    // Say so in-band: this subscriber read too slowly and missed events.
                    event.metadata.insert("events_dropped_before".into(), lost.to_string());
                }
                if out_tx.send(Ok(event)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out_rx))))
    }

    async fn get_runtime_status(
        &self,
        _req: Request<()>,
    ) -> Result<Response<proto::RuntimeStatus>, Status> {
        let p = &self.plane;
        let up = p.uptime();
        Ok(Response::new(proto::RuntimeStatus {
            active_devices: p.sum(|c| &c.devices) as i32,
            goroutine_count: thread_count().unwrap_or(p.threads) as i32,
            messages_sent_total: p.messages_total() as i64,
            messages_per_second: p.messages_per_second(),
            memory_bytes: crate::report::rss_bytes() as i64,
            uptime: Some(prost_types::Duration {
                seconds: up.as_secs() as i64,
                nanos: up.subsec_nanos() as i32,
            }),
            shards: p.shards() as i32,
            messages_suppressed_total: p.sum(|c| &c.suppressed) as i64,
            telemetry_points_dropped_total: p.dropped_points.load(Ordering::Relaxed) as i64,
            errors_total: p.sum(|c| &c.errors) as i64,
            faults_active: p.sum(|c| &c.faults_active) as i64,
            tick_lateness_us_max: p.take_lateness_us_max() as i64,
            fallback_devices: p
                .fallback_devices()
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| (k, n as i64))
                .collect(),
            runtime_profiles: p.sum(|c| &c.runtime_profiles) as i64,
        }))
    }

    async fn pause_devices(
        &self,
        req: Request<proto::PauseDevicesRequest>,
    ) -> Result<Response<proto::PauseDevicesResponse>, Status> {
        let sel = selection(req.into_inner().selector, false)?;
        let r = via_grpc(self.plane.scan(sel, Action::Pause(true))).await?;
        Ok(Response::new(proto::PauseDevicesResponse {
            affected: r.affected as i32,
            failed_device_ids: r.not_found,
        }))
    }

    async fn resume_devices(
        &self,
        req: Request<proto::ResumeDevicesRequest>,
    ) -> Result<Response<proto::PauseDevicesResponse>, Status> {
        let sel = selection(req.into_inner().selector, false)?;
        let r = via_grpc(self.plane.scan(sel, Action::Pause(false))).await?;
        Ok(Response::new(proto::PauseDevicesResponse {
            affected: r.affected as i32,
            failed_device_ids: r.not_found,
        }))
    }

    async fn clear_faults(
        &self,
        req: Request<proto::ClearFaultsRequest>,
    ) -> Result<Response<proto::ClearFaultsResponse>, Status> {
        let req = req.into_inner();
        let kind = spec::clear_kind(req.fault_type)?;
        let sel = selection(req.selector, false)?;
        let r = via_grpc(self.plane.scan(sel, Action::ClearFaults(kind))).await?;
        Ok(Response::new(proto::ClearFaultsResponse { cleared: r.affected as i32 }))
    }
}

fn thread_count() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with("Threads:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// A running gRPC server.
pub struct ControlServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    /// Starts accepting connections (see [`ControlServer::open`]).
    open: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlServer {
    /// Starts accepting connections. Until then they wait in the listen backlog, so clients
    /// that connect early cannot use up the descriptors the run still needs to start.
    pub fn open(&mut self) {
        if let Some(tx) = self.open.take() {
            let _ = tx.send(());
        }
    }

    fn stop(&mut self) {
        self.open();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds `addr` and serves the runtime service, health and reflection on a new `control`
/// thread with its own tokio runtime, accepting connections once [`ControlServer::open`] is
/// called (or the server dropped).
pub fn start(addr: SocketAddr, plane: Arc<ControlPlane>) -> std::io::Result<ControlServer> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("control")
        .on_thread_start(|| crate::memcheck::reserve_heap(crate::memcheck::CONTROL_HEAP_RESERVE))
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr))?;
    let local = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let (open_tx, open_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name("control".into()).spawn(move || {
        rt.block_on(async move {
            let (reporter, health) = tonic_health::server::health_reporter();
            reporter.set_serving::<server::DeviceRuntimeServiceServer<Service>>().await;
            // Reflection in both versions: grpcurl and grpc.reflection.v1 clients ask for v1;
            // Python's grpcio-reflection, Evans, Postman and older grpcurl for v1alpha. The
            // health service is listed too.
            let reflection = || {
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            };
            let warn = |e| tracing::warn!(error = %e, "server reflection unavailable");
            let svc = server::DeviceRuntimeServiceServer::new(Service::new(plane.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let svc = super::spawn_wire::SpawnFastPath::new(svc, plane);
            let router = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(svc)
                .add_optional_service(reflection().build_v1().map_err(warn).ok())
                .add_optional_service(reflection().build_v1alpha().map_err(warn).ok());
            // Backs off when descriptors run out instead of spinning on EMFILE.
            let incoming = super::incoming::Incoming::new(listener, async move {
                let _ = open_rx.await;
            });
            let stopping = Arc::new(tokio::sync::Notify::new());
            let signal = stopping.clone();
            let serve = router.serve_with_incoming_shutdown(incoming, async move {
                let _ = rx.await;
                signal.notify_one();
            });
            // A graceful shutdown waits for open calls, and a telemetry or event stream never
            // ends by itself: after a grace period the remaining ones are cut.
            let grace = async {
                stopping.notified().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            tokio::select! {
                r = serve => if let Err(e) = r {
                    tracing::error!(error = %e, "gRPC server failed");
                },
                () = grace => tracing::info!("gRPC: closing the streams still open at shutdown"),
            }
        });
    })?;
    Ok(ControlServer { addr: local, shutdown: Some(tx), open: Some(open_tx), thread: Some(thread) })
}
