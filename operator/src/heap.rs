//! The operator's live heap, counted by its global allocator, for `/metrics`
//! (`berth_heap_live_bytes`, `berth_heap_peak_bytes`): next to the process RSS it tells how much
//! of the memory is data berth holds and how much the allocator keeps.
//!
//! The `berth` binary installs [`Counting`] as its global allocator; in a process that does not
//! (the library's tests), both figures stay 0 and are not registered.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// What [`Counting`] forwards to: jemalloc (the `jemalloc` feature, on by default), else the
/// system allocator.
#[cfg(not(feature = "jemalloc"))]
use std::alloc::System as Inner;
#[cfg(feature = "jemalloc")]
use tikv_jemallocator::Jemalloc as Inner;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static GAUGES: OnceLock<(Gauge<i64, AtomicI64>, Gauge<i64, AtomicI64>)> = OnceLock::new();

/// The allocator (jemalloc, or the system's), counting live bytes and their peak (two atomic
/// operations per call).
pub struct Counting;

fn added(size: usize) {
    let now = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the allocator unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { Inner.alloc(layout) };
        if !p.is_null() {
            added(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { Inner.alloc_zeroed(layout) };
        if !p.is_null() {
            added(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { Inner.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { Inner.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            added(new_size);
        }
        p
    }
}

/// Live heap bytes now and at their peak (both 0 without [`Counting`] installed).
pub fn figures() -> (usize, usize) {
    (LIVE.load(Ordering::Relaxed), PEAK.load(Ordering::Relaxed))
}

/// Registers the two gauges when the allocator counts (a process that allocated nothing
/// through [`Counting`] has nothing to show).
pub fn register(registry: &mut Registry) {
    if PEAK.load(Ordering::Relaxed) == 0 {
        return;
    }
    let gauges = GAUGES.get_or_init(Default::default);
    registry.register(
        "berth_heap_live_bytes",
        "Bytes the operator holds on its heap now (counted by its allocator)",
        gauges.0.clone(),
    );
    registry.register(
        "berth_heap_peak_bytes",
        "Most bytes the operator held on its heap at once since it started",
        gauges.1.clone(),
    );
}

/// Copies the counters into the gauges; called before `/metrics` is encoded.
pub fn publish() {
    if let Some((live, peak)) = GAUGES.get() {
        let (l, p) = figures();
        live.set(l as i64);
        peak.set(p as i64);
    }
}

/// Makes glibc's malloc keep one arena for the whole process (unless `MALLOC_ARENA_MAX` is
/// set, which is left to decide). By default each thread that allocates under contention gets
/// an arena of its own, and each arena grows to the peak of what was allocated in it: at
/// 1,000 stacks the operator's caches, filled on one tokio worker and replaced on another,
/// left two arenas of about 34 MiB resident each for 42 MB of live heap. One arena: 89.1 MiB
/// peak RSS instead of 96.8 MiB (`make bench-k8s`, docs/performance.md). Allocation is not
/// where berth spends its time, so the lock all threads then share costs nothing measurable.
/// With jemalloc (the default), Rust's allocations go there and get one arena the same way
/// (`narenas:1`, main.rs); this still holds for what C libraries allocate with malloc.
///
/// Call first thing in `main`, before any other thread starts.
pub fn single_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a parameter of the allocator; no other thread runs yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
