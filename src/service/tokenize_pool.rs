//! Tokenization off the async I/O threads.
//!
//! A request of 64 long texts is ~200 ms of tokenizer work. Run on a tokio worker, it would
//! stall every other connection on that worker, the health probes and the watchdog feed. So
//! requests are tokenized on a small pool of their own threads (not the engine's: a forward
//! pass already uses every core the engine is given), and the handler only awaits the result.
//!
//! A request of at most `inline_bytes` of input is tokenized where it arrives instead: a tweet
//! takes tens of microseconds to tokenize, less than handing it to a pool thread and back (two
//! wake-ups, and a rayon thread that spins on yields after each job, next to the forward pass
//! on a 2-core host: ~35 context switches a request, measured from /proc).
//!
//! The pool is bounded by bytes: the inputs of the requests waiting for or holding a tokenizer
//! thread may take at most `budget` bytes together. Past that a request is refused at once
//! (OVERLOADED), exactly as a full admission queue refuses it, so a flood of large requests
//! queues nowhere without bound, while many small ones never notice the limit.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use tokio::sync::{oneshot, Semaphore};

use crate::engine::error::InputError;
use crate::engine::tokenize::{Encoded, Input};
use crate::engine::Engine;

/// Why a request's inputs were not tokenized.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    #[error("{budget} bytes of requests are already waiting for a tokenizer; retry later")]
    Busy { budget: usize },
    #[error("the tokenizer failed: {0}")]
    Failed(String),
}

pub struct TokenizePool {
    pool: rayon::ThreadPool,
    /// For requests of more than `bulk_bytes`: the work the engine's bulk lane will compute,
    /// tokenized at background priority too, so it never competes with short requests.
    bulk_pool: rayon::ThreadPool,
    bulk_bytes: usize,
    /// Requests of at most this many bytes are tokenized on the calling thread.
    inline_bytes: usize,
    /// One permit per byte of input text (4 per pre-tokenized id).
    permits: Arc<Semaphore>,
    budget: usize,
}

impl TokenizePool {
    /// `threads` tokenizer threads (at least one), as many again at background priority for
    /// requests of more than `bulk_bytes`; `budget` bytes of inputs admitted at once; requests
    /// of at most `inline_bytes` tokenized by the caller.
    pub fn new(
        threads: usize,
        budget: usize,
        bulk_bytes: usize,
        inline_bytes: usize,
    ) -> std::io::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("classifyd-tokenize-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        let budget = budget.clamp(1, Semaphore::MAX_PERMITS);
        Ok(Self {
            pool,
            bulk_pool: crate::sched::priority::background_pool("classifyd-tokenize-bulk", threads)?,
            bulk_bytes,
            inline_bytes,
            permits: Arc::new(Semaphore::new(budget)),
            budget,
        })
    }

    /// Input bytes up to which a request is tokenized on the I/O thread it arrived on: a few
    /// short texts, tens of microseconds of tokenizer work, about what decoding their frame
    /// costs.
    pub const INLINE_BYTES: usize = 1024;

    /// One thread per core the process may run on: tokenization is short and bursty, and
    /// threads left idle cost nothing.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// Bytes of inputs holding or waiting for a tokenizer thread now.
    pub fn pending(&self) -> usize {
        self.budget - self.permits.available_permits()
    }

    /// Tokenizes `inputs` with `engine`'s tokenizer on the pool: each input's encoding, or
    /// why it has none.
    pub async fn encode(
        &self,
        engine: Arc<Engine>,
        inputs: Vec<Input>,
        truncate: bool,
    ) -> Result<Vec<Result<Encoded, InputError>>, TokenizeError> {
        let bytes: usize = inputs.iter().map(input_bytes).sum();
        if bytes <= self.inline_bytes {
            return tokenize_all(&engine, &inputs, truncate);
        }
        // A request larger than the whole budget still runs, alone.
        let cost = bytes.clamp(1, self.budget);
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(u32::try_from(cost).unwrap_or(u32::MAX))
            .map_err(|_| TokenizeError::Busy {
                budget: self.budget,
            })?;
        let (tx, rx) = oneshot::channel();
        let pool = if cost > self.bulk_bytes {
            &self.bulk_pool
        } else {
            &self.pool
        };
        pool.spawn(move || {
            // The client went while this waited for a thread: nobody reads the answer.
            if tx.is_closed() {
                return;
            }
            let result = tokenize_all(&engine, &inputs, truncate);
            // The budget is free again before the caller hears back.
            drop(permit);
            let _ = tx.send(result);
        });
        rx.await
            .unwrap_or_else(|_| Err(TokenizeError::Failed("tokenizer thread stopped".into())))
    }
}

