//! The global allocator of both binaries: mimalloc, called through the entry points that are fastest
//! for what Rust asks of it.
//!
//! `mimalloc::MiMalloc` sends every allocation through `mi_malloc_aligned`. In mimalloc 3 that call
//! serves a request with the plain allocator only while a free block of its size class happens to be at
//! hand, or when the class is a power of two; otherwise (24, 48, 80, 320 bytes: most of a flow's
//! bookkeeping) it takes a generic path that over-allocates into a larger class, and as that class
//! never refills, it stays on that path. Under `valgrind --tool=callgrind`, parsing a 100,000-node
//! flow spent about 150 instructions per node there (BENCHMARKS.md). The same problem is discussed in
//! mimalloc_rust's pull request 170.
//!
//! Every mimalloc block is aligned to 8 bytes (size classes are whole words, and a page's first block is
//! 16-byte aligned), so requests aligned to 8 or less go to `mi_malloc`, `mi_zalloc` and `mi_realloc`;
//! stricter ones keep the aligned calls. `mi_free` frees either.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// mimalloc as the global allocator (see the module docs).
pub struct MiMalloc;

/// The alignment of every block mimalloc's plain calls return.
const PLAIN_ALIGN: usize = 8;

// SAFETY: every call returns memory from mimalloc aligned as `layout` asks (module docs), or null, and
// `dealloc`/`realloc` only receive pointers these calls returned.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: FFI calls with a size and a power-of-two alignment
        unsafe { allocate(layout, mi::mi_malloc, mi::mi_malloc_aligned) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`
        unsafe { allocate(layout, mi::mi_zalloc, mi::mi_zalloc_aligned) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from one of the mimalloc calls above
        unsafe { mi::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from one of the mimalloc calls above, with `layout`'s alignment
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
            } else {
                mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

/// `plain(size)` when mimalloc's own alignment is enough for `layout`, else `aligned(size, align)`.
///
/// # Safety
/// The two functions must be a matching pair of mimalloc's allocation calls.
#[inline(always)]
unsafe fn allocate(
    layout: Layout,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    // SAFETY: the caller passes mimalloc's calls, which take any size and a power-of-two alignment
    unsafe {
        if layout.align() <= PLAIN_ALIGN {
            plain(layout.size()) as *mut u8
        } else {
            aligned(layout.size(), layout.align()) as *mut u8
        }
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::MiMalloc;

    /// Every size class up to the large ones, several blocks each, at each alignment: the plain calls
    /// must honour alignments up to 8, the aligned ones the rest, and contents survive a realloc.
    #[test]
    fn blocks_are_aligned_as_asked_and_reallocs_keep_contents() {
        let a = MiMalloc;
        let mut live = Vec::new();
        for size in (1..=4096).chain([8191, 65_537, 1 << 20]) {
            for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                for zeroed in [false, true] {
                    // SAFETY: non-zero size; the pointer is checked, written within the layout and freed
                    unsafe {
                        let p = if zeroed { a.alloc_zeroed(layout) } else { a.alloc(layout) };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        if zeroed {
                            assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                        }
                        p.write_bytes(0xab, size);
                        live.push((p, layout));
                    }
                }
            }
            if live.len() > 2000 {
                for (p, layout) in live.drain(..) {
                    // SAFETY: allocated above with this layout
                    unsafe {
                        let grown = a.realloc(p, layout, layout.size() * 3);
                        assert_eq!(grown as usize % layout.align(), 0);
                        assert!(std::slice::from_raw_parts(grown, layout.size()).iter().all(|&b| b == 0xab));
                        a.dealloc(grown, Layout::from_size_align(layout.size() * 3, layout.align()).unwrap());
                    }
                }
            }
        }
        for (p, layout) in live {
            // SAFETY: allocated above with this layout
            unsafe { a.dealloc(p, layout) }
        }
    }
}
