//! MQTT over WebSocket (`ws://`, `wss://`): the client handshake (RFC 6455 section 4, HTTP/1.1
//! Upgrade with `Sec-WebSocket-Protocol: mqtt`) and [`WsStream`], which frames the MQTT
//! session's bytes as masked binary frames and hands back the payload of the broker's binary
//! and continuation frames. The session stays sans-IO: it sees a byte stream as over TCP.
//!
//! Writes: each `poll_write` becomes one frame, held in a buffer that is drained by the next
//! write, flush, shutdown or read (the drive loops always wait in a read, so a frame the socket
//! could not take at once goes out as soon as it can). Reads: a ping is answered with a pong;
//! a close frame ends the connection (an error naming its code); a text frame is a protocol
//! error (MQTT is carried in binary frames).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The GUID of RFC 6455 that the accept key is derived with.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The most an HTTP response head may take.
const HEAD_MAX: usize = 8192;

pub use crate::config::sinks::WsTarget;

/// Performs the client handshake over `inner` (TCP or TLS) within `timeout`. A refusal
/// (a status other than 101, a wrong accept key, no `mqtt` subprotocol) is an error saying so.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut inner: S,
    target: &WsTarget,
    timeout: Duration,
) -> io::Result<WsStream<S>> {
    let mut nonce = [0u8; 16];
    let mut seed = [0u8; 8];
    fill_random(&mut nonce);
    fill_random(&mut seed);
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, nonce);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n",
        target.path, target.host
    );
    let exchange = async {
        inner.write_all(request.as_bytes()).await?;
        inner.flush().await?;
        let mut head = Vec::with_capacity(512);
        let mut chunk = [0u8; 512];
        let end = loop {
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if head.len() > HEAD_MAX {
                return Err(refused("the response head is too long"));
            }
            let n = inner.read(&mut chunk).await?;
            if n == 0 {
                return Err(refused("the server closed the connection during the handshake"));
            }
            head.extend_from_slice(&chunk[..n]);
        };
        check_response(&head[..end], &key)?;
        // What followed the head is already frame data.
        Ok(head.split_off(end))
    };
    let rest = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "websocket handshake timeout"))??;
    let seed = u64::from_le_bytes(seed) | 1;
    Ok(WsStream {
        inner,
        rbuf: rest,
        rpos: 0,
        payload_left: 0,
        wbuf: Vec::new(),
        wpos: 0,
        rng: seed,
        close: Close::Open,
    })
}

/// Why a server refused the upgrade; carried inside the handshake's `io::Error`.
#[derive(Debug)]
pub struct Refusal {
    /// The counted reason: `unauthorized` (401), `forbidden` (403), `not_found` (404),
    /// `status` (any other status but 101), `subprotocol` (101 without `mqtt`), `handshake`
    /// (a wrong accept key or Upgrade header, a head too long, closed mid-handshake).
    pub reason: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "websocket handshake refused: {}", self.detail)
    }
}

impl std::error::Error for Refusal {}

impl Refusal {
    /// The sink event a refusal is counted as (`mqtt.ws_refused_<reason>` in the report).
    pub fn event(&self) -> &'static str {
        match self.reason {
            "unauthorized" => "ws_refused_unauthorized",
            "forbidden" => "ws_refused_forbidden",
            "not_found" => "ws_refused_not_found",
            "status" => "ws_refused_status",
            "subprotocol" => "ws_refused_subprotocol",
            _ => "ws_refused_handshake",
        }
    }
}

/// The refusal inside a handshake error, if it was one (not a timeout or a socket error).
pub fn refusal(e: &io::Error) -> Option<&Refusal> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Refusal>())
}

fn refused_as(reason: &'static str, why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, Refusal { reason, detail: why.into() })
}

fn refused(why: impl Into<String>) -> io::Error {
    refused_as("handshake", why)
}

fn fill_random(out: &mut [u8]) {
    use ring::rand::SecureRandom;
    if ring::rand::SystemRandom::new().fill(out).is_err() {
        // Not expected on a supported OS; the clock still varies the key.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        for (i, b) in out.iter_mut().enumerate() {
            *b = (t >> ((i % 8) * 8)) as u8 ^ i as u8;
        }
    }
}

