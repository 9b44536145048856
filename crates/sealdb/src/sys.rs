//! The only module with `unsafe` code: calls into the C library that have no safe wrapper.

/// Returns memory the allocator holds but no longer uses to the operating system.
///
/// Memtables are many small allocations freed together after a flush; glibc's malloc keeps
/// such memory in its arenas, so without this the resident set never shrinks after a burst
/// of writes. A no-op on other C libraries.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[expect(unsafe_code, reason = "glibc's malloc_trim has no safe wrapper")]
    // SAFETY: malloc_trim takes a plain integer, touches only the allocator's own free
    // lists under the allocator's locks, and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
