//! What the plain-`rustc` benchmark programs (`bench/wake.rs`, `bench/session_floor.rs`) need of
//! libc without crates: CPU time from `getrusage`. Included with `#[path = "lib/sys.rs"] mod sys;`.
#![allow(dead_code)]

#[repr(C)]
struct Timeval {
    sec: i64,
    usec: i64,
}
#[repr(C)]
struct Rusage {
    utime: Timeval,
    stime: Timeval,
    rest: [i64; 14],
}
extern "C" {
    fn getrusage(who: i32, r: *mut Rusage) -> i32;
}

/// `getrusage`'s `who`: the whole process.
pub const RUSAGE_SELF: i32 = 0;
/// `getrusage`'s `who`: the calling thread.
pub const RUSAGE_THREAD: i32 = 1;

/// User + system CPU seconds of `who` (the process or the calling thread).
pub fn cpu_seconds(who: i32) -> f64 {
    // SAFETY: a zeroed rusage is valid and getrusage fills it.
    let mut r: Rusage = unsafe { std::mem::zeroed() };
    unsafe { getrusage(who, &mut r) };
    r.utime.sec as f64 + r.utime.usec as f64 / 1e6 + r.stime.sec as f64 + r.stime.usec as f64 / 1e6
}
