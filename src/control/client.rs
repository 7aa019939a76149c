//! The gRPC client side: one or several runtimes, devices routed by rendezvous hashing.
//!
//! **Routing scheme (fixed, so any client can reproduce it):** a device with id `d` belongs to
//! the runtime address `a` (as written in `--runtime`, e.g. `10.0.0.5:50051`) with the highest
//! `mix64(fnv1a64(a) XOR fnv1a64(d))` (SplitMix64 finaliser over FNV-1a 64; ties go to the
//! address listed first). Adding or removing a runtime moves only the devices that hash to it.
//! Commands that select devices (stop, status, fault, pause, resume, stream) go to every
//! runtime and their results are merged.
//!
//! **`dns:///NAME:PORT`** (the gRPC resolver form; `dns:NAME:PORT` too) stands for every
//! address behind `NAME` (all A and AAAA records: the pods of a Kubernetes headless Service).
//! The hashed key of each address is then its stable name, not its IP, so that a pod that
//! restarts with a new IP keeps its devices: the reverse DNS name of the address (for a
//! StatefulSet behind a headless Service, the pod's own record
//! `iot-sim-2.iot-sim.NS.svc.cluster.local`), with the port: `NAME:PORT`, the same key as
//! writing that name in `--runtime` by hand. An address without a reverse name is keyed by
//! `IP:PORT`. A name that resolves to nothing is an error naming it ([`ResolveError`]).

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

/// A `--runtime` entry that cannot be used: bad input (exit 2), not a runtime failure.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no runtime given: use --runtime host:port")]
    Empty,
    #[error("bad runtime address {0:?}: expected host:port, http://host:port or dns:///name:port")]
    Syntax(String),
    #[error("{entry}: cannot resolve {name:?}: {reason}")]
    Lookup { entry: String, name: String, reason: String },
    #[error("{entry}: {name:?} resolves to no address")]
    NoAddress { entry: String, name: String },
    #[error("{count} runtimes after expanding --runtime, more than the {max} allowed")]
    TooMany { count: usize, max: usize },
}

impl From<ResolveError> for String {
    fn from(e: ResolveError) -> String {
        e.to_string()
    }
}

/// One runtime of a pool: where to connect, and the key its devices are hashed by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port` or a URL, as connected to (and named in messages).
    pub addr: String,
    /// The rendezvous key: `addr` as written, or a `dns:///` address's stable name.
    pub key: String,
}

