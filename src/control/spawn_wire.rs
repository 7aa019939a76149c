//! `SpawnDevices` taken in its encoded form. The generated server decodes a request whole before
//! the handler runs: a 100,000-spec request (14.7 MB) became ~250 MB of prost structs (a
//! `Struct` of maps per spec) on a gRPC worker, ~0.6 s of decoding, and memory its arena kept
//! (issue 25). [`SpawnFastPath`] routes that one method to a handler that keeps the body as it
//! came and reads each spec's id and labels from its bytes; the rest of a spec is decoded only
//! the first time those bytes are seen (`spec::compile_encoded_specs`). Every other method goes
//! to the generated server unchanged, and the wire contract is the same.

use super::plane::ControlPlane;
use super::proto;
use super::service::MAX_MESSAGE_BYTES;
use bytes::{Buf, Bytes};
use prost::Message;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Service as TowerService, http};
use tonic::server::NamedService;
use tonic::{Status, body::Body};

/// The method's path.
pub(crate) const SPAWN_PATH: &str = "/simulator.v1.DeviceRuntimeService/SpawnDevices";

/// A `SpawnDevicesRequest` as it came: its encoded body.
pub(crate) struct EncodedSpawn(pub Bytes);

/// Decodes a request into [`EncodedSpawn`] (one copy of the body) and encodes the reply with
/// prost.
#[derive(Clone, Copy, Default)]
pub(crate) struct SpawnCodec;

pub(crate) struct SpawnDecoder;
pub(crate) struct ReplyEncoder;

impl Codec for SpawnCodec {
    type Encode = proto::SpawnDevicesResponse;
    type Decode = EncodedSpawn;
    type Encoder = ReplyEncoder;
    type Decoder = SpawnDecoder;
    fn encoder(&mut self) -> ReplyEncoder {
        ReplyEncoder
    }
    fn decoder(&mut self) -> SpawnDecoder {
        SpawnDecoder
    }
}

impl Decoder for SpawnDecoder {
    type Item = EncodedSpawn;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<EncodedSpawn>, Status> {
        Ok(Some(EncodedSpawn(src.copy_to_bytes(src.remaining()))))
    }
}

impl Encoder for ReplyEncoder {
    type Item = proto::SpawnDevicesResponse;
    type Error = Status;
    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(format!("encoding the reply: {e}")))
    }
}

/// The specs (field 1) of an encoded `SpawnDevicesRequest`, each still encoded; other fields
/// (`scenario_id`, unknown ones) are skipped.
pub(crate) fn request_specs(body: &[u8]) -> Result<Vec<&[u8]>, Status> {
    let bad = |e: String| Status::invalid_argument(format!("malformed SpawnDevicesRequest: {e}"));
    let mut buf = body;
    let mut specs = vec![];
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).map_err(|e| bad(e.to_string()))?;
        if tag == 1 && wire == WireType::LengthDelimited {
            specs.push(length_delimited(&mut buf).map_err(bad)?);
        } else {
            skip_field(wire, tag, &mut buf, DecodeContext::default())
                .map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(specs)
}

/// One length-delimited field's bytes.
fn length_delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let len = decode_varint(buf).map_err(|e| e.to_string())?;
    if len > buf.len() as u64 {
        return Err("a length runs past the end of the message".into());
    }
    let (field, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(field)
}

fn utf8(bytes: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not valid UTF-8"))
}

/// A `DeviceSpec`'s id (field 1) and labels (field 3, a map), and in `rest` the encoded bytes of
/// every other field, in order: two specs with the same `rest` compile to the same profile.
/// As prost decodes: the last of repeated scalar fields wins, as does the last of two labels
/// with the same key.
pub(crate) fn id_labels_rest(
    spec: &[u8],
    rest: &mut Vec<u8>,
) -> Result<(String, BTreeMap<String, String>), String> {
    rest.clear();
    let mut buf = spec;
    let mut id = String::new();
    let mut labels = BTreeMap::new();
    while buf.has_remaining() {
        let at = spec.len() - buf.len();
        let (tag, wire) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        match (tag, wire) {
            (1, WireType::LengthDelimited) => {
                id = utf8(length_delimited(&mut buf)?, "device_id")?;
            }
            (3, WireType::LengthDelimited) => {
                let mut entry = length_delimited(&mut buf)?;
                let (mut k, mut v) = (String::new(), String::new());
                while entry.has_remaining() {
                    let (t, w) = decode_key(&mut entry).map_err(|e| e.to_string())?;
                    match (t, w) {
                        (1, WireType::LengthDelimited) => {
                            k = utf8(length_delimited(&mut entry)?, "a label key")?
                        }
                        (2, WireType::LengthDelimited) => {
                            v = utf8(length_delimited(&mut entry)?, "a label value")?
                        }
                        _ => skip_field(w, t, &mut entry, DecodeContext::default())
                            .map_err(|e| e.to_string())?,
                    }
                }
                labels.insert(k, v);
            }
            _ => {
                skip_field(wire, tag, &mut buf, DecodeContext::default())
                    .map_err(|e| e.to_string())?;
                rest.extend_from_slice(&spec[at..spec.len() - buf.len()]);
            }
        }
    }
    Ok((id, labels))
}

