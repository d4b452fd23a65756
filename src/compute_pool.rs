//! The thread pool the models run in. A job started from a thread outside rayon's pool hands
//! every parallel loop (candle's matmul, the fused kernels) to the pool and sleeps until it is
//! done: a futex wake and wait per operation, which at small sizes cost more than the work, and
//! on one thread pure overhead. Run inside the pool, the calling thread is one of its workers: it
//! takes part in every loop and, alone, runs it inline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

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

/// How long a worker kept awake by [`keep_awake`] polls without finding work before it lets
/// itself sleep: longer than the serial gaps inside a forward, short enough that a poller
/// holds up little where it must not wait (see [`keep_awake`]).
const POLL_WITHOUT_WORK: Duration = Duration::from_millis(2);

/// Runs `job`, called on a worker of the compute pool, with the pool's other workers kept
/// awake: each polls for work instead of sleeping, until `job` returns or it has found none for
/// [`POLL_WITHOUT_WORK`]. A transformer forward is about a hundred parallel operations with a
/// little serial work between them; a worker that falls asleep in such a gap costs a futex wake
/// on the next operation and starts its share late while the caller finishes first and waits.
/// Kept awake over its denoising steps, a two-thread head-128 render took 0.94x the wall time
/// (1.01x the CPU time, the polling); kept awake over each forward, as the sampler does, the
/// same within 1 %.
///
/// A poller is a job like any other: a worker waiting inside a join can pick it up, and the
/// join then resumes only when the poller returns. A poller met inside another's work returns
/// at once, and the time limit bounds the rest: the work a join waits for may be under the
/// poller itself, which then finds no work and returns within the limit. (Polling until `job`
/// returned, without either, deadlocked a render: a worker's poller had taken up work of the
/// next kept-awake job and met that job's poller inside it.)
pub fn keep_awake<R>(job: impl FnOnce() -> R) -> R {
    let caller = rayon::current_thread_index();
    if caller.is_none() || rayon::current_num_threads() < 2 {
        return job();
    }
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    thread_local! {
        /// Whether this worker runs a poller already (a job it took up may have met another).
        static POLLING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    rayon::spawn_broadcast(move |ctx| {
        // The caller's own copy returns at once: the caller is busy with `job`. So does one
        // met inside another poller's work: the first keeps this worker awake already.
        if Some(ctx.index()) == caller || POLLING.replace(true) {
            return;
        }
        let mut last_work = Instant::now();
        while !flag.load(Ordering::Acquire) {
            match rayon::yield_now() {
                Some(rayon::Yield::Executed) => last_work = Instant::now(),
                _ if last_work.elapsed() > POLL_WITHOUT_WORK => break,
                _ => std::hint::spin_loop(),
            }
        }
        POLLING.set(false);
    });
    /// Lets the workers sleep again however `job` ends, a panic included.
    struct Release(Arc<AtomicBool>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let _release = Release(done);
    job()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// Nested parallel loops, each inner item a little arithmetic.
    fn nested_sum(i: u64) -> u64 {
        (0..16u64)
            .into_par_iter()
            .map(|j| {
                (0..16u64)
                    .into_par_iter()
                    .map(|k| (0..200).fold(i + j * k, |a, x| a.wrapping_mul(31).wrapping_add(x)))
                    .reduce(|| 0, u64::wrapping_add)
            })
            .reduce(|| 0, u64::wrapping_add)
    }

    /// Thousands of kept-awake jobs one after another, each a few nested parallel loops (the
    /// pattern that once deadlocked: a poller taking up the next job's work and meeting the
    /// next poller inside it), all finish with the sums the loops give unpolled.
    #[test]
    fn kept_awake_jobs_in_a_row_with_nested_loops_finish() {
        const JOBS: u64 = 3000;
        let (sent, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap();
            let sums: Vec<u64> = pool.install(|| {
                (0..JOBS)
                    .map(|i| keep_awake(|| (0..3).map(|r| nested_sum(i + r)).sum::<u64>()))
                    .collect()
            });
            sent.send(sums).unwrap();
        });
        let sums = received
            .recv_timeout(Duration::from_secs(120))
            .expect("the kept-awake jobs did not finish: a poller blocked the work under it");
        let want = |i: u64| (0..3).map(|r| nested_sum(i + r)).sum::<u64>();
        assert!(sums.iter().enumerate().all(|(i, &s)| s == want(i as u64)));
    }
}
