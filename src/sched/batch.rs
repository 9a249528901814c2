//! Which queued jobs form the next batch, and how a batch splits into forward passes.
//!
//! **Selection.** The oldest job of the highest priority is the anchor and always runs, so no
//! job starves behind smaller ones; the rest are added by closeness in length to the anchor
//! because a pass costs rows × its longest row, and mixing a short job with a long one pays
//! mostly for padding. The queue keeps its jobs in an [`Index`] of ordered sets, so picking a
//! batch costs O(k log n) for k jobs looked at, whatever the queue's length n: the scheduler
//! lock is never held for a scan or a sort of the queue.
//!
//! **Passes.** A batch runs as one or more forward passes ([`crate::engine::passes`]): on the CPU one per
//! length (padding is pure waste there), on a GPU a few padded buckets by length; each pass is
//! also cut to the token budget and the attention-memory budget. Passes run most urgent first
//! (earliest deadline, then priority, then shortest), and a job is answered as soon as its
//! own rows are done.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Normal,
    High,
}

/// What the batcher needs to know about one queued job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub priority: Priority,
    /// The job's longest row, in tokens.
    pub len: usize,
    pub rows: usize,
    /// Submission order: smaller is older. Unique per queue.
    pub arrival: u64,
}

/// Limits of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Padded tokens: rows × longest row.
    pub max_tokens: usize,
    pub max_rows: usize,
}

fn rank(p: Priority) -> u8 {
    match p {
        Priority::High => 0,
        Priority::Normal => 1,
    }
}

/// Jobs looked at and skipped (too many rows to fit) before a selection stops looking: bounds
/// the work under the scheduler lock when many multi-row jobs crowd the anchor's length.
const MAX_SKIPS: usize = 64;

/// The queued jobs, ordered two ways: by (priority, arrival) for the anchor and by
/// (priority, length, arrival) for the jobs closest in length to it.
#[derive(Debug, Default)]
pub struct Index {
    by_arrival: BTreeMap<u64, Candidate>,
    by_anchor: BTreeSet<(u8, u64)>,
    by_len: BTreeSet<(u8, usize, u64)>,
}

impl Index {
    pub fn len(&self) -> usize {
        self.by_arrival.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_arrival.is_empty()
    }

    pub fn insert(&mut self, c: Candidate) {
        let r = rank(c.priority);
        self.by_anchor.insert((r, c.arrival));
        self.by_len.insert((r, c.len, c.arrival));
        self.by_arrival.insert(c.arrival, c);
    }

    pub fn remove(&mut self, arrival: u64) -> Option<Candidate> {
        let c = self.by_arrival.remove(&arrival)?;
        let r = rank(c.priority);
        self.by_anchor.remove(&(r, arrival));
        self.by_len.remove(&(r, c.len, arrival));
        Some(c)
    }

    /// The arrivals of the next batch, anchor first, in the order they were looked at. Empty
    /// only when the index is. Does not remove them; `accept` says whether a looked-at job
    /// still counts (a job whose client has gone does not, and takes no room).
    pub fn select(&self, budget: Budget, mut accept: impl FnMut(u64) -> bool) -> Vec<u64> {
        let mut picked = Vec::new();
        let mut rows = 0usize;
        // The engine pads to at least one column, so an empty row still costs one token.
        let mut longest = 1usize;
        let mut anchors = self.by_anchor.iter();
        // The anchor: the oldest job of the best priority whose client still waits.
        let anchor = loop {
            let Some(&(_, arrival)) = anchors.next() else {
                return picked;
            };
            if accept(arrival) {
                break self.by_arrival[&arrival];
            }
        };
        picked.push(anchor.arrival);
        rows += anchor.rows;
        longest = longest.max(anchor.len);
        let mut skips = 0;
        // Priority still beats length: a high-priority job must not wait behind a normal one
        // just because the normal one pads better.
        for r in 0..=1u8 {
            let mut below = self.by_len.range((r, 0, 0)..(r, anchor.len, 0)).rev();
            let mut above = self
                .by_len
                .range((r, anchor.len, 0)..(r, usize::MAX, u64::MAX));
            let (mut lo, mut hi) = (below.next(), above.next());
            // Level by level of distance from the anchor's length, each level oldest first.
            while lo.is_some() || hi.is_some() {
                if rows >= budget.max_rows || skips >= MAX_SKIPS {
                    return picked;
                }
                let d_lo = lo.map(|&(_, l, _)| anchor.len - l);
                let d_hi = hi.map(|&(_, l, _)| l - anchor.len);
                let d = match (d_lo, d_hi) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(a), None) => a,
                    (None, Some(b)) => b,
                    (None, None) => break,
                };
                let mut level: Vec<Candidate> = Vec::new();
                while let Some(&(_, _, a)) = lo.filter(|&&(_, l, _)| anchor.len - l == d) {
                    level.push(self.by_arrival[&a]);
                    lo = below.next();
                }
                while let Some(&(_, _, a)) = hi.filter(|&&(_, l, _)| l - anchor.len == d) {
                    if a != anchor.arrival {
                        level.push(self.by_arrival[&a]);
                    }
                    hi = above.next();
                }
                level.sort_by_key(|c| c.arrival);
                for c in level {
                    if rows >= budget.max_rows {
                        return picked;
                    }
                    let r2 = rows + c.rows;
                    let l2 = longest.max(c.len);
                    // Skip rather than stop: a shorter or smaller job further on may still fit.
                    if r2 <= budget.max_rows && r2.saturating_mul(l2) <= budget.max_tokens {
                        if accept(c.arrival) {
                            picked.push(c.arrival);
                            rows = r2;
                            longest = l2;
                        }
                    } else {
                        skips += 1;
                        if skips >= MAX_SKIPS {
                            return picked;
                        }
                    }
                }
                // Nothing longer can fit once even one more row of it would go over.
                if hi.is_some_and(|&(_, l, _)| (rows + 1).saturating_mul(l) > budget.max_tokens) {
                    hi = None;
                }
            }
        }
        picked
    }
}

