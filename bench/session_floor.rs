//! The floor of per-device MQTT sessions on this machine (issue 25, "lighter sessions"), without
//! iot-sim: N plain TCP sockets to a broker, each one device publishing once a second at QoS 1,
//! spread evenly over the second, on T threads (as iot-sim's shards). Nothing is generated,
//! encoded or measured per message beyond what the wire needs: a PUBLISH built from a fixed
//! template (its packet id patched in), one `send` per message on its own socket, one `recv` per
//! PUBACK. What this costs per message is what any one-socket-per-device client pays here.
//!
//! Two ways to wait, both waking on whole milliseconds like iot-sim's shards:
//! - `epoll`: between grid steps the thread sleeps in `epoll_wait` and reads each PUBACK as it
//!   arrives (an event-driven client; iot-sim's sessions work this way);
//! - `grid`: the thread sleeps to the next millisecond and reads what arrived then (one wake-up
//!   per millisecond whatever the broker does).
//!
//! Built by `bench/session_floor.sh` with plain `rustc -O` (no crates). Arguments:
//! `PORT SESSIONS THREADS SECONDS STEADY_FROM MODE PAYLOAD_BYTES`; prints one JSON object.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[path = "lib/sys.rs"]
mod sys;

#[repr(C, packed)]
#[derive(Clone, Copy)]
struct EpollEvent {
    events: u32,
    data: u64,
}
extern "C" {
    fn epoll_create1(flags: i32) -> i32;
    fn epoll_ctl(epfd: i32, op: i32, fd: i32, ev: *mut EpollEvent) -> i32;
    fn epoll_wait(epfd: i32, evs: *mut EpollEvent, max: i32, timeout_ms: i32) -> i32;
    fn getpid() -> i32;
}
const EPOLLIN: u32 = 1;
const EPOLL_CTL_ADD: i32 = 1;