/// The generated `DeviceRuntimeService` server with `SpawnDevices` taken in its encoded form.
#[derive(Clone)]
pub(crate) struct SpawnFastPath<S> {
    inner: S,
    plane: Arc<ControlPlane>,
}

impl<S> SpawnFastPath<S> {
    pub(crate) fn new(inner: S, plane: Arc<ControlPlane>) -> Self {
        SpawnFastPath { inner, plane }
    }
}

impl<S: NamedService> NamedService for SpawnFastPath<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S> TowerService<http::Request<Body>> for SpawnFastPath<S>
where
    S: TowerService<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != SPAWN_PATH {
            return Box::pin(self.inner.call(req));
        }
        let method = SpawnMethod(self.plane.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(SpawnCodec)
                .apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), Some(MAX_MESSAGE_BYTES));
            Ok(grpc.unary(method, req).await)
        })
    }
}

struct SpawnMethod(Arc<ControlPlane>);

impl tonic::server::UnaryService<EncodedSpawn> for SpawnMethod {
    type Response = proto::SpawnDevicesResponse;
    type Future = BoxFuture<Result<tonic::Response<proto::SpawnDevicesResponse>, Status>>;

    fn call(&mut self, req: tonic::Request<EncodedSpawn>) -> Self::Future {
        let plane = self.0.clone();
        Box::pin(async move {
            let body = req.into_inner().0;
            super::service::spawn(&plane, |plane| super::spec::compile_encoded_specs(&body, plane))
                .await
                .map(tonic::Response::new)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, labels: &[(&str, &str)], interval_s: i64) -> proto::DeviceSpec {
        proto::DeviceSpec {
            device_id: id.into(),
            device_type: "thermo".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            telemetry_interval: Some(prost_types::Duration { seconds: interval_s, nanos: 0 }),
            behavior_params: None,
            protocol: "null".into(),
            topic_template: String::new(),
        }
    }

    #[test]
    fn ids_labels_and_the_rest_are_read_as_prost_decodes_them() {
        let a = spec("dev-1", &[("zone", "north"), ("floor", "2")], 5);
        let b = spec("dev-2", &[("zone", "south")], 5);
        let c = spec("dev-3", &[], 7);
        let req =
            proto::SpawnDevicesRequest { specs: vec![a.clone(), b, c], scenario_id: "s-1".into() };
        let body = req.encode_to_vec();
        let specs = request_specs(&body).unwrap();
        assert_eq!(specs.len(), 3);
        let (mut ra, mut rb, mut rc) = (vec![], vec![], vec![]);
        let (id, labels) = id_labels_rest(specs[0], &mut ra).unwrap();
        assert_eq!(id, "dev-1");
        assert_eq!(labels, a.labels.into_iter().collect::<BTreeMap<_, _>>());
        id_labels_rest(specs[1], &mut rb).unwrap();
        id_labels_rest(specs[2], &mut rc).unwrap();
        // Same behaviour, other id and labels: the same rest; another interval: another.
        assert_eq!(ra, rb);
        assert_ne!(ra, rc);
        // The rest is the spec without id and labels.
        let mut bare = proto::DeviceSpec::decode(specs[0]).unwrap();
        bare.device_id.clear();
        bare.labels.clear();
        assert_eq!(ra, bare.encode_to_vec());
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        let body = proto::SpawnDevicesRequest {
            specs: vec![spec("d", &[("k", "v")], 1)],
            scenario_id: String::new(),
        }
        .encode_to_vec();
        // Every truncation of a valid request is refused or read as fewer specs, never a panic.
        for n in 0..body.len() {
            if let Ok(specs) = request_specs(&body[..n]) {
                for s in specs {
                    let _ = id_labels_rest(s, &mut vec![]);
                }
            }
        }
        assert!(request_specs(&[0x0a, 0xff, 0xff, 0xff, 0x0f]).is_err());
        // Where the reader accepts bytes, prost accepts them too and reads the same id and labels.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut b = body.clone();
            for _ in 0..3 {
                rng = crate::sim::seed::mix64(rng);
                let at = (rng % b.len() as u64) as usize;
                b[at] = (rng >> 32) as u8;
            }
            let Ok(specs) = request_specs(&b) else { continue };
            for s in specs {
                if let Ok((id, labels)) = id_labels_rest(s, &mut vec![])
                    && let Ok(spec) = proto::DeviceSpec::decode(s)
                {
                    assert_eq!(id, spec.device_id);
                    assert_eq!(labels, spec.labels.into_iter().collect::<BTreeMap<_, _>>());
                }
            }
        }
        // An id that is not UTF-8.
        let bad = [0x0a, 0x02, 0xc3, 0x28];
        assert!(id_labels_rest(&bad, &mut vec![]).unwrap_err().contains("UTF-8"));
    }
}
