//! Model code in three layers, each depending only on the ones before it:
//!
//! - [`kernels`]: the hand-written CPU kernels (f32 and int8 matmuls, attention, LayerNorm,
//!   GELU, RoPE tables), the thread team they split across, and weights recorded for the cache
//!   or viewed in place in its mapping. No model knowledge.
//! - [`layers`]: Linear, LayerNorm, embeddings, heads, masks and attention blocks, each running
//!   a kernel where one exists and candle's ops elsewhere (GPU, F16/BF16).
//! - [`families`]: one file or folder per architecture, and the registry
//!   ([`families::FAMILIES`]) that is the one list of the `architectures` names served.
//!
//! Beside them, [`upload`]: every tensor a pass makes from host data, counted.
//!
//! Every family implements [`SequenceClassifier`]: a padded batch in, one row of logits per text
//! (or per token) out.

pub mod families;
pub mod kernels;
pub mod layers;
pub mod upload;

use candle_core::{Result, Tensor};

/// A tokenized, padded batch, already on the model's device. Uploaded once per batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[batch, seq]` u32 token ids, right-padded with the tokenizer's pad id.
    pub input_ids: Tensor,
    /// `[batch, seq]` u32, 1 for a real token and 0 for padding (Hugging Face's meaning).
    pub attention_mask: Tensor,
    /// `[batch, seq]` u32 segment ids (zeros where the model has no segments).
    pub token_type_ids: Tensor,
    /// `[batch, seq]` u32 absolute position ids, already offset as the model expects.
    pub position_ids: Tensor,
    /// Bytes of attention scores one query chunk may take: [`layers::ATTENTION_CHUNK_BYTES`]
    /// on the CPU, sized from the free memory on a GPU (`engine::budget`).
    pub chunk_bytes: usize,
}

/// How a family numbers positions. RoBERTa-style models start at `pad_token_id + 1` and give
/// padding the pad id itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionScheme {
    FromZero,
    AfterPadding { pad_token_id: u32 },
}

impl PositionScheme {
    pub fn position(self, index: usize, real: bool) -> u32 {
        match self {
            PositionScheme::FromZero => index as u32,
            PositionScheme::AfterPadding { pad_token_id } if real => {
                pad_token_id + 1 + index as u32
            }
            PositionScheme::AfterPadding { pad_token_id } => pad_token_id,
        }
    }

    /// How many positions the scheme spends before the first token.
    pub fn offset(self) -> usize {
        match self {
            PositionScheme::FromZero => 0,
            PositionScheme::AfterPadding { pad_token_id } => pad_token_id as usize + 1,
        }
    }
}

/// What a model's logits describe: each text (`*ForSequenceClassification`) or each of its
/// tokens (`*ForTokenClassification`: NER, PII).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Sequence,
    Token,
}

impl Task {
    /// From `architectures[0]`.
    pub fn of(architecture: &str) -> Self {
        if architecture.ends_with("ForTokenClassification") {
            Task::Token
        } else {
            Task::Sequence
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Sequence => "sequence",
            Task::Token => "token",
        }
    }
}

/// What the engine needs to know about a loaded architecture beyond its forward pass.
pub trait SequenceClassifier: Send + Sync {
    /// Logits in the compute dtype: `[batch, num_labels]`, or `[batch, tokens, num_labels]`
    /// for a [`Task::Token`] model.
    fn forward(&self, batch: &Batch) -> Result<Tensor>;
    fn position_scheme(&self) -> PositionScheme {
        PositionScheme::FromZero
    }
    /// Whether the model reads `token_type_ids` (BERT-style segments); otherwise zeros are sent.
    fn uses_token_types(&self) -> bool {
        false
    }
    /// Rows of the token-type embedding table, when [`Self::uses_token_types`]: every type id
    /// sent must be below it (checked on the host: on a GPU an id past the table is an
    /// out-of-bounds gather, not an error).
    fn token_types(&self) -> usize {
        0
    }
    /// Where a sequence head reads each text, for `inspect`: `"first token"` unless said
    /// otherwise (a token head reads every token; the engine says so from the task).
    fn pooling(&self) -> String {
        "first token".into()
    }
    /// The attention pattern, for `inspect`: `"bidirectional"` unless said otherwise.
    fn attention_pattern(&self) -> String {
        "bidirectional".into()
    }
    /// Longest sequence the position table (or rotary setup) allows, in tokens.
    fn max_positions(&self) -> usize;
    /// Rows of the word-embedding table; a tokenizer with more ids than this would index out of it.
    fn vocab_size(&self) -> usize;
    /// Bytes of attention working set (scores, probabilities, masks, position tables) that a
    /// forward pass of `rows` rows padded to `len` tokens takes at its peak. The scheduler
    /// cuts batches into passes under `--max-attention-mib` with it, and admission refuses a
    /// single input over that.
    /// Attention is query-chunked to `chunk_bytes` of scores, as [`Batch::chunk_bytes`].
    fn attention_bytes(&self, rows: usize, len: usize, chunk_bytes: usize) -> usize;
}

/// What the model families' and kernels' unit tests share: a committed fixture's config and
/// weights, a padded two-row batch, seeded data and a tensor distance.
#[cfg(test)]
pub(crate) mod testing {
    use super::Batch;
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    /// A fixture's config.json, parsed as `T`, and its weights in f32 on the CPU.
    pub fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> (T, VarBuilder<'static>) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let cfg: T =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        // SAFETY: a committed fixture, not modified while mapped.
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )
        }
        .unwrap();
        (cfg, vb)
    }

    /// Two rows of `t` ids below `vocab`, the second padded after `second` tokens.
    pub fn two_rows(t: usize, vocab: u32, second: usize) -> Batch {
        let dev = Device::Cpu;
        let ids: Vec<u32> = (0..2 * t as u32).map(|i| 5 + (i * 7) % vocab).collect();
        let keep: Vec<u32> = (0..2 * t)
            .map(|i| u32::from(i < t || i % t < second))
            .collect();
        let positions: Vec<u32> = (0..2 * t as u32).map(|i| i % t as u32).collect();
        Batch {
            input_ids: Tensor::from_vec(ids, (2, t), &dev).unwrap(),
            attention_mask: Tensor::from_vec(keep, (2, t), &dev).unwrap(),
            token_type_ids: Tensor::zeros((2, t), DType::U32, &dev).unwrap(),
            position_ids: Tensor::from_vec(positions, (2, t), &dev).unwrap(),
            chunk_bytes: crate::model::layers::ATTENTION_CHUNK_BYTES,
        }
    }

    /// `n` values in [-1, 1] from a xorshift seeded with `seed`, for the kernels' tests.
    pub(crate) fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }
}
