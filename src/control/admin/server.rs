//! The admin server's connection handling: an accept loop that backs off when the process runs
//! out of file descriptors, and hyper HTTP/1.1 connections that each carry one request under a
//! whole-request deadline.
//!
//! Why not `axum::serve`: it retries a failed `accept` after a fixed second but offers no bound
//! on a request as a whole (a client trickling one byte every few seconds holds a connection
//! for ever), and a request cut at the deadline should get `408`, not a silent close. Here:
//!
//! - one request per connection (`keep_alive(false)`), so the connection's deadline is the
//!   request's deadline: head, body, handler and response together;
//! - a head still incomplete at the deadline is answered `408` on the raw socket (hyper would
//!   close without a status); a handler still running is cut by the deadline middleware in
//!   [`super::routes`], which answers `408` itself;
//! - parse errors get hyper's automatic answers: a request line without a version `400`, a
//!   target longer than 65,534 bytes `414` (the head buffer is [`MAX_HEAD_BYTES`], so a 1 MB
//!   URL is read in full and answered `414`; a head beyond the buffer gets `431`);
//! - after the answer the socket is drained for a moment before it is closed ("lingering
//!   close"), so a client still sending an oversized body reads the `413` instead of a reset.

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Largest request head read: a little above 1 MiB of target plus headers.
pub const MAX_HEAD_BYTES: usize = 2 * 1024 * 1024;
/// How long, and how much, the socket is drained after the answer before closing it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024 * 1024;
/// Longest pause between two `accept` attempts while file descriptors are exhausted.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The deadline of the request being served, for the deadline middleware.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Instant);

/// Bounds of the admin server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The whole request (head, body, handler, answer) must be done within this.
    pub request_timeout: Duration,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { request_timeout: Duration::from_secs(10), max_connections: 64 }
    }
}

/// The pause before the next `accept` after `err`, given the previous pause (zero after a
/// success). Running out of descriptors (or kernel memory) will not fix itself at once: without
/// a pause the loop would spin at full speed on an error it gets back immediately.
pub fn accept_backoff(err: &std::io::Error, prev: Duration) -> Duration {
    let exhausted = matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    );
    if exhausted {
        (prev * 2).clamp(Duration::from_millis(10), ACCEPT_BACKOFF_MAX)
    } else {
        // A failed handshake (ECONNABORTED, ...) concerns one client: retry soon, but never
        // in a tight loop if the error keeps coming.
        (prev * 2).clamp(Duration::from_millis(1), Duration::from_millis(100))
    }
}

/// Accepts connections for ever, each served on its own task.
pub async fn accept_loop(listener: TcpListener, router: Router, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut pause = Duration::ZERO;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, _)) => {
                pause = Duration::ZERO;
                let router = router.clone();
                tokio::spawn(async move {
                    serve_one(stream, router, limits.request_timeout).await;
                    drop(slot);
                });
            }
            Err(e) => {
                if pause.is_zero() {
                    tracing::warn!(error = %e, "admin: accept failed; backing off");
                }
                pause = accept_backoff(&e, pause);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

type BoxFuture = Pin<
    Box<dyn Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send>,
>;

/// Serves one request on `stream`, all of it within `timeout`.
async fn serve_one(stream: TcpStream, router: Router, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let started = Arc::new(AtomicBool::new(false));
    let seen = started.clone();
    let router = hyper_util::service::TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        seen.store(true, Ordering::Relaxed);
        req.extensions_mut().insert(Deadline(deadline));
        let call = hyper::service::Service::call(&router, req);
        Box::pin(call) as BoxFuture
    });
    let mut conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(MAX_HEAD_BYTES)
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service);
    let finished = tokio::select! {
        r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => r.is_ok(),
        () = tokio::time::sleep_until(deadline) => false,
    };
    if finished {
        linger(conn.into_parts().io.into_inner()).await;
        return;
    }
    if !started.load(Ordering::Relaxed) {
        // The head never arrived in full: nothing was written yet, so answer on the socket.
        let mut io = conn.into_parts().io.into_inner();
        let body = "{\"error\":\"request not complete within the deadline\"}\n";
        let head = format!(
            "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let write = async {
            io.write_all(head.as_bytes()).await?;
            io.write_all(body.as_bytes()).await
        };
        if tokio::time::timeout(LINGER, write).await.is_ok_and(|r| r.is_ok()) {
            linger(io).await;
        }
        return;
    }
    // The handler answers 408 at the deadline itself; give its answer a moment to be written.
    let _ = tokio::time::timeout(LINGER, std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)))
        .await;
}

/// Closes our side, then reads and discards what the client still sends (for a moment), so
/// that closing with unread data does not reset the connection before the client read the
/// answer.
async fn linger(mut io: TcpStream) {
    let _ = io.shutdown().await;
    let drain = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0usize;
        while total < LINGER_BYTES {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> std::io::Error {
        std::io::Error::from_raw_os_error(code)
    }

    #[test]
    fn running_out_of_descriptors_backs_off_up_to_a_second() {
        let mut pause = Duration::ZERO;
        let mut seen = vec![];
        for _ in 0..10 {
            pause = accept_backoff(&os(libc::EMFILE), pause);
            seen.push(pause);
        }
        assert_eq!(seen[0], Duration::from_millis(10));
        assert_eq!(seen[1], Duration::from_millis(20));
        assert_eq!(*seen.last().unwrap(), ACCEPT_BACKOFF_MAX);
        assert!(accept_backoff(&os(libc::ENFILE), Duration::ZERO) >= Duration::from_millis(10));
    }

    #[test]
    fn a_one_off_accept_error_pauses_briefly() {
        let first = accept_backoff(&os(libc::ECONNABORTED), Duration::ZERO);
        assert_eq!(first, Duration::from_millis(1));
        let mut pause = first;
        for _ in 0..20 {
            pause = accept_backoff(&os(libc::ECONNABORTED), pause);
        }
        assert_eq!(pause, Duration::from_millis(100));
    }
}