/// `Sec-WebSocket-Accept` for `key`.
pub fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest.as_ref())
}

/// Checks the server's response head (status line and headers, up to the blank line).
pub fn check_response(head: &[u8], key: &str) -> io::Result<()> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code != "101" {
        let reason = match code {
            "401" => "unauthorized",
            "403" => "forbidden",
            "404" => "not_found",
            _ => "status",
        };
        return Err(refused_as(reason, format!("status {:?}", status.trim())));
    }
    let (mut accept, mut protocol, mut upgrade) = (None, None, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "sec-websocket-accept" => accept = Some(value.to_string()),
            "sec-websocket-protocol" => protocol = Some(value.to_string()),
            "upgrade" => upgrade = Some(value.to_ascii_lowercase()),
            _ => {}
        }
    }
    if upgrade.as_deref() != Some("websocket") {
        return Err(refused(format!("Upgrade header {upgrade:?}, expected websocket")));
    }
    if accept.as_deref() != Some(accept_key(key).as_str()) {
        return Err(refused(format!("Sec-WebSocket-Accept {accept:?} does not match the key")));
    }
    match protocol {
        Some(p) if p.eq_ignore_ascii_case("mqtt") => Ok(()),
        other => {
            Err(refused_as("subprotocol", format!("subprotocol {other:?}, expected \"mqtt\"")))
        }
    }
}

/// An MQTT byte stream carried in WebSocket frames over `S`.
pub struct WsStream<S> {
    inner: S,
    /// Bytes read from `inner` not yet parsed, from `rpos`.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Payload bytes of the current data frame still to come.
    payload_left: u64,
    /// Framed bytes not yet written to `inner`, from `wpos`.
    wbuf: Vec<u8>,
    wpos: usize,
    /// xorshift64 state for the masking keys.
    rng: u64,
    close: Close,
}

/// The closing handshake (RFC 6455 5.5.1): who sent a close frame.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Close {
    Open,
    /// Ours is queued or sent (orderly shutdown).
    Sent,
    /// The broker's arrived; ours, echoing its code, was queued in answer.
    Answered,
}

/// Close code 1000: normal closure.
const NORMAL_CLOSURE: [u8; 2] = 1000u16.to_be_bytes();

/// Appends one frame (FIN set) with `opcode`, masked with `mask`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    let body = &mut out[start..];
    let m = u32::from_ne_bytes(mask);
    let mut chunks = body.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ m;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// A frame header parsed from the front of a buffer.
#[derive(Debug, PartialEq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    pub len: u64,
    /// Bytes the header took.
    pub size: usize,
}