/// Indices into `cands` of the next batch, anchor first. Empty only when `cands` is.
pub fn select(cands: &[Candidate], budget: Budget) -> Vec<usize> {
    let mut index = Index::default();
    for c in cands {
        index.insert(*c);
    }
    let at: BTreeMap<u64, usize> = cands
        .iter()
        .enumerate()
        .map(|(i, c)| (c.arrival, i))
        .collect();
    index
        .select(budget, |_| true)
        .into_iter()
        .map(|a| at[&a])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Priority::{High, Normal};

    fn c(priority: Priority, len: usize, rows: usize, arrival: u64) -> Candidate {
        Candidate {
            priority,
            len,
            rows,
            arrival,
        }
    }

    const ROOMY: Budget = Budget {
        max_tokens: 1 << 20,
        max_rows: 1 << 10,
    };

    #[test]
    fn empty_queue_gives_empty_batch() {
        assert!(select(&[], ROOMY).is_empty());
    }

    #[test]
    fn oldest_job_is_the_anchor() {
        let q = [
            c(Normal, 10, 1, 5),
            c(Normal, 10, 1, 2),
            c(Normal, 10, 1, 9),
        ];
        let b = Budget {
            max_tokens: 100,
            max_rows: 1,
        };
        assert_eq!(select(&q, b), vec![1]);
    }

    #[test]
    fn high_priority_goes_first_even_when_younger() {
        let q = [c(Normal, 10, 1, 0), c(High, 10, 1, 7), c(High, 10, 1, 3)];
        let b = Budget {
            max_tokens: 100,
            max_rows: 2,
        };
        assert_eq!(select(&q, b), vec![2, 1]);
    }

    #[test]
    fn high_priority_fills_before_a_closer_normal_job() {
        // The normal job matches the anchor's length exactly, the high one pads badly.
        let q = [c(High, 10, 1, 0), c(Normal, 10, 1, 1), c(High, 40, 1, 2)];
        let b = Budget {
            max_tokens: 1000,
            max_rows: 2,
        };
        assert_eq!(select(&q, b), vec![0, 2]);
    }

    #[test]
    fn groups_by_length_around_the_anchor() {
        let q = [
            c(Normal, 10, 1, 0),
            c(Normal, 100, 1, 1),
            c(Normal, 60, 1, 2),
            c(Normal, 11, 1, 3),
            c(Normal, 9, 1, 4),
        ];
        let b = Budget {
            max_tokens: 10_000,
            max_rows: 3,
        };
        assert_eq!(select(&q, b), vec![0, 3, 4]);
    }

    #[test]
    fn token_budget_counts_padding_to_the_longest_row() {
        // Anchor 2 rows × 10; adding the 30-token job makes 3 × 30 = 90 > 60, the 20-token job
        // makes 3 × 20 = 60, exactly the budget.
        let q = [
            c(Normal, 10, 2, 0),
            c(Normal, 30, 1, 1),
            c(Normal, 20, 1, 2),
        ];
        let b = Budget {
            max_tokens: 60,
            max_rows: 100,
        };
        assert_eq!(select(&q, b), vec![0, 2]);
    }

    #[test]
    fn oversize_job_runs_alone() {
        let q = [c(Normal, 500, 4, 0), c(Normal, 5, 1, 1), c(High, 5, 1, 2)];
        let b = Budget {
            max_tokens: 100,
            max_rows: 2,
        };
        // The high job is the anchor; once it has run, the oversize one goes alone.
        assert_eq!(select(&q, b), vec![2, 1]);
        assert_eq!(select(&q[..2], b), vec![0]);
    }

    #[test]
    fn max_batch_size_counts_rows_and_never_splits_a_job() {
        let mut q: Vec<Candidate> = (0..40).map(|i| c(Normal, 8, 1, i)).collect();
        assert_eq!(
            select(
                &q,
                Budget {
                    max_tokens: 1 << 20,
                    max_rows: 32
                }
            )
            .len(),
            32
        );
        q = vec![c(Normal, 8, 3, 0), c(Normal, 8, 5, 1), c(Normal, 8, 2, 2)];
        let b = Budget {
            max_tokens: 1 << 20,
            max_rows: 6,
        };
        assert_eq!(select(&q, b), vec![0, 2]);
    }

    #[test]
    fn everything_fits_in_a_roomy_budget() {
        let q: Vec<Candidate> = (0..10).map(|i| c(Normal, i as usize * 3, 2, i)).collect();
        let mut got = select(&q, ROOMY);
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn index_skips_and_reports_jobs_it_may_not_take() {
        let mut index = Index::default();
        for (len, arrival) in [(10, 0), (10, 1), (11, 2), (50, 3)] {
            index.insert(c(Normal, len, 1, arrival));
        }
        // Job 0's client has gone: job 1 becomes the anchor, and 0 is never picked.
        let mut refused = Vec::new();
        let got = index.select(ROOMY, |a| {
            let ok = a != 0;
            if !ok {
                refused.push(a);
            }
            ok
        });
        assert_eq!(got, vec![1, 2, 3]);
        assert!(!refused.is_empty() && refused.iter().all(|&a| a == 0));
        assert_eq!(index.remove(2).map(|c| c.len), Some(11));
        assert_eq!(index.len(), 3);
        assert_eq!(
            index.select(ROOMY, |_| true),
            vec![0, 1, 3],
            "removed jobs are gone from every order"
        );
    }
}