/// Each input's encoding. A tokenizer bug costs one request: rayon would abort the process on a
/// panic in a spawned job, and an I/O thread would lose its connection.
fn tokenize_all(
    engine: &Engine,
    inputs: &[Input],
    truncate: bool,
) -> Result<Vec<Result<Encoded, InputError>>, TokenizeError> {
    panic::catch_unwind(AssertUnwindSafe(|| {
        inputs
            .iter()
            .map(|input| engine.tokenize(input, truncate))
            .collect::<Vec<_>>()
    }))
    .map_err(|_| TokenizeError::Failed("tokenizer panicked".into()))
}

fn input_bytes(input: &Input) -> usize {
    match input {
        Input::Text(t) => t.len(),
        Input::Pair(a, b) => a.len() + b.len(),
        Input::Ids(ids) => 4 * ids.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::worker::tests::{block_on, engine};

    #[test]
    fn encodes_like_the_engine_off_the_calling_thread_and_names_a_bad_input() {
        let e = engine();
        let pool = TokenizePool::new(2, 1 << 20, 1 << 20, 0).unwrap();
        let texts = ["a film", "another one, longer than the first"];
        let inputs: Vec<Input> = texts.iter().map(|t| Input::Text((*t).into())).collect();
        let got = block_on(pool.encode(e.clone(), inputs.clone(), true)).unwrap();
        for (input, enc) in inputs.iter().zip(&got) {
            assert_eq!(enc.as_ref().unwrap(), &e.tokenize(input, true).unwrap());
        }
        // One bad input fails alone.
        let bad = vec![Input::Text("fine".into()), Input::Ids(Vec::new())];
        let got = block_on(pool.encode(e, bad, true)).unwrap();
        assert!(got[0].is_ok());
        assert_eq!(got[1], Err(InputError::EmptyIds));
        assert_eq!(pool.pending(), 0);
    }

    #[test]
    fn a_small_request_is_tokenized_by_the_caller_even_with_every_pool_thread_held() {
        let e = engine();
        let pool = TokenizePool::new(1, 1 << 20, 1 << 20, 8).unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        pool.pool.spawn(move || {
            let _ = held.recv();
        });
        let small = vec![Input::Text("a film".into())];
        let got = futures::executor::block_on(pool.encode(e.clone(), small.clone(), true));
        let want = e.tokenize(&small[0], true).unwrap();
        assert_eq!(got.unwrap()[0].as_ref().unwrap().ids, want.ids);
        // Over the limit it waits for the held thread.
        let big = vec![Input::Text("a longer film".into())];
        let mut waiting = Box::pin(pool.encode(e, big, true));
        assert!(
            futures::executor::block_on(futures::future::poll_immediate(&mut waiting)).is_none()
        );
        release.send(()).unwrap();
        assert!(futures::executor::block_on(waiting).is_ok());
    }

    #[test]
    fn a_full_pool_refuses_at_once_and_frees_its_budget() {
        let e = engine();
        // Room for "one" (3 bytes) but not also "two".
        let pool = TokenizePool::new(1, 5, 1 << 20, 0).unwrap();
        // Hold the only thread, so the one admitted request stays pending.
        let (release, held) = std::sync::mpsc::channel::<()>();
        pool.pool.spawn(move || {
            let _ = held.recv();
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let first = {
            let (pool, e) = (&pool, e.clone());
            async move { pool.encode(e, vec![Input::Text("one".into())], true).await }
        };
        let mut first = Box::pin(first);
        // Polled once: it takes the permit and queues behind the held thread.
        assert!(rt
            .block_on(futures::future::poll_immediate(&mut first))
            .is_none());
        assert_eq!(pool.pending(), 3);
        match rt.block_on(pool.encode(e.clone(), vec![Input::Text("two".into())], true)) {
            Err(TokenizeError::Busy { budget: 5 }) => {}
            other => panic!("expected Busy, got {other:?}"),
        }
        release.send(()).unwrap();
        assert_eq!(rt.block_on(first).unwrap().len(), 1);
        assert_eq!(pool.pending(), 0);
        assert!(rt
            .block_on(pool.encode(e, vec![Input::Text("three".into())], true))
            .is_ok());
    }
}
