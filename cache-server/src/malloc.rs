//! The process allocator: small blocks from mimalloc, large ones from glibc with a fixed mmap threshold.
//!
//! A gRPC call allocates a few dozen small blocks (headers, frames, the decoded message, the answer) and
//! frees them within microseconds; glibc's malloc alone cost ~4.4k of the 73.5k instructions a memory-mode
//! Set executed. [`SplitAllocator`] serves blocks up to [`SPLIT_BYTES`] from mimalloc (per-thread free lists,
//! no locks on the fast path) and larger ones from the system allocator. Counted by
//! `scripts/instructions-per-call` (server only, 1 KiB values, 50 x 1 calls): memory Set 73.5k -> 66.5k,
//! memory Get 69.6k -> 64.9k, hybrid Set 89.7k -> 80.0k, hybrid Get 87k -> 76k instructions per call.
//!
//! Large blocks stay with glibc because of resident memory: a cache holds many 1 KiB to 64 MiB values and
//! frees them in LRU order. With mimalloc for every block, a 256 MiB memory tier filled twice with
//! 1 KiB..8 MiB values kept 429 MiB resident (364 with `MIMALLOC_PURGE_DELAY=0`), against the 344 MiB the
//! floor allows; split at 64 KiB it keeps 282 to 289 MiB (glibc alone: 268 to 271), and 64 KiB rather than
//! 16 keeps Gets' larger buffers on the fast side (memory Get 67.9k instructions with a 16 KiB split).
//!
//! glibc's side: with its defaults the mmap threshold grows dynamically up to 32 MiB after the first large
//! free, so large values land in the heap arenas, fragment them, and what is freed there stays resident
//! (measured by `scripts/bench-compare`, same fill: 355 MiB resident with the defaults, 271 to 278 MiB with
//! a fixed threshold). [`tune`] sets a fixed mmap threshold of 128 KiB (values above it get their own
//! mapping, returned to the system on free) unless the operator set `MALLOC_MMAP_THRESHOLD_` (glibc's own
//! variable, which then wins). It leaves the arena count alone: `MALLOC_ARENA_MAX=2` did not lower resident
//! memory further and made the async workers contend on the arena locks (hybrid Get: 55 against 48 us of
//! server CPU per call). It does nothing on other allocators.
//!
//! The `cache-server` binary installs [`SplitAllocator`] as its global allocator unless it is built without
//! the default `mimalloc` feature (then every block comes from the system allocator).

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

/// Blocks up to this size come from mimalloc, larger ones from the system allocator.
pub const SPLIT_BYTES: usize = 64 << 10;

/// The global allocator of the `cache-server` binary: blocks up to [`SPLIT_BYTES`] from mimalloc, larger
/// ones from the system allocator (see the module documentation for why and what it measured).
///
/// Which side owns a block follows from its size alone, and Rust hands `dealloc` and `realloc` the layout
/// the block was allocated with, so a block always goes back to the allocator it came from.
#[cfg(feature = "mimalloc")]
#[derive(Debug, Clone, Copy, Default)]
pub struct SplitAllocator;

#[cfg(feature = "mimalloc")]
#[allow(unsafe_code)]
mod split {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::ffi::c_void;

    use libmimalloc_sys as mi;

    use super::{SPLIT_BYTES, SplitAllocator};

    /// The alignment mimalloc's plain `mi_malloc` guarantees (`MI_MAX_ALIGN_SIZE`) for blocks of 16 bytes
    /// or more; its 8-byte blocks are 8-aligned. A `Layout`'s size need not be a multiple of its alignment,
    /// so [`plain`] also asks for alignment <= size, as std's `System` allocator does. `mi_malloc_aligned`,
    /// which the `mimalloc` crate calls for every block, cost 1.3k (Get) to 2.5k (Set) more instructions per
    /// memory-mode call.
    const MI_MIN_ALIGN: usize = 16;

    fn small(size: usize) -> bool {
        size <= SPLIT_BYTES
    }

    /// Whether plain `mi_malloc` (no alignment argument) serves `layout`.
    fn plain(layout: Layout) -> bool {
        layout.align() <= MI_MIN_ALIGN && layout.align() <= layout.size()
    }

