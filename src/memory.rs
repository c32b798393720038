//! Giving freed heap memory back to the system.
//!
//! A session that named many secrets built large automata, and one that
//! sent huge messages had them parsed; dropping those frees the memory to
//! the allocator, but glibc's malloc keeps freed heap
//! pages in its arenas, so the process's RSS stays high after the session.
//! The shipped static binary uses musl's malloc, which returns large
//! allocations (mmap-backed) and freed groups itself, so there this is a
//! no-op.

/// Sessions that held at least this many secrets trim the heap when they
/// end: below that the automata are small and trimming after every one of
/// many short sessions would cost more than it gives back.
pub(crate) const TRIM_AFTER_SECRETS: usize = 1_000;

/// Sessions that received a message at least this big trim the heap when
/// they end: parsing it (a flood of secrets the limits then refuse, say)
/// took memory of the same order.
pub(crate) const LARGE_INPUT_BYTES: usize = 1024 * 1024;

/// Returns freed heap pages to the system (glibc only; see the module doc).
pub(crate) fn give_back_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: `malloc_trim` takes no pointers and only releases memory
        // glibc's allocator already holds as free; it is thread-safe.
        unsafe {
            malloc_trim(0);
        }
    }
}
