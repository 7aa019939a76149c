//! The gRPC client side: one or several runtimes, devices routed by rendezvous hashing.
//!
//! **Routing scheme (fixed, so any client can reproduce it):** a device with id `d` belongs to
//! the runtime address `a` (as written in `--runtime`, e.g. `10.0.0.5:50051`) with the highest
//! `mix64(fnv1a64(a) XOR fnv1a64(d))` (SplitMix64 finaliser over FNV-1a 64; ties go to the
//! address listed first). Adding or removing a runtime moves only the devices that hash to it.
//! Commands that select devices (stop, status, fault, pause, resume, stream) go to every
//! runtime and their results are merged.

use super::proto::{self, device_runtime_service_client::DeviceRuntimeServiceClient};
use super::service::MAX_MESSAGE_BYTES;
use crate::sim::seed::{fnv1a64, mix64};
use std::future::Future;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Attempts for an UNAVAILABLE call before giving up.
pub const RETRIES: u32 = 5;
/// First backoff; doubled after each UNAVAILABLE.
pub const BACKOFF_START: Duration = Duration::from_millis(200);

/// The runtime that owns `device_id` among `addrs` (index into `addrs`).
pub fn owner(addrs: &[String], device_id: &str) -> usize {
    let d = fnv1a64(device_id.as_bytes());
    let mut best = (0usize, 0u64);
    for (i, a) in addrs.iter().enumerate() {
        let score = mix64(fnv1a64(a.as_bytes()) ^ d);
        if i == 0 || score > best.1 {
            best = (i, score);
        }
    }
    best.0
}

/// Clients for every runtime named on the command line.
pub struct Pool {
    pub addrs: Vec<String>,
    clients: Vec<DeviceRuntimeServiceClient<Channel>>,
}

impl Pool {
    /// Prepares (lazy) connections to `addrs` (`host:port`, or a full `http://` URL).
    pub fn new(addrs: &[String]) -> Result<Pool, String> {
        if addrs.is_empty() {
            return Err("no runtime given: use --runtime host:port".into());
        }
        let mut clients = vec![];
        for a in addrs {
            let url = if a.contains("://") { a.clone() } else { format!("http://{a}") };
            let ep = Endpoint::from_shared(url)
                .map_err(|e| format!("bad runtime address {a:?}: {e}"))?
                .connect_timeout(Duration::from_secs(5));
            clients.push(
                DeviceRuntimeServiceClient::new(ep.connect_lazy())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            );
        }
        Ok(Pool { addrs: addrs.to_vec(), clients })
    }

    /// A clone of runtime `i`'s client.
    pub fn client(&self, i: usize) -> DeviceRuntimeServiceClient<Channel> {
        self.clients[i].clone()
    }

    /// Runs `call` against runtime `i`, retrying UNAVAILABLE with exponential backoff.
    pub async fn call<T, F, Fut>(&self, i: usize, call: F) -> Result<T, String>
    where
        F: Fn(DeviceRuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut wait = BACKOFF_START;
        let mut attempt = 1;
        loop {
            match call(self.client(i)).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if s.code() == Code::Unavailable && attempt < RETRIES => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
                Err(s) if s.code() == Code::Unavailable => {
                    return Err(format!(
                        "runtime {} is unavailable after {attempt} attempts: {}",
                        self.addrs[i],
                        s.message()
                    ));
                }
                Err(s) => {
                    return Err(format!(
                        "runtime {}: {:?}: {}",
                        self.addrs[i],
                        s.code(),
                        s.message()
                    ));
                }
            }
        }
    }

    /// Runs `call` against every runtime concurrently; results in `addrs` order.
    pub async fn all<T, F, Fut>(&self, call: F) -> Result<Vec<T>, String>
    where
        F: Fn(DeviceRuntimeServiceClient<Channel>) -> Fut + Clone,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let futs = (0..self.addrs.len()).map(|i| self.call(i, call.clone()));
        let mut out = vec![];
        for r in futures_join(futs).await {
            out.push(r?);
        }
        Ok(out)
    }

    /// Spawns `specs`, each on the runtime that owns its id; merged response.
    pub async fn spawn(
        &self,
        specs: Vec<proto::DeviceSpec>,
    ) -> Result<proto::SpawnDevicesResponse, String> {
        let mut per: Vec<Vec<proto::DeviceSpec>> = vec![vec![]; self.addrs.len()];
        for s in specs {
            per[owner(&self.addrs, &s.device_id)].push(s);
        }
        let futs = per.into_iter().enumerate().filter(|(_, s)| !s.is_empty()).map(|(i, specs)| {
            let req = proto::SpawnDevicesRequest { specs, scenario_id: String::new() };
            self.call(i, move |mut c| {
                let req = req.clone();
                async move { c.spawn_devices(req).await }
            })
        });
        let mut out = proto::SpawnDevicesResponse::default();
        for r in futures_join(futs).await {
            let r = r?;
            out.spawned += r.spawned;
            out.failed_device_ids.extend(r.failed_device_ids);
            out.failure_reasons.extend(r.failure_reasons);
        }
        out.failed_device_ids.sort();
        Ok(out)
    }
}

/// Awaits every future concurrently (a small `join_all`, to avoid a dependency).
async fn futures_join<F: Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = vec![];
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// A sim-time duration in ms as a protobuf Duration.
pub(crate) fn pb_duration(ms: u64) -> prost_types::Duration {
    prost_types::Duration { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

/// A TOML value as a protobuf Struct value (behaviour params written in TOML, sent over gRPC).
pub(crate) fn toml_to_pb(v: &toml::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        toml::Value::String(s) => Kind::StringValue(s.clone()),
        toml::Value::Integer(i) => Kind::NumberValue(*i as f64),
        toml::Value::Float(f) => Kind::NumberValue(*f),
        toml::Value::Boolean(b) => Kind::BoolValue(*b),
        toml::Value::Datetime(d) => Kind::StringValue(d.to_string()),
        toml::Value::Array(a) => {
            Kind::ListValue(prost_types::ListValue { values: a.iter().map(toml_to_pb).collect() })
        }
        toml::Value::Table(t) => Kind::StructValue(table_to_pb(t)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A TOML table as a protobuf Struct.
pub(crate) fn table_to_pb(t: &toml::Table) -> prost_types::Struct {
    prost_types::Struct { fields: t.iter().map(|(k, v)| (k.clone(), toml_to_pb(v))).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_has_exactly_one_owner_and_the_spread_is_fair() {
        let addrs: Vec<String> = ["a:1", "b:2", "c:3"].iter().map(|s| s.to_string()).collect();
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            counts[owner(&addrs, &format!("dev-{i:04}"))] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven {counts:?}");
        }
    }

    #[test]
    fn removing_a_runtime_moves_only_its_devices() {
        let three: Vec<String> = ["a:1", "b:2", "c:3"].iter().map(|s| s.to_string()).collect();
        let two: Vec<String> = three[..2].to_vec();
        for i in 0..2000 {
            let id = format!("dev-{i}");
            let o3 = owner(&three, &id);
            if o3 < 2 {
                assert_eq!(owner(&two, &id), o3, "{id} moved");
            }
        }
    }
}
