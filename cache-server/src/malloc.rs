//! glibc allocator settings that keep resident memory near the memory tier's configured capacity.
//!
//! With glibc's defaults, a process that holds many 1 KiB to 64 MiB values and frees them at random (an LRU
//! cache) keeps far more resident memory than it holds: the mmap threshold grows dynamically up to 32 MiB after
//! the first large free, so large values land in the heap arenas, fragment them, and what is freed there
//! stays resident. Measured by `scripts/bench-compare` (256 MiB tier filled twice with 1 KiB..8 MiB values): 355
//! MiB resident with the defaults, 271 to 278 MiB with a fixed threshold.
//!
//! [`tune`] sets a fixed mmap threshold of 128 KiB (values above it get their own mapping, returned to the
//! system on free) unless the operator set `MALLOC_MMAP_THRESHOLD_` (glibc's own variable, which then wins).
//! It leaves the arena count alone: `MALLOC_ARENA_MAX=2` did not lower resident memory further and made the
//! async workers contend on the arena locks (hybrid Get: 55 against 48 us of server CPU per call). It does
//! nothing on other allocators.

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
        && set(Param::MmapThreshold, MMAP_THRESHOLD_BYTES)
    {
        tuning.mmap_threshold = Some(MMAP_THRESHOLD_BYTES);
    }
    tuning
}

enum Param {
    MmapThreshold,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set(param: Param, value: i32) -> bool {
    let param = match param {
        Param::MmapThreshold => libc::M_MMAP_THRESHOLD,
    };
    // SAFETY: mallopt only changes allocator parameters; it takes plain integers and is documented as
    // safe to call at any time (glibc serialises it with the arena locks).
    unsafe { libc::mallopt(param, value) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set(_param: Param, _value: i32) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        assert!(set(Param::MmapThreshold, MMAP_THRESHOLD_BYTES));
    }
}