/// Parses a server frame's header; `Ok(None)` when more bytes are needed. A masked server
/// frame is an error (RFC 6455 5.1).
pub fn parse_header(b: &[u8]) -> io::Result<Option<Header>> {
    if b.len() < 2 {
        return Ok(None);
    }
    if b[1] & 0x80 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "websocket: masked frame from the server",
        ));
    }
    let (len, size) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
        127 if b.len() >= 10 => {
            let mut l = [0u8; 8];
            l.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(l), 10)
        }
        126 | 127 => return Ok(None),
        n => (n as u64, 2),
    };
    Ok(Some(Header { fin: b[0] & 0x80 != 0, opcode: b[0] & 0x0f, len, size }))
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    fn mask(&mut self) -> [u8; 4] {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x as u32).to_ne_bytes()
    }

    /// Writes what is buffered; `Ready(Ok)` once all of it is out.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.wpos..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.wpos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }

    fn queue_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mask = self.mask();
        encode_frame(&mut self.wbuf, opcode, payload, mask);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Frames written earlier (or a pong) go out while the task waits for the broker.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            let avail = this.rbuf.len() - this.rpos;
            if this.payload_left > 0 && avail > 0 {
                let n = (this.payload_left.min(avail as u64) as usize).min(out.remaining());
                out.put_slice(&this.rbuf[this.rpos..this.rpos + n]);
                this.rpos += n;
                this.payload_left -= n as u64;
                return Poll::Ready(Ok(()));
            }
            if this.payload_left == 0
                && let Some(h) = parse_header(&this.rbuf[this.rpos..])?
            {
                match h.opcode {
                    0x0 | 0x2 => {
                        this.rpos += h.size;
                        this.payload_left = h.len;
                        continue;
                    }
                    0x8..=0xA => {
                        if h.len > 125 {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "websocket: control frame longer than 125 bytes",
                            )));
                        }
                        let total = h.size + h.len as usize;
                        if avail >= total {
                            let start = this.rpos + h.size;
                            let body = this.rbuf[start..start + h.len as usize].to_vec();
                            this.rpos += total;
                            match h.opcode {
                                0x8 => {
                                    let code = (body.len() >= 2)
                                        .then(|| u16::from_be_bytes([body[0], body[1]]));
                                    // Answered with a close frame echoing its code (unless
                                    // ours went first), sent before the connection is lost.
                                    if this.close == Close::Open {
                                        this.close = Close::Answered;
                                        let echo = code.map_or(NORMAL_CLOSURE, u16::to_be_bytes);
                                        this.queue_frame(0x8, &echo);
                                        let _ = this.poll_drain(cx);
                                    }
                                    return Poll::Ready(Err(io::Error::new(
                                        io::ErrorKind::ConnectionAborted,
                                        format!("websocket closed by the broker (code {code:?})"),
                                    )));
                                }
                                0x9 => {
                                    this.queue_frame(0xA, &body);
                                    if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                                        return Poll::Ready(Err(e));
                                    }
                                }
                                _ => {}
                            }
                            continue;
                        }
                    }
                    op => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "websocket: unexpected frame opcode {op:#x} (MQTT needs binary frames)"
                            ),
                        )));
                    }
                }
            }
            // More bytes are needed.
            if this.rpos == this.rbuf.len() {
                this.rbuf.clear();
                this.rpos = 0;
            } else if this.rpos > 0 {
                this.rbuf.drain(..this.rpos);
                this.rpos = 0;
            }
            let len = this.rbuf.len();
            this.rbuf.resize(len + 4096, 0);
            let mut rb = ReadBuf::new(&mut this.rbuf[len..]);
            let r = Pin::new(&mut this.inner).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            this.rbuf.truncate(len + n);
            match r {
                Poll::Ready(Ok(())) if n == 0 => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // One frame at a time in the buffer: what was framed before goes out first.
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other.map(|r| r.map(|_| 0)),
        }
        this.queue_frame(0x2, buf);
        // Out at once where the socket takes it; else by the next write, flush or read.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    /// An orderly end: what is buffered, then a close frame (1000), then the inner stream's
    /// shutdown (the TCP FIN, or TLS close_notify first).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        if this.close == Close::Open {
            this.close = Close::Sent;
            this.queue_frame(0x8, &NORMAL_CLOSURE);
            std::task::ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn frame_round_trip_and_lengths() {
        for len in [0usize, 1, 5, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mask = [0x12, 0x34, 0x56, 0x78];
            let mut out = Vec::new();
            encode_frame(&mut out, 0x2, &payload, mask);
            assert_eq!(out[0], 0x82);
            assert_ne!(out[1] & 0x80, 0, "client frames are masked");
            // Unmask and parse as a server would (the mask bit cleared).
            let mut server = out.clone();
            server[1] &= 0x7f;
            let h = parse_header(&server).unwrap().unwrap();
            assert_eq!(h.len, len as u64);
            let body = &out[h.size + 4..];
            let unmasked: Vec<u8> = body.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            assert_eq!(unmasked, payload);
        }
    }

    #[test]
    fn masked_server_frame_is_an_error() {
        assert!(parse_header(&[0x82, 0x81, 0, 0, 0, 0, 0]).is_err());
        assert_eq!(parse_header(&[0x82]).unwrap(), None);
        assert_eq!(parse_header(&[0x82, 126, 0]).unwrap(), None);
    }

    #[test]
    fn refused_handshakes_say_why() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";
        check_response(ok.as_bytes(), key).unwrap();
        let e = check_response(b"HTTP/1.1 404 Not Found\r\n\r\n", key).unwrap_err();
        assert!(e.to_string().contains("404"), "{e}");
        let no_proto = ok.replace("Sec-WebSocket-Protocol: mqtt\r\n", "");
        let e = check_response(no_proto.as_bytes(), key).unwrap_err();
        assert!(e.to_string().contains("subprotocol"), "{e}");
        let bad_accept = ok.replace("s3pP", "xxxx");
        assert!(check_response(bad_accept.as_bytes(), key).is_err());
    }

    /// Ping is answered with a pong, data frames' payloads are joined, close ends the stream.
    #[tokio::test]
    async fn reads_frames_answers_ping_and_close() {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut ws = WsStream {
            inner: client,
            rbuf: Vec::new(),
            rpos: 0,
            payload_left: 0,
            wbuf: Vec::new(),
            wpos: 0,
            rng: 1,
            close: Close::Open,
        };
        // binary "ab" (not FIN), ping "p", continuation "c", close 1000.
        server
            .write_all(&[0x02, 2, b'a', b'b', 0x89, 1, b'p', 0x80, 1, b'c', 0x88, 2, 0x03, 0xe8])
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        let err = loop {
            match ws.read(&mut buf).await {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        assert_eq!(got, b"abc");
        assert!(err.to_string().contains("1000"), "{err}");
        // The pong: FIN + opcode 0xA, masked, payload "p".
        let mut pong = [0u8; 7];
        server.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong[0], 0x8A);
        assert_eq!(pong[1], 0x81);
        assert_eq!(pong[6] ^ pong[2], b'p');
        // The broker's close is answered with a close frame echoing its code.
        let mut close = [0u8; 8];
        server.read_exact(&mut close).await.unwrap();
        assert_eq!(close[..2], [0x88, 0x82]);
        assert_eq!([close[6] ^ close[2], close[7] ^ close[3]], [0x03, 0xe8]);
    }

    /// An orderly shutdown sends a close frame (1000) before the stream ends, once.
    #[tokio::test]
    async fn shutdown_sends_a_close_frame() {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut ws = WsStream {
            inner: client,
            rbuf: Vec::new(),
            rpos: 0,
            payload_left: 0,
            wbuf: Vec::new(),
            wpos: 0,
            rng: 7,
            close: Close::Open,
        };
        ws.write_all(b"xy").await.unwrap();
        ws.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        // binary "xy" (2 + 4 + 2 bytes), then close 1000 (2 + 4 + 2 bytes), then the end.
        assert_eq!(got.len(), 16, "{got:?}");
        assert_eq!(got[0], 0x82);
        assert_eq!(got[8..10], [0x88, 0x82]);
        let mask = &got[10..14];
        assert_eq!([got[14] ^ mask[0], got[15] ^ mask[1]], [0x03, 0xe8]);
    }

    #[test]
    fn refusals_are_classified_by_reason() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let reason = |head: &str| {
            let e = check_response(head.as_bytes(), key).unwrap_err();
            refusal(&e).map(|r| r.event())
        };
        assert_eq!(reason("HTTP/1.1 401 Unauthorized\r\n\r\n"), Some("ws_refused_unauthorized"));
        assert_eq!(reason("HTTP/1.1 403 Forbidden\r\n\r\n"), Some("ws_refused_forbidden"));
        assert_eq!(reason("HTTP/1.1 404 Not Found\r\n\r\n"), Some("ws_refused_not_found"));
        assert_eq!(reason("HTTP/1.1 500 Oops\r\n\r\n"), Some("ws_refused_status"));
        let no_proto = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                        Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(reason(no_proto), Some("ws_refused_subprotocol"));
        assert_eq!(reason("HTTP/1.1 101 OK\r\n\r\n"), Some("ws_refused_handshake"));
        let timeout = io::Error::new(io::ErrorKind::TimedOut, "t");
        assert!(refusal(&timeout).is_none());
    }
}
