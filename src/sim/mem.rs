//! Memory hints and give-backs for the big per-shard arrays. Neither changes a result, only
//! speed and resident size.

use std::sync::atomic::{AtomicBool, Ordering};

static HUGE_PAGES: AtomicBool = AtomicBool::new(true);

/// Whether [`advise_huge_pages`] asks for huge pages: yes for the virtual clock, where the
/// engine runs flat out and TLB misses cost throughput; no for realtime, where a huge page
/// faulted in by a spawn that grew a shard's arrays is allocated (and, with the kernel's
/// `defrag = madvise`, compacted for) on the shard thread: 4-8 ms stalls of the ticks during a
/// 100,000-device SpawnDevices (issue 25), gone without the hint.
pub fn set_huge_pages(on: bool) {
    HUGE_PAGES.store(on, Ordering::Relaxed);
}

/// Asks the kernel to back a vector's allocation (its whole capacity) with transparent huge
/// pages. With a million devices the device, generator-state and wheel arrays are touched at
/// random; on 4 KiB pages nearly every access misses the TLB, and a software prefetch that
/// misses the TLB may be dropped. Best effort: errors (no THP support) are ignored.
pub fn advise_huge_pages<T>(v: &Vec<T>) {
    const PAGE: usize = 4096;
    if !HUGE_PAGES.load(Ordering::Relaxed) {
        return;
    }
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if bytes < 4 << 20 {
        return;
    }
    let start = v.as_ptr() as usize;
    // A block this large is a mapping of its own (`memcheck::tune_allocator`): glibc puts it 16
    // bytes into a page-aligned mapping of `malloc_usable_size + 16` bytes. Advising that whole
    // mapping keeps it one VMA; advising a part splits it, and then growing the vector cannot
    // be an `mremap` (EFAULT) and glibc copies it instead: 5-8 ms stalls of a shard when a
    // spawn grew its arrays (issue 25).
    // SAFETY: the pointer is the vector's live allocation, from the global (system) allocator.
    let usable = unsafe { libc::malloc_usable_size(v.as_ptr() as *mut libc::c_void) };
    let (aligned, end) = if (start - 16).is_multiple_of(PAGE) && usable >= bytes {
        (start - 16, start + usable)
    } else {
        (start.div_ceil(PAGE) * PAGE, (start + bytes) / PAGE * PAGE)
    };
    if end > aligned {
        // SAFETY: the range lies inside the vector's own allocation; MADV_HUGEPAGE only sets a
        // preference on it and never changes its contents.
        unsafe { libc::madvise(aligned as *mut libc::c_void, end - aligned, libc::MADV_HUGEPAGE) };
    }
}

/// Gives a vector's spare capacity back when it is at least 1 MiB: a large block is a mapping
/// of its own (`memcheck::tune_allocator`), which glibc shrinks in place (`mremap`).
pub fn shrink<T>(v: &mut Vec<T>) {
    if (v.capacity() - v.len()) * std::mem::size_of::<T>() >= 1 << 20 {
        v.shrink_to_fit();
    }
}
