//! A TLS client stream that keeps no buffers while it waits: rustls' unbuffered connection over
//! a TCP stream, for pooled connections and per-device sessions (`mqtts://`, `wss://`).
//!
//! A buffered rustls connection (what `tokio-rustls` wraps) keeps a 4 KiB receive buffer for
//! its whole life, plus queues of plaintext and ciphertext; a fleet of per-device sessions
//! waits most of the time, so those 4 KiB a session were a sixth of its memory
//! (`bench/mqtt_identity.sh`, RSS per TLS session). Here the TLS records read from the socket
//! go into one scratch buffer per thread (the shard's), are decrypted there and copied to the
//! reader's buffer; a session keeps bytes of its own only while a record is split across reads
//! (`partial`), the reader took less than a record held (`plain`), or the socket took less than
//! was written (`unsent`), and gives them back once they are used.
//!
//! Bounds: `partial` holds less than one record (rustls refuses a longer one), `plain` less
//! than one read of the scratch buffer (two records), `unsent` one write (a write takes at most
//! 64 KiB of plaintext, and none while bytes are unsent); the handshake buffers at most 128 KiB
//! of what the server sends ([`MAX_HANDSHAKE_BUFFER`]).

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The largest TLS record on the wire (16 KiB of plaintext, 256 bytes of expansion, the header).
const MAX_RECORD: usize = 16 * 1024 + 256 + 5;

/// The most the handshake buffers of what the server sends (doubling from 4 KiB).
const MAX_HANDSHAKE_BUFFER: usize = 128 * 1024;

thread_local! {
    /// Where this thread's TLS streams read and decrypt records, and encrypt what they write.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The scratch buffer, at least `len` bytes long.
fn with_scratch<T>(len: usize, f: impl FnOnce(&mut Vec<u8>) -> T) -> T {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0);
        }
        f(&mut s)
    })
}

/// Sends `bytes` of TLS records on `io`: as much as the socket takes now, the rest kept in
/// `unsent` (which is empty when this is called).
fn send(
    io: &mut TcpStream,
    unsent: &mut Vec<u8>,
    cx: &mut Context<'_>,
    bytes: &[u8],
) -> io::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        match Pin::new(&mut *io).poll_write(cx, &bytes[at..]) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => at += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    if at < bytes.len() {
        unsent.extend_from_slice(&bytes[at..]);
    }
    Ok(())
}

