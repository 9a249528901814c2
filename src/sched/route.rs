//! A model's place in the shared scheduler: which engine its rows run on, how it ranks against
//! the other models (class, then deadline, then a weighted fair share), its own share of the
//! queue, and its counts.
//!
//! Every model of a daemon shares one scheduler: one set of engine threads per lane, so several
//! models do not each keep threads spinning on the same cores. A pass holds one model's rows
//! (models don't batch together), and a reload adds the new version as a new route beside the
//! old one, whose queued jobs still run on the engine they were tokenized for.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::engine::Engine;
use crate::sched::batch::Budget;

/// Which models the engine serves first: a higher class always goes before a lower one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Class {
    High,
    #[default]
    Normal,
    Low,
}

impl Class {
    pub fn parse(s: &str) -> Result<Class, String> {
        match s {
            "high" => Ok(Class::High),
            "normal" => Ok(Class::Normal),
            "low" => Ok(Class::Low),
            other => Err(format!(
                "priority {other:?}: expected \"high\", \"normal\" or \"low\""
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::High => "high",
            Class::Normal => "normal",
            Class::Low => "low",
        }
    }
}

/// How one model is scheduled among the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteOptions {
    /// As requests and metrics name the model.
    pub name: String,
    pub class: Class,
    /// Its share of the engine among the models of its class with work waiting: a model of
    /// weight 2 gets twice the tokens of one of weight 1 while both are busy.
    pub weight: u32,
    /// Jobs of this model waiting at once; past it this model's requests are answered
    /// OVERLOADED, whatever the others' queues hold.
    pub queue_capacity: usize,
    /// Padded tokens per forward pass of this model.
    pub max_batch_tokens: usize,
}

impl RouteOptions {
    /// A model scheduled as the daemon's only one is: normal class, weight 1, the whole queue
    /// and the configured passes.
    pub fn single(name: &str, queue_capacity: usize, max_batch_tokens: usize) -> RouteOptions {
        RouteOptions {
            name: name.to_string(),
            class: Class::Normal,
            weight: 1,
            queue_capacity,
            max_batch_tokens,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
/// One model's counts since start, as `Info`, the metrics and the status line report them.
pub struct Stats {
    pub batches: u64,
    /// Jobs computed (not rows).
    pub computed: u64,
    pub rows: u64,
    pub expired: u64,
    pub cancelled: u64,
    pub overloaded: u64,
    pub queued: usize,
    pub busy: bool,
}

/// What [`Stats`] reports of one model, kept across its reloads (each version's route shares
/// its predecessor's) so that its totals only grow.
#[derive(Debug, Default)]
pub struct ModelCounters {
    pub batches: AtomicU64,
    pub computed: AtomicU64,
    pub rows: AtomicU64,
    pub expired: AtomicU64,
    pub cancelled: AtomicU64,
    pub overloaded: AtomicU64,
    /// Jobs of this model waiting, every version together; changed under the queue lock.
    pub queued: AtomicUsize,
}

impl ModelCounters {
    pub(crate) fn snapshot(&self, busy: bool) -> Stats {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            batches: r(&self.batches),
            computed: r(&self.computed),
            rows: r(&self.rows),
            expired: r(&self.expired),
            cancelled: r(&self.cancelled),
            overloaded: r(&self.overloaded),
            queued: self.queued.load(Ordering::Relaxed),
            busy,
        }
    }
}

/// One loaded model version in the scheduler.
pub struct Route {
    /// Unique per version: a reloaded model's rows never share a pass with its old version's.
    pub key: u64,
    pub engine: Arc<Engine>,
    pub opts: RouteOptions,
    /// What one batch of this model may hold.
    pub budget: Budget,
    /// Jobs of more tokens than this go to the bulk lane.
    pub bulk_tokens: usize,
    pub counters: Arc<ModelCounters>,
    /// Why this model's engine is unhealthy, once it is: a pass failed and so did the probe
    /// after it. Never cleared; only this model's requests are refused, and a reload builds a
    /// healthy version.
    pub unhealthy: OnceLock<String>,
}

impl Route {
    /// `max_rows`: the scheduler's rows per pass; `bulk_tokens`: this model's bulk threshold.
    pub(crate) fn new(
        key: u64,
        engine: Arc<Engine>,
        opts: RouteOptions,
        max_rows: usize,
        bulk_tokens: usize,
        counters: Arc<ModelCounters>,
    ) -> Route {
        Route {
            key,
            engine,
            budget: Budget {
                max_tokens: opts.max_batch_tokens,
                max_rows,
            },
            bulk_tokens,
            opts,
            counters,
            unhealthy: OnceLock::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.opts.name
    }
}
