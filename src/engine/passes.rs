//! How a batch of rows is cut into forward passes: on the CPU one per length (padding is pure
//! waste there), on a GPU a few padded buckets by length; each pass is also cut to the token
//! budget and the attention-memory budget. Passes run most urgent first (earliest deadline,
//! then priority, then shortest). The scheduler plans its batches with it, and so does
//! [`crate::engine::Engine::logits`] for in-process callers.

/// One row of a batch, as the pass planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanRow {
    pub len: usize,
    /// Its job's place in the batch's urgency order (0 = most urgent).
    pub urgency: usize,
}

/// Padded tokens one pass may take by default (`--max-batch-tokens`).
pub const DEFAULT_MAX_TOKENS: usize = 8192;
/// Rows one pass may take by default (`--max-batch-size`).
pub const DEFAULT_MAX_ROWS: usize = 32;
/// Attention working set one pass may take by default (`--max-attention-mib 512`).
pub const DEFAULT_MAX_ATTENTION_BYTES: usize = 512 << 20;

/// How a device wants a batch cut into passes.
#[derive(Debug, Clone, Copy)]
pub struct PassShape {
    /// Padded tokens per pass.
    pub max_tokens: usize,
    /// Rows per pass.
    pub max_rows: usize,
    /// Whether rows of different lengths share a pass, padded (a GPU); on the CPU padding is
    /// pure waste, so each pass holds one length.
    pub pad: bool,
    /// Attention working-set bytes a pass may take.
    pub max_attention_bytes: usize,
}

impl PassShape {
    /// The default limits, for a device that pads batches (`pad`, a GPU) or not.
    pub const fn default_for(pad: bool) -> PassShape {
        PassShape {
            max_tokens: DEFAULT_MAX_TOKENS,
            max_rows: DEFAULT_MAX_ROWS,
            pad,
            max_attention_bytes: DEFAULT_MAX_ATTENTION_BYTES,
        }
    }
}

/// Cuts a batch's rows into forward passes, most urgent first: each pass is a list of indices
/// into `rows`. Every row is in exactly one pass. `attention(rows, len)` is the attention
/// working set of a pass of `rows` rows padded to `len`; a pass always takes at least one row,
/// so a row over the budget on its own (which admission refuses) still runs alone.
pub fn passes(
    rows: &[PlanRow],
    shape: PassShape,
    attention: impl Fn(usize, usize) -> usize,
) -> Vec<Vec<usize>> {
    // Buckets: one per length on the CPU; on a GPU one per power-of-two length range, so
    // padding at most doubles a row.
    let bucket = |len: usize| {
        if shape.pad {
            len.max(1).next_power_of_two()
        } else {
            len
        }
    };
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| (bucket(rows[i].len), rows[i].urgency, rows[i].len, i));
    let mut out: Vec<(usize, usize, Vec<usize>)> = Vec::new();
    // Within a bucket the order is most urgent first (then shortest), so a cut leaves the
    // least urgent rows for later passes.
    for group in order.chunk_by(|&a, &b| bucket(rows[a].len) == bucket(rows[b].len)) {
        let mut cur: Vec<usize> = Vec::new();
        let mut longest = 0usize;
        for &i in group {
            let l = longest.max(rows[i].len).max(1);
            let n = cur.len() + 1;
            let fits = n <= shape.max_rows
                && n.saturating_mul(l) <= shape.max_tokens
                && attention(n, l) <= shape.max_attention_bytes;
            if !fits && !cur.is_empty() {
                out.push(pass_key(rows, std::mem::take(&mut cur)));
                longest = 0;
            }
            longest = longest.max(rows[i].len).max(1);
            cur.push(i);
        }
        if !cur.is_empty() {
            out.push(pass_key(rows, cur));
        }
    }
    out.sort_by_key(|(urgency, len, _)| (*urgency, *len));
    out.into_iter().map(|(_, _, p)| p).collect()
}

fn pass_key(rows: &[PlanRow], pass: Vec<usize>) -> (usize, usize, Vec<usize>) {
    let urgency = pass.iter().map(|&i| rows[i].urgency).min().unwrap_or(0);
    let len = pass.iter().map(|&i| rows[i].len).max().unwrap_or(0);
    (urgency, len, pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(spec: &[(usize, usize)]) -> Vec<PlanRow> {
        spec.iter()
            .map(|&(len, urgency)| PlanRow { len, urgency })
            .collect()
    }

    fn shape(pad: bool) -> PassShape {
        PassShape {
            max_tokens: 1 << 20,
            max_rows: 1 << 10,
            pad,
            max_attention_bytes: usize::MAX,
        }
    }

    fn no_attention(_: usize, _: usize) -> usize {
        0
    }

    #[test]
    fn cpu_passes_hold_one_length_each_most_urgent_first() {
        // Job 0 (most urgent) has a 9-token row; job 1 has rows of 30 and 9 tokens.
        let r = rows(&[(30, 1), (9, 1), (9, 0), (5, 2)]);
        let p = passes(&r, shape(false), no_attention);
        assert_eq!(p, vec![vec![2, 1], vec![0], vec![3]]);
    }

    #[test]
    fn gpu_passes_pad_within_power_of_two_buckets() {
        let r = rows(&[(30, 0), (17, 0), (9, 0), (16, 0), (100, 0)]);
        let mut p = passes(&r, shape(true), no_attention);
        for pass in &mut p {
            pass.sort();
        }
        // 9 and 16 share the 16 bucket; 17 and 30 the 32 bucket; 100 alone.
        assert_eq!(p, vec![vec![2, 3], vec![0, 1], vec![4]]);
    }

    #[test]
    fn passes_are_cut_to_the_token_and_attention_budgets_and_cover_every_row_once() {
        let r = rows(&[(10, 0); 7]);
        let tokens = PassShape {
            max_tokens: 30,
            ..shape(false)
        };
        let p = passes(&r, tokens, no_attention);
        assert_eq!(p.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 1]);
        // Attention of n rows of 10 tokens: n × 100 bytes, budget 250: two rows a pass.
        let attention = PassShape {
            max_attention_bytes: 250,
            ..shape(false)
        };
        let p = passes(&r, attention, |n, l| n * l * l);
        assert_eq!(p.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 2, 1]);
        // A row over the budget alone still runs, alone.
        let p = passes(&rows(&[(100, 0), (100, 1)]), attention, |n, l| n * l * l);
        assert_eq!(p, vec![vec![0], vec![1]]);
        let mut all: Vec<usize> = passes(&r, tokens, no_attention).concat();
        all.sort();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
    }
}