/// Appends the handshake or alert record the connection has to send to `out`.
fn encode_into(
    s: &mut rustls::unbuffered::EncodeTlsData<'_, rustls::client::ClientConnectionData>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let at = out.len();
    out.resize(at + 1024, 0);
    let n = match s.encode(&mut out[at..]) {
        Ok(n) => n,
        Err(EncodeError::InsufficientSize(e)) => {
            out.resize(at + e.required_size, 0);
            s.encode(&mut out[at..]).map_err(io::Error::other)?
        }
        Err(e) => return Err(io::Error::other(e)),
    };
    out.truncate(at + n);
    Ok(())
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A TLS connection over `io` after its handshake.
pub struct TlsStream {
    io: TcpStream,
    conn: UnbufferedClientConnection,
    /// The start of a record not yet complete (empty between records).
    partial: Vec<u8>,
    /// Decrypted bytes the reader has not taken yet, from `plain_at`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Encrypted bytes the socket has not taken yet, from `unsent_at`.
    unsent: Vec<u8>,
    unsent_at: usize,
    /// The server sent close_notify (or closed the socket): reads end.
    eof: bool,
    /// close_notify sent.
    closed: bool,
}

/// Runs the handshake of `conn` over `io`: the stream once the connection may send
/// application data.
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    mut io: TcpStream,
) -> io::Result<TlsStream> {
    use tokio::io::AsyncReadExt;
    let mut conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
    // The handshake's own buffers, given back when it ends.
    let mut incoming = vec![0u8; 4096];
    let mut used = 0;
    let mut outgoing: Vec<u8> = vec![];
    let mut plain = vec![];
    loop {
        let UnbufferedStatus { mut discard, state } =
            conn.process_tls_records(&mut incoming[..used]);
        let mut done = false;
        match state.map_err(tls_error)? {
            ConnectionState::EncodeTlsData(mut s) => encode_into(&mut s, &mut outgoing)?,
            ConnectionState::TransmitTlsData(s) => {
                io.write_all(&outgoing).await?;
                outgoing.clear();
                s.done();
            }
            ConnectionState::BlockedHandshake => {
                if used == incoming.len() {
                    // rustls refuses a handshake message over 64 KiB; a flight that fills
                    // this much without completing one is not a TLS server's.
                    if incoming.len() >= MAX_HANDSHAKE_BUFFER {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "tls handshake: the server sent over 128 KiB without a complete message",
                        ));
                    }
                    incoming.resize(incoming.len() * 2, 0);
                }
                let n = io.read(&mut incoming[used..]).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "tls handshake: closed by the server",
                    ));
                }
                used += n;
            }
            ConnectionState::ReadTraffic(mut s) => {
                while let Some(r) = s.next_record() {
                    let r = r.map_err(tls_error)?;
                    discard += r.discard;
                    plain.extend_from_slice(r.payload);
                }
            }
            ConnectionState::WriteTraffic(_) => done = true,
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake: closed by the server",
                ));
            }
            _ => return Err(io::Error::other("tls handshake: unexpected state")),
        }
        // What was processed goes, also when the handshake is done (TLS 1.2: the server's
        // Finished came with the records that ended it).
        if discard > 0 {
            incoming.copy_within(discard..used, 0);
            used -= discard;
        }
        if done {
            break;
        }
    }
    Ok(TlsStream {
        io,
        conn,
        partial: incoming[..used].to_vec(),
        plain,
        plain_at: 0,
        unsent: vec![],
        unsent_at: 0,
        eof: false,
        closed: false,
    })
}

