//! Memory hints for the big per-shard arrays. A hint changes no result, only speed.

/// Asks the kernel to back a vector's allocation (its whole capacity) with transparent huge
/// pages. With a million devices the device, generator-state and wheel arrays are touched at
/// random; on 4 KiB pages nearly every access misses the TLB, and a software prefetch that
/// misses the TLB may be dropped. Best effort: errors (no THP support) are ignored.
pub fn advise_huge_pages<T>(v: &Vec<T>) {
    const PAGE: usize = 4096;
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if bytes < 4 << 20 {
        return;
    }
    let start = v.as_ptr() as usize;
    let aligned = start.div_ceil(PAGE) * PAGE;
    let end = (start + bytes) / PAGE * PAGE;
    if end > aligned {
        // SAFETY: the range lies inside the vector's own allocation; MADV_HUGEPAGE only sets a
        // preference on it and never changes its contents.
        unsafe { libc::madvise(aligned as *mut libc::c_void, end - aligned, libc::MADV_HUGEPAGE) };
    }
}
