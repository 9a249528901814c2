//! Which queued jobs form the next forward pass.
//!
//! A pure function over a summary of the queue, so the policy can be tested without an engine.
//! The oldest job of the highest priority is the anchor and always runs, so no job starves
//! behind smaller ones; the rest are added by closeness in length to the anchor because a batch
//! costs rows × its longest row, and mixing a short job with a long one pays mostly for padding.

use crate::queue::Priority;

/// What the batcher needs to know about one queued job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub priority: Priority,
    /// The job's longest row, in tokens.
    pub len: usize,
    pub rows: usize,
    /// Submission order: smaller is older.
    pub arrival: u64,
}

/// Limits of one forward pass.
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

/// Indices into `cands` of the next batch, anchor first. Empty only when `cands` is.
pub fn select(cands: &[Candidate], budget: Budget) -> Vec<usize> {
    let Some(anchor) =
        (0..cands.len()).min_by_key(|&i| (rank(cands[i].priority), cands[i].arrival))
    else {
        return Vec::new();
    };
    let a = cands[anchor];
    let mut picked = vec![anchor];
    let mut rows = a.rows;
    // The engine pads to at least one column, so an empty row still costs one token.
    let mut longest = a.len.max(1);
    let mut rest: Vec<usize> = (0..cands.len()).filter(|&i| i != anchor).collect();
    // Priority still beats length: a high-priority job must not wait behind a normal one just
    // because the normal one pads better.
    rest.sort_by_key(|&i| {
        let c = cands[i];
        (rank(c.priority), c.len.abs_diff(a.len), c.arrival)
    });
    for i in rest {
        if rows >= budget.max_rows {
            break;
        }
        let c = cands[i];
        let r = rows + c.rows;
        let l = longest.max(c.len);
        // Skip rather than stop: a shorter or smaller job further down may still fit.
        if r <= budget.max_rows && r.saturating_mul(l) <= budget.max_tokens {
            picked.push(i);
            rows = r;
            longest = l;
        }
    }
    picked
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
}