/// Expands `--runtime` entries: `dns:///NAME:PORT` to one [`Target`] per address behind the
/// name (sorted by key, duplicates dropped), anything else to itself.
pub fn resolve(entries: &[String]) -> Result<Vec<Target>, ResolveError> {
    if entries.is_empty() {
        return Err(ResolveError::Empty);
    }
    let mut out: Vec<Target> = vec![];
    for e in entries {
        let Some(rest) = e.strip_prefix("dns:///").or_else(|| e.strip_prefix("dns:")) else {
            out.push(Target { addr: e.clone(), key: e.clone() });
            continue;
        };
        let (name, port) = rest
            .rsplit_once(':')
            .and_then(|(n, p)| Some((n.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
            .filter(|(n, _)| !n.is_empty() && !n.contains('/'))
            .ok_or_else(|| ResolveError::Syntax(e.clone()))?;
        let found = std::net::ToSocketAddrs::to_socket_addrs(&(name, port)).map_err(|err| {
            ResolveError::Lookup { entry: e.clone(), name: name.into(), reason: err.to_string() }
        })?;
        let found: Vec<std::net::SocketAddr> = found.collect();
        if found.is_empty() {
            return Err(ResolveError::NoAddress { entry: e.clone(), name: name.into() });
        }
        out.extend(targets_of(&found, reverse_name));
    }
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|t| seen.insert(t.addr.clone()));
    if out.len() > crate::limits::MAX_RUNTIMES {
        return Err(ResolveError::TooMany { count: out.len(), max: crate::limits::MAX_RUNTIMES });
    }
    Ok(out)
}

/// The targets of the addresses behind one name, keyed by `reverse`'s name when it has one,
/// sorted by key (so that the order, and the tie-break, do not depend on the DNS answer).
fn targets_of(
    found: &[std::net::SocketAddr],
    reverse: impl Fn(&std::net::SocketAddr) -> Option<String>,
) -> Vec<Target> {
    let mut t: Vec<Target> = found
        .iter()
        .map(|a| {
            let key = match reverse(a) {
                Some(name) => format!("{}:{}", name.trim_end_matches('.'), a.port()),
                None => a.to_string(),
            };
            Target { addr: a.to_string(), key }
        })
        .collect();
    t.sort_by(|a, b| a.key.cmp(&b.key).then(a.addr.cmp(&b.addr)));
    t
}

/// The reverse DNS name of an address (`getnameinfo` with `NI_NAMEREQD`), if it has one.
fn reverse_name(addr: &std::net::SocketAddr) -> Option<String> {
    use std::net::SocketAddr;
    // SAFETY: the sockaddr structs are plain data, fully initialised here; getnameinfo reads
    // `len` bytes of them and writes at most `host.len()` bytes (NUL-terminated) into `host`.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in);
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6);
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
                sin6.sin6_scope_id = a.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        let mut host = [0 as libc::c_char; 1025];
        let rc = libc::getnameinfo(
            &storage as *const _ as *const libc::sockaddr,
            len as libc::socklen_t,
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        );
        if rc != 0 {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(host.as_ptr()).to_string_lossy().into_owned();
        (!name.is_empty()).then_some(name)
    }
}

/// Clients for every runtime named on the command line.
pub struct Pool {
    /// Where each runtime is (connected to, named in messages).
    pub addrs: Vec<String>,
    /// The rendezvous key of each runtime (see [`Target`]).
    keys: Vec<String>,
    clients: Vec<DeviceRuntimeServiceClient<Channel>>,
}

impl Pool {
    /// Prepares (lazy) connections to `addrs` (`host:port`, a full `http://` URL, or
    /// `dns:///name:port` for every address behind a name, see [`resolve`]).
    pub fn new(addrs: &[String]) -> Result<Pool, ResolveError> {
        let targets = resolve(addrs)?;
        let mut clients = vec![];
        for t in &targets {
            let a = &t.addr;
            let url = if a.contains("://") { a.clone() } else { format!("http://{a}") };
            let ep = Endpoint::from_shared(url)
                .map_err(|_| ResolveError::Syntax(a.clone()))?
                .connect_timeout(Duration::from_secs(5));
            clients.push(
                DeviceRuntimeServiceClient::new(ep.connect_lazy())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            );
        }
        Ok(Pool {
            addrs: targets.iter().map(|t| t.addr.clone()).collect(),
            keys: targets.into_iter().map(|t| t.key).collect(),
            clients,
        })
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
            per[owner(&self.keys, &s.device_id)].push(s);
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
    fn dns_targets_are_keyed_by_their_stable_name_whatever_their_ip() {
        let named = |a: &std::net::SocketAddr| match a.ip().to_string().as_str() {
            "10.0.0.7" | "10.0.0.9" => Some("iot-sim-1.iot-sim.ns.svc.cluster.local.".to_string()),
            "10.0.0.8" => Some("iot-sim-0.iot-sim.ns.svc.cluster.local.".to_string()),
            _ => None,
        };
        let before = targets_of(
            &["10.0.0.7:50051".parse().unwrap(), "10.0.0.8:50051".parse().unwrap()],
            named,
        );
        // iot-sim-1 restarts with a new IP: same key, so every device keeps its owner.
        let after = targets_of(
            &["10.0.0.8:50051".parse().unwrap(), "10.0.0.9:50051".parse().unwrap()],
            named,
        );
        let keys = |t: &[Target]| t.iter().map(|t| t.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&before), keys(&after));
        assert_eq!(before[0].key, "iot-sim-0.iot-sim.ns.svc.cluster.local:50051");
        assert_eq!(after[1].addr, "10.0.0.9:50051");
        let unnamed = targets_of(&["10.0.0.5:1".parse().unwrap()], named);
        assert_eq!(unnamed[0].key, "10.0.0.5:1");
    }

    #[test]
    fn dns_entries_that_resolve_to_nothing_or_are_malformed_are_named() {
        let e = resolve(&["dns:///no-such-runtime.invalid:50051".into()]).unwrap_err();
        assert!(e.to_string().contains("no-such-runtime.invalid"), "{e}");
        let e = resolve(&["dns:///nameonly".into()]).unwrap_err();
        assert!(matches!(e, ResolveError::Syntax(_)), "{e}");
        let plain = resolve(&["a:1".into(), "dns:///127.0.0.1:7".into()]).unwrap();
        assert_eq!(plain[0], Target { addr: "a:1".into(), key: "a:1".into() });
        assert_eq!(plain[1].addr, "127.0.0.1:7");
    }

    #[test]
    fn more_runtimes_than_the_limit_are_refused() {
        let many: Vec<String> = (0..=crate::limits::MAX_RUNTIMES)
            .map(|i| format!("10.0.{}.{}:1", i / 256, i % 256))
            .collect();
        assert!(matches!(resolve(&many), Err(ResolveError::TooMany { .. })));
        assert_eq!(resolve(&many[1..]).unwrap().len(), crate::limits::MAX_RUNTIMES);
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
