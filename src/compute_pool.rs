//! The thread pool the models run in. A job started from a thread outside rayon's pool hands
//! every parallel loop (candle's matmul, the fused kernels) to the pool and sleeps until it is
//! done: a futex wake and wait per operation, which at small sizes cost more than the work, and
//! on one thread pure overhead. Run inside the pool, the calling thread is one of its workers: it
//! takes part in every loop and, alone, runs it inline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Spins of a candle elementwise worker waiting for its next operation before it sleeps. Candle's
/// default (25,000) keeps that worker spinning through the matrix products and fused kernels
/// that run on rayon's threads, so on two cores three threads compete for two; at 1,000 the
/// tiny storyboard at two threads took 0.95x the wall time and 0.91x the CPU time.
const ELEMENTWISE_SPIN_LIMIT: &str = "1000";

/// Sets the process-wide threading defaults a user has not set, and gemm's packing threshold.
/// Call first thing in `main`, while the process has one thread: it sets environment variables.
pub fn set_defaults() {
    const SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN).is_none() {
        std::env::set_var(SPIN, ELEMENTWISE_SPIN_LIMIT);
    }
    // gemm copies a column-major left operand into panels when the product is wider than this
    // many times 6 columns (8 by default). The attention's score tiles meet value tiles of one
    // head (up to 128 columns) and are already laid out as its kernels read them: repacking
    // them took 1-3 % of a tiny storyboard. The dense layers' transposed weights meet hundreds
    // of tokens, and reading them unpacked ran their products 4-5 % slower than packed (at
    // 768 tokens, 256-1792 features). 32 x 6 = 192 columns divides the two; packing or not,
    // the sums are the same.
    gemm::set_lhs_packing_threshold_single_thread(32);
}

use rayon::{ThreadPool, ThreadPoolBuilder};

/// Runs `job` on a worker of the compute pool (as many threads as candle uses:
/// `RAYON_NUM_THREADS`, else the physical cores) and returns its result.
pub fn install<R: Send>(job: impl FnOnce() -> R + Send) -> R {
    static POOL: OnceLock<ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        ThreadPoolBuilder::new()
            .num_threads(candle_core::utils::get_num_threads())
            .thread_name(|i| format!("charaboard-compute-{i}"))
            .build()
            .expect("building the compute thread pool")
    })
    .install(job)
}

/// Runs `job`, called on a worker of the compute pool, with the pool's other workers kept
/// awake: each polls for work instead of sleeping until `job` returns. A transformer forward is
/// about a hundred parallel operations with a little serial work between them; a worker that
/// falls asleep in such a gap costs a futex wake on the next operation and, worse, starts its
/// share late while the caller finishes first and waits. Kept awake over the denoising steps,
/// a two-thread head-128 render took 0.94x the wall time (1.05x the CPU time, the polling).
pub fn keep_awake<R>(job: impl FnOnce() -> R) -> R {
    let caller = rayon::current_thread_index();
    if caller.is_none() || rayon::current_num_threads() < 2 {
        return job();
    }
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    rayon::spawn_broadcast(move |ctx| {
        // The caller's own copy returns at once: the caller is busy with `job`.
        if Some(ctx.index()) == caller {
            return;
        }
        while !flag.load(Ordering::Acquire) {
            if rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::hint::spin_loop();
            }
        }
    });
    /// Lets the workers sleep again however `job` ends, a panic included.
    struct Release(std::sync::Arc<AtomicBool>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let _release = Release(done);
    job()
}
