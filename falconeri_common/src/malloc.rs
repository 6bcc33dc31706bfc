//! How glibc's allocator treats the large buffers of the log path.
//!
//! A chunk of an attempt's log is a buffer of a few MiB in the worker and
//! pieces of hundreds of KiB in falconerid, made and freed once per chunk.
//! By default glibc serves allocations above 128 KiB with a fresh `mmap`
//! and gives freed memory at the top of a heap back to the kernel past
//! 128 KiB, so every chunk's pages are faulted in and zeroed again: in
//! `bench/logs` (a job printing 1 MiB per datum) that was tens of
//! thousands of page faults per 1,000 MiB in each process. Raising both
//! thresholds keeps those buffers in the heap, where the next chunk reuses
//! them, at the price of holding a few MiB more while idle.

/// Allocations up to this size come from the heap rather than their own
/// mapping: above a worker's chunk (2 MiB and a line) with room to spare.
pub const MMAP_THRESHOLD_BYTES: i32 = 8 * 1024 * 1024;

/// Free memory at the top of a heap is kept up to this size.
pub const TRIM_THRESHOLD_BYTES: i32 = 16 * 1024 * 1024;

/// Applies the thresholds above to this process; call it first thing in
/// `main`, before threads start. Does nothing on other allocators than
/// glibc's.
#[allow(unsafe_code)]
pub fn keep_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning parameters;
    // glibc takes its own lock, and these values are in range.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
    }
}
