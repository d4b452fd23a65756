//! The thread pool the models run in. A job started from a thread outside rayon's pool hands
//! every parallel loop (candle's matmul, the fused kernels) to the pool and sleeps until it is
//! done: a futex wake and wait per operation, which at small sizes cost more than the work, and
//! on one thread pure overhead. Run inside the pool, the calling thread is one of its workers: it
//! takes part in every loop and, alone, runs it inline.

use std::sync::OnceLock;

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
