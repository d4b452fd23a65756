//! How glibc's allocator gives memory back. By default it maps every block above a threshold
//! that adapts up to 32 MiB afresh and returns the top of the heap once 2x that is free, so the
//! tensors a forward frees and allocates again (score tiles, activations, the VAE's 8-32 MB
//! planes) come back as fresh pages, each zeroed by the kernel on first touch: 100,000 page faults
//! and 5 % of a tiny storyboard's CPU time on one thread, more on two. With a fixed 32 MiB
//! mapping threshold and 256 MiB of free heap kept, they are reused; larger blocks (FLUX's
//! weights) are still mapped and returned when freed.

/// Blocks at least this large get their own mapping: glibc's largest mapping threshold.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the heap's top kept for reuse rather than returned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: i32 = 256 << 20;

/// Sets the allocator's policy: call first thing in `main`, before other threads start.
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation parameters; called before any other
    // thread allocates.
    unsafe {
        // Both are performance hints: if glibc refuses one, allocation works as before.
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
