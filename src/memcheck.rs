//! Memory pre-check: estimate what a fleet needs before allocating it, and compare it with what
//! this process may use.
//!
//! A fleet too large for the box used to abort half-way through building (`memory allocation
//! failed`, exit 134). The estimate comes from measured figures (119 B per device of a
//! 3-field profile over an idle process, 1M devices; 10 MiB for an idle process), and the limit is the smallest of
//! the cgroup's `memory.max` (minus what the cgroup already uses), `RLIMIT_AS` (minus this
//! process's current address space), the kernel's `MemAvailable` and, if set,
//! `IOT_SIM_MEMORY_LIMIT` (minus this process's resident memory). `validate`, `run` and
//! `serve` refuse a fleet whose estimate exceeds the limit (exit 2), and `SpawnDevices` answers
//! `RESOURCE_EXHAUSTED`; the message names the estimate and the limit.
//!
//! The estimate does not cover network sinks' queues (bounded by each sink's `queue_size`,
//! and filled only while a broker is slower than the fleet).

use crate::sim::profile::Fleet;
use std::fmt;

/// Bytes per device besides its random streams: the 24-byte device struct, a 16-byte wheel
/// node, a 4-byte level-0 key, rounded up (measured: 119 B for 3 streams = 48 + 3 x 24).
pub const DEVICE_BYTES: u64 = 48;
/// Bytes per random stream (`SlotState`: a Xoroshiro128++ state + one f64).
pub const SLOT_BYTES: u64 = 24;
/// Headroom for the slab growth (the shards reserve 1/16 more than they expect) and
/// allocator slack, in sixteenths.
const HEADROOM_16THS: u64 = 18;
/// The process itself, idle (measured: ~10 MiB), plus per-shard buffers.
pub const BASE_BYTES: u64 = 16 << 20;
/// Per shard: the file sink buffer, payload buffers, the wheel's level-0 arrays.
pub const SHARD_BYTES: u64 = 4 << 20;
/// Per profile and shard: statistics (two lazily sized histograms) and the compiled profile.
pub const PROFILE_BYTES: u64 = 64 << 10;

/// Allocations from this size up get their own mapping (glibc `M_MMAP_THRESHOLD`).
pub const MMAP_THRESHOLD: usize = 4 << 20;

/// How much more than asked a heap grows by (glibc `M_TOP_PAD`; default 128 KiB).
pub const TOP_PAD: usize = 1 << 20;

/// Sets glibc malloc up for a process whose large arrays grow while it runs: a shard's device
/// table, generator states and wheel nodes (tens of MB at a million devices) grow when devices
/// are spawned. By default glibc raises its mmap threshold as large blocks are freed (up to
/// 32 MiB), after which such an array lives in a heap, and growing it copies it whole on the
/// shard thread and faults the new copy in: 5-15 ms stalls of the ticks during a 100,000-device
/// spawn (issue 25). From [`MMAP_THRESHOLD`] up, a block is a mapping of its own: growing it is
/// an `mremap` (no copy), and freeing it gives it back to the system at once. A thread's heap
/// grows by an `mprotect` that took 1-4 ms on this VM while other threads faulted pages in
/// (strace of a spawn): by [`TOP_PAD`] at a time it grows 8 times less often. Called first
/// thing in `main`; no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TOP_PAD, TOP_PAD as libc::c_int);
    }
}

/// How much of its heap a shard thread makes writable up front ([`reserve_heap`]).
pub const THREAD_HEAP_RESERVE: usize = 32 << 20;
/// The same for a control thread, which may hold more at once (a large SpawnDevices: ~60 MB of
/// specs for 100,000 devices); a glibc heap holds at most 64 MiB.
pub const CONTROL_HEAP_RESERVE: usize = 48 << 20;

/// Makes the calling thread's malloc heap writable up to `bytes` at once. A thread's glibc heap
/// grows one `mprotect` per new 4 KiB of high-water mark (`M_TOP_PAD` only pads the main heap),
/// and each `mprotect` waits for the process's mmap lock: `strace` of a 100,000-device spawn
/// counted ~60,000 of them in the process, 1-2.5 ms each on the shard threads now and then, in
/// the middle of their ticks (issue 25). Allocating and freeing blocks under the mmap threshold
/// raises the mark in a few calls; the pages are not touched (freed, the heap is trimmed back),
/// so the resident size does not change. Once per thread, when it starts.
pub fn reserve_heap(bytes: usize) {
    const BLOCK: usize = MMAP_THRESHOLD / 2;
    let blocks: Vec<Vec<u8>> = (0..bytes / BLOCK).map(|_| Vec::with_capacity(BLOCK)).collect();
    drop(std::hint::black_box(blocks));
}

/// Bytes `count` devices of a profile with `slots` random streams need.
pub fn devices_bytes(count: u64, slots: usize) -> u64 {
    let each = DEVICE_BYTES + SLOT_BYTES * slots as u64;
    count.saturating_mul(each).saturating_mul(HEADROOM_16THS) / 16
}

/// The estimated memory of a whole fleet on `shards` shards.
pub fn fleet_bytes(fleet: &Fleet, shards: usize) -> u64 {
    let devices: u64 = fleet
        .groups
        .iter()
        .map(|g| devices_bytes(g.count, fleet.profiles.get(g.profile).map_or(0, |p| p.slots)))
        .fold(0u64, u64::saturating_add);
    let shards = shards as u64;
    BASE_BYTES
        .saturating_add(SHARD_BYTES * shards)
        .saturating_add(PROFILE_BYTES * shards * fleet.profiles.len() as u64)
        .saturating_add(devices)
}