/// Voluntary context switches of the whole process (each sleep that slept is one).
fn voluntary_switches() -> u64 {
    let mut total = 0;
    let dir = format!("/proc/{}/task", unsafe { getpid() });
    for t in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let s = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for l in s.lines() {
            if let Some(v) = l.strip_prefix("voluntary_ctxt_switches:") {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(&body);
    p
}

/// A QoS 1 PUBLISH and the offset of its packet id.
fn publish_packet(topic: &str, payload: &[u8]) -> (Vec<u8>, usize) {
    let mut p = vec![0x32];
    remaining_length(2 + topic.len() + 2 + payload.len(), &mut p);
    p.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    p.extend_from_slice(topic.as_bytes());
    let at = p.len();
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    (p, at)
}

struct Shared {
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
}

fn shard(
    port: u16,
    ids: std::ops::Range<usize>,
    total: usize,
    grid: bool,
    payload: Arc<Vec<u8>>,
    shared: Arc<Shared>,
    ready: Arc<Barrier>,
    start_at: Arc<std::sync::Mutex<Option<(Instant, Instant)>>>,
) {
    let mut socks = Vec::with_capacity(ids.len());
    let mut packets = Vec::with_capacity(ids.len());
    for i in ids.clone() {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).ok();
        s.write_all(&connect_packet(&format!("floor-{i:06}"))).expect("CONNECT");
        let mut ack = [0u8; 4];
        s.read_exact(&mut ack).expect("CONNACK");
        assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK refused");
        s.set_nonblocking(true).expect("nonblocking");
        socks.push(s);
        packets.push(publish_packet(&format!("bench/probe-{i:06}"), &payload));
    }
    let ep = unsafe { epoll_create1(0) };
    for (k, s) in socks.iter().enumerate() {
        let mut ev = EpollEvent { events: EPOLLIN, data: k as u64 };
        unsafe { epoll_ctl(ep, EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
    }
    // Which of this thread's devices fall due in each millisecond of the second (device i of
    // `total` at i * 1000 / total ms, as evenly as iot-sim's phases).
    let mut due: Vec<Vec<usize>> = vec![Vec::new(); 1000];
    for (k, i) in ids.enumerate() {
        due[i * 1000 / total].push(k);
    }
    let mut pkid = vec![0u16; socks.len()];
    let mut events = vec![EpollEvent { events: 0, data: 0 }; 256];
    let mut buf = [0u8; 4096];
    // All threads connected (main reads the time), then the clock's origin is set.
    ready.wait();
    ready.wait();
    let (origin, until) = start_at.lock().unwrap().expect("origin");
    let mut ms: u64 = 0;
    let read_acks = |k: usize, socks: &mut Vec<TcpStream>, buf: &mut [u8]| loop {
        match socks[k].read(buf) {
            Ok(0) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Ok(n) => {
                // Only PUBACKs come back (4 bytes each).
                shared.acked.fetch_add((n / 4) as u64, Ordering::Relaxed);
                if n < buf.len() {
                    break;
                }
            }
            Err(_) => break,
        }
    };
    // Waits up to `timeout_ms` for PUBACKs and reads every socket that has some.
    let drain = |timeout_ms: i32,
                 events: &mut Vec<EpollEvent>,
                 socks: &mut Vec<TcpStream>,
                 buf: &mut [u8]| {
        let n = unsafe { epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, timeout_ms) };
        for e in &events[..n.max(0) as usize] {
            read_acks(e.data as usize, socks, buf);
        }
    };
    loop {
        let at = origin + Duration::from_millis(ms);
        if at >= until {
            break;
        }
        // Wait for the grid step: asleep (grid) or reading PUBACKs as they come (epoll).
        loop {
            let now = Instant::now();
            if now >= at {
                break;
            }
            if grid {
                std::thread::sleep(at - now);
                continue;
            }
            let wait_ms = (at - now).as_micros().div_ceil(1000) as i32;
            drain(wait_ms, &mut events, &mut socks, &mut buf);
        }
        if grid {
            drain(0, &mut events, &mut socks, &mut buf);
        }
        for &k in &due[(ms % 1000) as usize] {
            pkid[k] = pkid[k] % 65535 + 1;
            let (p, off) = &mut packets[k];
            p[*off..*off + 2].copy_from_slice(&pkid[k].to_be_bytes());
            match socks[k].write(p) {
                Ok(n) if n == p.len() => {
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        ms += 1;
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: &str| a.get(i).cloned().unwrap_or_else(|| d.to_string());
    let port: u16 = arg(1, "1883").parse().expect("PORT");
    let n: usize = arg(2, "19000").parse().expect("SESSIONS");
    let threads: usize = arg(3, "2").parse().expect("THREADS");
    let secs: f64 = arg(4, "30").parse().expect("SECONDS");
    let steady_from: f64 = arg(5, "5").parse().expect("STEADY_FROM");
    let mode = arg(6, "epoll");
    let grid = match mode.as_str() {
        "epoll" => false,
        "grid" => true,
        m => panic!("MODE is epoll or grid, not {m:?}"),
    };
    let bytes: usize = arg(7, "140").parse().expect("PAYLOAD_BYTES");
    let payload = Arc::new((0..bytes).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>());
    let shared = Arc::new(Shared {
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let ready = Arc::new(Barrier::new(threads + 1));
    // Every thread connects its share first; the clock starts once all are connected.
    let start_at = Arc::new(std::sync::Mutex::new(None::<(Instant, Instant)>));
    let t_connect = Instant::now();
    let mut handles = Vec::new();
    for t in 0..threads {
        let ids = (n * t / threads)..(n * (t + 1) / threads);
        let (payload, shared, ready, start_at) =
            (payload.clone(), shared.clone(), ready.clone(), start_at.clone());
        handles.push(std::thread::spawn(move || {
            shard(port, ids, n, grid, payload, shared, ready, start_at)
        }));
    }
    ready.wait();
    let connect_s = t_connect.elapsed().as_secs_f64();
    let origin = Instant::now() + Duration::from_millis(20);
    *start_at.lock().unwrap() = Some((origin, origin + Duration::from_secs_f64(secs)));
    ready.wait();
    std::thread::sleep((origin + Duration::from_secs_f64(steady_from)).saturating_duration_since(Instant::now()));
    // (CPU, sent, acked, wake-ups, time) at both ends of the window.
    let sample = || {
        (
            sys::cpu_seconds(sys::RUSAGE_SELF),
            shared.sent.load(Ordering::Relaxed),
            shared.acked.load(Ordering::Relaxed),
            voluntary_switches(),
            Instant::now(),
        )
    };
    let (c0, s0, a0, v0, w0) = sample();
    let window_end = origin + Duration::from_secs_f64(secs - 1.0);
    std::thread::sleep(window_end.saturating_duration_since(Instant::now()));
    let (c1, s1, a1, v1, w1) = sample();
    for h in handles {
        h.join().expect("thread");
    }
    let wall = (w1 - w0).as_secs_f64();
    let msgs = (a1 - a0) as f64;
    println!(
        "{{\"mode\": \"{mode}\", \"sessions\": {n}, \"threads\": {threads}, \"payload_bytes\": {bytes}, \
         \"connect_s\": {connect_s:.2}, \"window_s\": {wall:.2}, \"sent\": {}, \"acked\": {}, \"errors\": {}, \
         \"window_msgs_per_s\": {:.0}, \"cpu_us_per_msg\": {:.2}, \"cores\": {:.3}, \"wakeups_per_s\": {:.0}, \
         \"window_sent\": {}}}",
        shared.sent.load(Ordering::Relaxed),
        shared.acked.load(Ordering::Relaxed),
        shared.errors.load(Ordering::Relaxed),
        msgs / wall,
        (c1 - c0) * 1e6 / msgs,
        (c1 - c0) / wall,
        (v1 - v0) as f64 / wall,
        s1 - s0,
    );
}
