//! glibc's malloc tuning: a fixed mmap threshold, so resident memory stays near the memory tier's capacity.
//!
//! A cache holds many 1 KiB to 64 MiB values and frees them in LRU order. With glibc's defaults the mmap
//! threshold grows dynamically up to 32 MiB after the first large free, so large values land in the heap
//! arenas, fragment them, and what is freed there stays resident. [`tune`] sets a fixed threshold of
//! [`MMAP_THRESHOLD_BYTES`] (values above it get their own mapping, returned to the system on free) unless the
//! operator set `MALLOC_MMAP_THRESHOLD_` (glibc's own variable, which then wins). Measured by
//! `scripts/bench-compare --only fill` (a 256 MiB memory tier filled to twice its capacity with 1 KiB..8 MiB
//! values, two runs each): 345 and 357 MiB resident with the defaults, 266 to 272 MiB with the fixed
//! threshold, against the 344 MiB the floor allows.
//!
//! It leaves the arena count alone: `MALLOC_ARENA_MAX=2` did not lower resident memory further and made the
//! async workers contend on the arena locks (hybrid Get: 55 against 48 us of server CPU per call). It does
//! nothing on other allocators.
//!
//! The process uses the system allocator for every block. A split allocator (mimalloc for blocks up to
//! 64 KiB, glibc above, behind an `unsafe impl GlobalAlloc`) was measured against it with
//! `scripts/ab-compare` (paired alternating rounds, 50 x 1 calls, 1 KiB values). Throughput glibc/split, 8
//! rounds: memory Get 0.89, memory Set 1.01, hybrid Get 1.03, hybrid Set 0.98; again with 12 rounds on a
//! quieter machine: memory Get 1.03, hybrid Get 0.95. Single rounds ranged from 0.41 to 1.47, so no
//! difference stands out of the noise, and the split kept more memory resident after the fill above (288
//! and 293 MiB against 269 and 272). It was removed.

/// The mmap threshold set unless `MALLOC_MMAP_THRESHOLD_` is given.
pub const MMAP_THRESHOLD_BYTES: i32 = 128 << 10;

/// What [`tune`] applied, for the startup log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tuning {
    /// The fixed mmap threshold set, if any.
    pub mmap_threshold: Option<i32>,
}

/// Applies the settings. Call it first thing in `main`, before any thread starts.
pub fn tune() -> Tuning {
    let mut tuning = Tuning::default();
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none()
        && set_mmap_threshold(MMAP_THRESHOLD_BYTES)
    {
        tuning.mmap_threshold = Some(MMAP_THRESHOLD_BYTES);
    }
    tuning
}

/// The workspace's one `unsafe` block (the workspace lint is `deny`, not `forbid`, for it).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_mmap_threshold(bytes: i32) -> bool {
    // SAFETY: mallopt only changes allocator parameters; it takes plain integers and is documented as
    // safe to call at any time (glibc serialises it with the arena locks).
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_mmap_threshold(_bytes: i32) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_threshold() {
        assert!(set_mmap_threshold(MMAP_THRESHOLD_BYTES));
    }
}