/// An environment variable that caps the memory this process assumes it may use (resident),
/// for boxes whose limits it cannot read: bytes, or with a `K`/`M`/`G` (or `KiB`/`MiB`/`GiB`)
/// suffix (powers of 1024).
pub const LIMIT_VAR: &str = "IOT_SIM_MEMORY_LIMIT";

/// `512MiB`, `2G`, `1048576` -> bytes.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits].parse().ok()?;
    let shift = match s[digits..].trim() {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

/// How much more memory this process may use, and which limit says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    pub bytes: u64,
    pub source: &'static str,
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", human(self.bytes), self.source)
    }
}

/// The smallest of the limits that apply now; `None` if none can be read.
pub fn room() -> Option<Room> {
    let mut best: Option<Room> = None;
    let mut offer = |bytes: u64, source: &'static str| {
        if best.as_ref().is_none_or(|b| bytes < b.bytes) {
            best = Some(Room { bytes, source });
        }
    };
    if let Some((max, current)) = cgroup_memory() {
        offer(max.saturating_sub(current), "cgroup memory.max");
    }
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } == 0
        && lim.rlim_cur != libc::RLIM_INFINITY
    {
        offer(
            lim.rlim_cur.saturating_sub(proc_kb("/proc/self/status", "VmSize:") * 1024),
            "RLIMIT_AS",
        );
    }
    if let Some(limit) = std::env::var(LIMIT_VAR).ok().and_then(|v| parse_bytes(&v)) {
        offer(limit.saturating_sub(proc_kb("/proc/self/status", "VmRSS:") * 1024), LIMIT_VAR);
    }
    let avail = proc_kb("/proc/meminfo", "MemAvailable:");
    if avail > 0 {
        offer(avail * 1024, "MemAvailable");
    }
    best
}

/// `Err` with a message naming the estimate and the limit when `need` bytes do not fit.
pub fn check(need: u64, what: &str) -> Result<(), String> {
    check_against(need, what, room())
}

/// [`check`] against a given room (tests).
pub fn check_against(need: u64, what: &str, room: Option<Room>) -> Result<(), String> {
    match room {
        Some(r) if need > r.bytes => Err(format!(
            "{what} needs about {} of memory (estimated from {} B per device plus {} B per \
             field stream), but this process may use only {r} more; use fewer devices or raise \
             the limit",
            human(need),
            DEVICE_BYTES,
            SLOT_BYTES
        )),
        _ => Ok(()),
    }
}

/// `1.5 GiB`, `320 MiB`, `12 KiB`.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.0} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

/// The cgroup (v2, else v1) memory limit and current usage of this process, if limited.
fn cgroup_memory() -> Option<(u64, u64)> {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    let cgroup = read("/proc/self/cgroup").unwrap_or_default();
    // v2: "0::/path"
    if let Some(path) = cgroup.lines().find_map(|l| l.strip_prefix("0::")) {
        let dir = format!("/sys/fs/cgroup{}", path.trim_end_matches('/'));
        for d in [dir.as_str(), "/sys/fs/cgroup"] {
            if let Some(max) = read(&format!("{d}/memory.max")) {
                let max: u64 = max.parse().ok()?; // "max" = unlimited
                let current =
                    read(&format!("{d}/memory.current")).and_then(|c| c.parse().ok()).unwrap_or(0);
                return Some((max, current));
            }
        }
    }
    // v1
    let max: u64 = read("/sys/fs/cgroup/memory/memory.limit_in_bytes")?.parse().ok()?;
    if max >= 1 << 60 {
        return None;
    }
    let current = read("/sys/fs/cgroup/memory/memory.usage_in_bytes")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Some((max, current))
}

/// A `kB` figure from a `/proc` file (`VmSize:`, `MemAvailable:`); 0 if absent.
fn proc_kb(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_matches_the_measured_bytes_per_device() {
        // Peak RSS over an idle process: 119.1 B per device of the 3-field profile, 1M devices
        // (bench/README.md, "Lighter devices").
        let per = devices_bytes(1_000_000, 3) as f64 / 1e6;
        assert!((120.0..=150.0).contains(&per), "{per} B per device");
    }

    #[test]
    fn a_fleet_beyond_the_room_is_refused_naming_both_figures() {
        let room = Some(Room { bytes: 8 << 30, source: "cgroup memory.max" });
        let need = devices_bytes(80_000_000, 3);
        let e = check_against(need, "this fleet", room.clone()).unwrap_err();
        assert!(e.contains("needs about 10.1 GiB"), "{e}");
        assert!(e.contains("8.0 GiB (cgroup memory.max)"), "{e}");
        assert!(check_against(devices_bytes(1_000_000, 3), "x", room).is_ok());
        assert!(check_against(u64::MAX, "x", None).is_ok());
    }

    #[test]
    fn memory_sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("512MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("2G"), Some(2 << 30));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("99999999999T"), None);
    }

    #[test]
    fn the_room_of_this_process_is_found() {
        // /proc/meminfo exists on every Linux box this runs on.
        let r = room().unwrap();
        assert!(r.bytes > 0, "{r}");
    }
}
