//! Clock reads: the monotonic clock and a sub-millisecond timer (the wall-clock edges of a
//! shard), and the wall clock (ms and µs since the epoch) for log lines, default start times
//! and arrival times.
//!
//! tokio's own timer has 1 ms granularity and wakes ~1 ms late; a `timerfd` armed with an
//! absolute CLOCK_MONOTONIC deadline and awaited through `AsyncFd` wakes within tens of
//! microseconds (see ARCHITECTURE-BRIEF section 2), so that is what the realtime loop sleeps on.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use tokio::io::unix::AsyncFd;

/// CLOCK_MONOTONIC in nanoseconds.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall-clock "now" in ms since the epoch: the default sim start.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Wall-clock time in µs since the Unix epoch: arrival times compare with wall-mapped intended
/// times, and a downlink command's `sent_at` is wall-clock time.
pub fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Blocks the calling thread until the monotonic clock reads `deadline_ns`: one
/// `clock_nanosleep` (an absolute deadline, so an interrupted sleep resumes to the same time).
/// For a thread with nothing else to wait for; [`PreciseTimer`] when a runtime's tasks share it.
pub fn sleep_until(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: `ts` is a valid timespec; no remainder is asked for with TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if rc != libc::EINTR {
            return;
        }
    }
}

/// A one-shot timer on CLOCK_MONOTONIC with sub-millisecond wake-ups.
pub struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
}

impl PreciseTimer {
    /// Creates the timer; must be called inside a tokio runtime.
    pub fn new() -> io::Result<PreciseTimer> {
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe {
            libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd stays open and is the same descriptor for the AsyncFd's lifetime.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(PreciseTimer { fd })
    }

    /// Sleeps until the monotonic clock reads `deadline_ns`.
    pub async fn sleep_until(&mut self, deadline_ns: u64) -> io::Result<()> {
        if deadline_ns <= mono_ns() {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: the descriptor is a valid timerfd and `spec` outlives the call.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let res = guard.try_io(|inner| {
                let mut buf = [0u8; 8];
                // SAFETY: reading 8 bytes into a local buffer from a valid descriptor.
                let n = unsafe { libc::read(inner.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
                if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
            });
            match res {
                Ok(Ok(())) => {
                    // The expiry is consumed: the descriptor stays unreadable until the next
                    // one, so the next sleep waits for epoll instead of reading in vain first.
                    guard.clear_ready();
                    return Ok(());
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_never_wakes_early() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut t = PreciseTimer::new().unwrap();
            for _ in 0..20 {
                let deadline = mono_ns() + 300_000;
                t.sleep_until(deadline).await.unwrap();
                assert!(mono_ns() >= deadline);
            }
            // A deadline in the past returns at once.
            t.sleep_until(0).await.unwrap();
        });
    }

    #[test]
    fn a_plain_sleep_never_wakes_early() {
        for _ in 0..20 {
            let deadline = mono_ns() + 300_000;
            sleep_until(deadline);
            assert!(mono_ns() >= deadline);
        }
        let before = mono_ns();
        sleep_until(0);
        assert!(mono_ns() - before < 1_000_000_000, "a past deadline returns at once");
    }
}
