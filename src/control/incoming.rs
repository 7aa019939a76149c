//! The gRPC server's accept loop, with a back-off when file descriptors run out.
//!
//! `accept` fails at once with `EMFILE`/`ENFILE` while the process (or the system) has no free
//! descriptor, and keeps failing until a connection closes; a loop that retries at once burns a
//! whole core meanwhile (measured: `--nofile 64` and 100 idle connections kept the control
//! thread at 100% CPU). This stream waits instead, 5 ms after the first failure, doubling up to
//! 1 s, and resets once an accept succeeds. Per-connection errors (`ECONNABORTED`, ...) are
//! skipped; the listener keeps serving.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_stream::Stream;

/// First wait after running out of descriptors.
pub const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest wait between tries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepted connections of a listener, never ending and never spinning.
pub struct Incoming {
    listener: TcpListener,
    backoff: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Accept failures for lack of descriptors (for the log).
    exhausted: u64,
    /// Nothing is accepted until this is set: connections wait in the listen backlog while
    /// the run starts its shards, so they cannot use up the descriptors the shards need.
    open: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Incoming {
    /// Accepts once `open` resolves.
    pub fn new(listener: TcpListener, open: impl Future<Output = ()> + Send + 'static) -> Incoming {
        Incoming {
            listener,
            backoff: BACKOFF_MIN,
            sleep: None,
            exhausted: 0,
            open: Some(Box::pin(open)),
        }
    }
}

/// True for errors that mean "no resources now" rather than "this connection failed".
pub fn is_resource_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// The next wait after `current`.
pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(BACKOFF_MAX)
}

impl Stream for Incoming {
    type Item = io::Result<TcpStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(open) = this.open.as_mut() {
            if open.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.open = None;
        }
        loop {
            if let Some(s) = this.sleep.as_mut() {
                if s.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.sleep = None;
            }
            match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((stream, _))) => {
                    this.backoff = BACKOFF_MIN;
                    let _ = stream.set_nodelay(true);
                    return Poll::Ready(Some(Ok(stream)));
                }
                Poll::Ready(Err(e)) if is_resource_error(&e) => {
                    this.exhausted += 1;
                    if this.exhausted.is_power_of_two() {
                        tracing::warn!(error = %e, failures = this.exhausted, wait_ms = this.backoff.as_millis() as u64, "gRPC: cannot accept a connection (out of file descriptors); waiting");
                    }
                    this.sleep = Some(Box::pin(tokio::time::sleep(this.backoff)));
                    this.backoff = next_backoff(this.backoff);
                }
                // A connection that failed before it was accepted: skip it.
                Poll::Ready(Err(e)) => tracing::debug!(error = %e, "gRPC: accept failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_a_second() {
        let mut d = BACKOFF_MIN;
        let mut seen = vec![];
        for _ in 0..12 {
            seen.push(d.as_millis());
            d = next_backoff(d);
        }
        assert_eq!(seen[..4], [5, 10, 20, 40]);
        assert_eq!(*seen.last().unwrap(), 1000);
    }

    #[test]
    fn descriptor_exhaustion_is_told_apart_from_a_failed_connection() {
        assert!(is_resource_error(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_resource_error(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_resource_error(&io::Error::from_raw_os_error(libc::ECONNABORTED)));
    }
}