impl TlsStream {
    /// How this connection's handshake went (full or resumed).
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.conn.handshake_kind()
    }

    /// Writes what is unsent; ready once the socket took all of it.
    fn poll_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.unsent_at < self.unsent.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.unsent[self.unsent_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.unsent_at += n;
        }
        self.unsent = vec![];
        self.unsent_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Sends `bytes` of TLS records: see [`send`].
    fn send(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> io::Result<()> {
        send(&mut self.io, &mut self.unsent, cx, bytes)
    }

    /// Processes the records in `buf` (read into the scratch buffer): decrypted application
    /// data goes to `out` while it has room, the rest to `plain`; what the connection must send
    /// (a key update's answer, an alert) is sent. Returns the bytes of an incomplete record
    /// left at the end.
    fn process(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        out: &mut ReadBuf<'_>,
    ) -> io::Result<usize> {
        let mut start = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut buf[start..]);
            let mut send = None;
            match state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut s) => {
                    while let Some(r) = s.next_record() {
                        let r = r.map_err(tls_error)?;
                        discard += r.discard;
                        let now = out.remaining().min(r.payload.len());
                        out.put_slice(&r.payload[..now]);
                        self.plain.extend_from_slice(&r.payload[now..]);
                    }
                }
                ConnectionState::EncodeTlsData(mut s) => {
                    let mut bytes = vec![];
                    encode_into(&mut s, &mut bytes)?;
                    send = Some(bytes);
                }
                ConnectionState::TransmitTlsData(s) => s.done(),
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.eof = true;
                    start += discard;
                    return Ok(buf.len() - start);
                }
                // Nothing more in `buf` to process.
                ConnectionState::WriteTraffic(_) | ConnectionState::BlockedHandshake => {
                    start += discard;
                    return Ok(buf.len() - start);
                }
                _ => return Err(io::Error::other("tls: unexpected state")),
            }
            start += discard;
            if let Some(out) = send {
                // Behind what is already unsent, in order.
                if self.unsent_at < self.unsent.len() {
                    self.unsent.extend_from_slice(&out);
                } else {
                    self.send(cx, &out)?;
                }
            }
        }
    }

    /// Hands over decrypted bytes waiting in `plain`.
    fn take_plain(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.plain.len() - self.plain_at);
        out.put_slice(&self.plain[self.plain_at..self.plain_at + n]);
        self.plain_at += n;
        if self.plain_at == self.plain.len() {
            self.plain = vec![];
            self.plain_at = 0;
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let start = out.filled().len();
        loop {
            if me.plain_at < me.plain.len() {
                me.take_plain(out);
                return Poll::Ready(Ok(()));
            }
            if me.eof || out.filled().len() > start {
                return Poll::Ready(Ok(()));
            }
            // Read after the start of a split record, into the scratch buffer.
            let keep = me.partial.len();
            let read = with_scratch(keep + 2 * MAX_RECORD, |scratch| -> Poll<io::Result<()>> {
                scratch[..keep].copy_from_slice(&me.partial);
                let mut rb = ReadBuf::new(&mut scratch[keep..]);
                ready!(Pin::new(&mut me.io).poll_read(cx, &mut rb))?;
                let n = rb.filled().len();
                if n == 0 {
                    me.eof = true;
                    return Poll::Ready(if keep > 0 {
                        Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "tls: closed in the middle of a record",
                        ))
                    } else {
                        Ok(())
                    });
                }
                let left = me.process(cx, &mut scratch[..keep + n], out)?;
                let end = keep + n;
                me.partial = scratch[end - left..end].to_vec();
                Poll::Ready(Ok(()))
            });
            ready!(read)?;
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        ready!(me.poll_unsent(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // At most a few records per call: the scratch buffer stays bounded.
        let data = &data[..data.len().min(4 * 16 * 1024)];
        loop {
            let UnbufferedStatus { state, .. } = me.conn.process_tls_records(&mut []);
            match state.map_err(tls_error)? {
                ConnectionState::WriteTraffic(mut w) => {
                    let size = data.len() + 4 * (MAX_RECORD - 16 * 1024) + 64;
                    let sent = with_scratch(size, |scratch| -> io::Result<()> {
                        let n = match w.encrypt(data, scratch) {
                            Ok(n) => n,
                            Err(EncryptError::InsufficientSize(e)) => {
                                scratch.resize(e.required_size, 0);
                                w.encrypt(data, scratch).map_err(io::Error::other)?
                            }
                            Err(e) => return Err(io::Error::other(e)),
                        };
                        send(&mut me.io, &mut me.unsent, cx, &scratch[..n])
                    });
                    sent?;
                    return Poll::Ready(Ok(data.len()));
                }
                ConnectionState::EncodeTlsData(mut s) => encode_into(&mut s, &mut me.unsent)?,
                ConnectionState::TransmitTlsData(s) => {
                    s.done();
                    ready!(me.poll_unsent(cx))?;
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
                }
                _ => return Poll::Ready(Err(io::Error::other("tls: not ready to write"))),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_unsent(cx))?;
        Pin::new(&mut me.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_unsent(cx))?;
        if !me.closed {
            me.closed = true;
            let UnbufferedStatus { state, .. } = me.conn.process_tls_records(&mut []);
            if let Ok(ConnectionState::WriteTraffic(mut w)) = state {
                let mut out = vec![0u8; 64];
                if let Ok(n) = w.queue_close_notify(&mut out) {
                    out.truncate(n);
                    me.unsent = out;
                }
            }
            ready!(me.poll_unsent(cx))?;
        }
        Pin::new(&mut me.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! Against an in-process rustls server (tokio-rustls, the buffered API) on loopback: the
    //! server echoes what it reads. The client trusts any server certificate here (the
    //! certificate checks are rustls' own, tested against real brokers in `tests/it`).
    use super::*;
    use crate::config::identity::{Ca, KeyKind, Request};
    use rumqttc::tokio_rustls::TlsAcceptor;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = &self.0.signature_verification_algorithms;
            rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = &self.0.signature_verification_algorithms;
            rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// An echo server (every connection: read, write back, until EOF; then close_notify), its
    /// address, and a client configuration for it with one-ticket resumption.
    async fn echo_server(tls12: bool) -> (std::net::SocketAddr, Arc<rustls::ClientConfig>) {
        let (ca_pem, key_pem) = crate::config::identity::x509::test_ca(3);
        let ca = Ca::from_pem(&ca_pem, &key_pem).unwrap();
        let issued = ca
            .issue(&Request {
                seed: 3,
                device_id: "server",
                common_name: "localhost",
                sans: &[],
                key: KeyKind::EcdsaP256,
                not_before_ms: 1_700_000_000_000,
                validity_ms: 900_000_000_000,
            })
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] =
            if tls12 { &[&rustls::version::TLS12] } else { &[&rustls::version::TLS13] };
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(issued.cert_der)],
                PrivateKeyDer::try_from(issued.key_der).unwrap(),
            )
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else { return };
                    let mut buf = vec![0u8; 7000];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown().await;
                });
            }
        });
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
            .with_no_client_auth();
        client.resumption = crate::sink::mqtt::identity::one_server_resumption();
        (addr, Arc::new(client))
    }

    async fn open(addr: std::net::SocketAddr, config: &Arc<rustls::ClientConfig>) -> TlsStream {
        let tcp = TcpStream::connect(addr).await.unwrap();
        connect(config.clone(), ServerName::try_from("localhost").unwrap(), tcp).await.unwrap()
    }

    /// Bytes that tell where they are in the stream.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    async fn echo_checks(tls12: bool) {
        let (addr, config) = echo_server(tls12).await;
        let mut s = open(addr, &config).await;
        assert_eq!(s.handshake_kind(), Some(rustls::HandshakeKind::Full));
        // Small writes, each read back whole.
        for i in 0..50u8 {
            let msg = [i; 37];
            s.write_all(&msg).await.unwrap();
            let mut back = [0u8; 37];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg);
        }
        // 1 MiB at once: many records, writes the socket takes in part, records split across
        // reads, read back through a small buffer while the writing goes on.
        let big = pattern(1 << 20);
        let (mut r, mut w) = tokio::io::split(s);
        let writer = {
            let big = big.clone();
            tokio::spawn(async move {
                w.write_all(&big).await.unwrap();
                w.flush().await.unwrap();
                w
            })
        };
        let mut got = Vec::with_capacity(big.len());
        let mut buf = [0u8; 1000];
        while got.len() < big.len() {
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0, "EOF after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == big, "the echo differs");
        let w = writer.await.unwrap();
        let mut s = r.unsplit(w);
        // Nothing is kept while idle.
        assert!(s.partial.capacity() == 0 && s.plain.capacity() == 0 && s.unsent.capacity() == 0);
        // Our close_notify: the server sees a clean end and closes with its own; we read EOF.
        s.shutdown().await.unwrap();
        let mut rest = vec![];
        assert_eq!(s.read_to_end(&mut rest).await.unwrap(), 0);
        // The next connection resumes the session from the ticket kept.
        let again = open(addr, &config).await;
        assert_eq!(again.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    }

    #[tokio::test]
    async fn tls13_echoes_small_and_large_writes_closes_cleanly_and_resumes() {
        echo_checks(false).await;
    }

    #[tokio::test]
    async fn tls12_echoes_small_and_large_writes_closes_cleanly_and_resumes() {
        echo_checks(true).await;
    }

    #[tokio::test]
    async fn a_server_that_never_answers_the_handshake_is_a_timeout_not_a_hang() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_, config) = echo_server(false).await;
        let tls = crate::sink::mqtt::transport::Tls {
            config,
            name: ServerName::try_from("localhost").unwrap(),
        };
        let tcp = TcpStream::connect(addr).await.unwrap();
        let e = tls.connect(tcp, std::time::Duration::from_millis(200)).await.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        drop(listener);
    }
}
