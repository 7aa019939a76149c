//! The bare cost of one sleep-and-wake of a thread on this machine (issue 25, "idle fleets"),
//! without iot-sim: a loop of absolute-deadline sleeps on a fixed period, CPU per wake-up read
//! from the thread's own scheduler run time (/proc/thread-self/schedstat, exact) and from
//! getrusage (user + system). Built by `bench/wake.sh` with plain `rustc -O` (no crates).
use std::time::{Duration, Instant};

#[path = "lib/sys.rs"]
mod sys;

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}
extern "C" {
    fn poll(fds: *mut PollFd, n: u64, timeout_ms: i32) -> i32;
    fn sched_yield() -> i32;
}

/// The calling thread's CPU: (scheduler run time, rusage user + system), seconds.
fn cpu() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let run = s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (run / 1e9, sys::cpu_seconds(sys::RUSAGE_THREAD))
}

fn measure(name: &str, period_us: u64, wall_s: f64, mut wait: impl FnMut(Duration)) -> String {
    let n = (wall_s * 1e6 / period_us as f64) as u64;
    let (r0, u0) = cpu();
    let t0 = Instant::now();
    let mut next = Instant::now();
    let mut late = Vec::with_capacity(n as usize);
    for _ in 0..n {
        next += Duration::from_micros(period_us);
        let now = Instant::now();
        if next > now {
            wait(next - now);
        }
        late.push(Instant::now().saturating_duration_since(next).as_micros() as u64);
    }
    let (r1, u1) = cpu();
    late.sort_unstable();
    let p = |q: f64| late[((late.len() - 1) as f64 * q) as usize];
    format!(
        "{{\"mechanism\": \"{name}\", \"period_us\": {period_us}, \"wakeups\": {n}, \"wall_s\": {:.2}, \
         \"cpu_us_per_wakeup_schedstat\": {:.2}, \"cpu_us_per_wakeup_rusage\": {:.2}, \
         \"wake_late_us_p50\": {}, \"wake_late_us_p99\": {}}}",
        t0.elapsed().as_secs_f64(),
        (r1 - r0) * 1e6 / n as f64,
        (u1 - u0) * 1e6 / n as f64,
        p(0.5),
        p(0.99)
    )
}

fn main() {
    let wall: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let mut rows = Vec::new();
    for period in [1000, 2000, 10_000] {
        rows.push(measure("thread::sleep (clock_nanosleep)", period, wall, std::thread::sleep));
    }
    rows.push(measure("poll(timeout 1 ms)", 1000, wall, |_| unsafe {
        poll(std::ptr::null_mut(), 0, 1);
    }));
    // A syscall that switches nothing, for scale.
    let (r0, _) = cpu();
    let k = 100_000;
    for _ in 0..k {
        unsafe { sched_yield() };
    }
    let (r1, _) = cpu();
    println!(
        "{{\"wake\": [\n  {}\n], \"sched_yield_us\": {:.3}}}",
        rows.join(",\n  "),
        (r1 - r0) * 1e6 / k as f64
    );
}