    // SAFETY (all methods): the `GlobalAlloc` contract gives `dealloc`/`realloc` the layout the block was
    // allocated with, so `small(layout.size())` names the allocator that owns `ptr`; mimalloc's functions
    // take any pointer they returned, and `System` is only handed blocks it allocated.
    unsafe impl GlobalAlloc for SplitAllocator {
        #[inline]
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if !small(layout.size()) {
                // SAFETY: the caller's layout has a non-zero size.
                unsafe { System.alloc(layout) }
            } else if plain(layout) {
                // SAFETY: any size is valid; the block is aligned to `layout.align()` (see `MI_MIN_ALIGN`).
                unsafe { mi::mi_malloc(layout.size()).cast() }
            } else {
                // SAFETY: `align` is a power of two (a `Layout` invariant).
                unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()).cast() }
            }
        }

        #[inline]
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if !small(layout.size()) {
                // SAFETY: as in `alloc`.
                unsafe { System.alloc_zeroed(layout) }
            } else if plain(layout) {
                // SAFETY: as in `alloc`.
                unsafe { mi::mi_zalloc(layout.size()).cast() }
            } else {
                // SAFETY: as in `alloc`.
                unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()).cast() }
            }
        }

        #[inline]
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if small(layout.size()) {
                // SAFETY: `ptr` came from mimalloc (see above).
                unsafe { mi::mi_free(ptr.cast::<c_void>()) }
            } else {
                // SAFETY: `ptr` came from `System` with this layout.
                unsafe { System.dealloc(ptr, layout) }
            }
        }

        #[inline]
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            match (small(layout.size()), small(new_size)) {
                // SAFETY: `ptr` came from mimalloc; the new block keeps the alignment.
                (true, true) if plain(layout) && layout.align() <= new_size => unsafe {
                    mi::mi_realloc(ptr.cast(), new_size).cast()
                },
                // SAFETY: as above, with the alignment asked for explicitly.
                (true, true) => unsafe {
                    mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
                },
                // SAFETY: `ptr` came from `System` with this layout, and the new size stays on its side.
                (false, false) => unsafe { System.realloc(ptr, layout, new_size) },
                // The block changes sides: a new block, a copy, and the old one freed by its owner.
                _ => {
                    // SAFETY: `new_size` with the old alignment is a valid layout (the caller's contract).
                    let new_layout =
                        unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                    // SAFETY: `new_layout` has a non-zero size.
                    let new = unsafe { self.alloc(new_layout) };
                    if !new.is_null() {
                        // SAFETY: both blocks hold at least the smaller size and do not overlap; `ptr`
                        // is freed with the layout it was allocated with.
                        unsafe {
                            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                            self.dealloc(ptr, layout);
                        }
                    }
                    new
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        assert!(set(Param::MmapThreshold, MMAP_THRESHOLD_BYTES));
    }

    #[cfg(feature = "mimalloc")]
    #[allow(unsafe_code)]
    mod split_allocator {
        use std::alloc::{GlobalAlloc, Layout};

        use super::super::{SPLIT_BYTES, SplitAllocator};

        /// Allocates `layout`, checks its alignment, fills it with a pattern and returns it.
        fn filled(layout: Layout) -> *mut u8 {
            // SAFETY: every layout used here has a non-zero size.
            let ptr = unsafe { SplitAllocator.alloc(layout) };
            assert!(!ptr.is_null(), "{layout:?}");
            assert_eq!(ptr as usize % layout.align(), 0, "{layout:?} misaligned");
            for i in 0..layout.size() {
                // SAFETY: the block holds `layout.size()` bytes.
                unsafe { ptr.add(i).write(i as u8) };
            }
            ptr
        }

        fn check(ptr: *const u8, len: usize) {
            for i in 0..len {
                // SAFETY: the caller's block holds at least `len` bytes.
                assert_eq!(unsafe { ptr.add(i).read() }, i as u8, "byte {i}");
            }
        }

        #[test]
        fn blocks_on_both_sides_are_aligned_and_writable() {
            for size in [
                1,
                8,
                12,
                16,
                24,
                1024,
                SPLIT_BYTES,
                SPLIT_BYTES + 1,
                4 << 20,
            ] {
                for align in [1, 8, 16, 64, 4096] {
                    let layout = Layout::from_size_align(size, align).unwrap();
                    let ptr = filled(layout);
                    check(ptr, size);
                    // SAFETY: allocated above with this layout.
                    unsafe { SplitAllocator.dealloc(ptr, layout) };
                }
            }
        }

        #[test]
        fn zeroed_blocks_are_zero() {
            for size in [24, SPLIT_BYTES, SPLIT_BYTES + 1, 1 << 20] {
                let layout = Layout::from_size_align(size, 16).unwrap();
                // SAFETY: non-zero size.
                let ptr = unsafe { SplitAllocator.alloc_zeroed(layout) };
                assert!(!ptr.is_null());
                // SAFETY: the block holds `size` bytes.
                assert!(
                    unsafe { std::slice::from_raw_parts(ptr, size) }
                        .iter()
                        .all(|&b| b == 0)
                );
                // SAFETY: allocated above with this layout.
                unsafe { SplitAllocator.dealloc(ptr, layout) };
            }
        }

        #[test]
        fn realloc_keeps_the_contents_within_and_across_the_split() {
            let steps = [
                (100, 1000),                 // mimalloc, growing
                (1000, 100),                 // mimalloc, shrinking
                (1000, SPLIT_BYTES + 10),    // to the system allocator
                (SPLIT_BYTES + 10, 3 << 20), // system, growing
                (3 << 20, SPLIT_BYTES - 10), // back to mimalloc
                (32, 8),                     // shrinking below the alignment
            ];
            for align in [8, 16, 64] {
                for (from, to) in steps {
                    let layout = Layout::from_size_align(from, align).unwrap();
                    let ptr = filled(layout);
                    // SAFETY: `ptr` was allocated with `layout`; `to` is non-zero.
                    let grown = unsafe { SplitAllocator.realloc(ptr, layout, to) };
                    assert!(!grown.is_null());
                    assert_eq!(grown as usize % align, 0, "{from} -> {to} at {align}");
                    check(grown, from.min(to));
                    // SAFETY: `realloc` returned a block of layout (`to`, `align`).
                    unsafe {
                        SplitAllocator.dealloc(grown, Layout::from_size_align(to, align).unwrap())
                    };
                }
            }
        }
    }
}
