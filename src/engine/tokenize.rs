//! Text → token ids with the model's own tokenizer.json, truncated the way transformers does
//! (`truncation=True, max_length=model_max_length`, longest-first for pairs).

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::engine::error::{InputError, LoadError};

/// One thing to classify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Text(String),
    /// A sentence pair for cross-encoders and NLI models.
    Pair(String, String),
    /// Ids already produced by the same tokenizer, special tokens included.
    Ids(Vec<u32>),
}

/// Token ids for one input, ready to be padded into a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// `len` copies of token `id`, segment 0: a stand-in input of a chosen length (warm-up,
    /// measurements).
    pub fn synthetic(id: u32, len: usize) -> Self {
        Self {
            ids: vec![id; len],
            type_ids: vec![0; len],
        }
    }
}

pub struct TextTokenizer {
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation, for `no_truncate` requests: one pass both measures
    /// an over-long input exactly and encodes one that fits. Built once here so no request
    /// clones a whole vocabulary.
    untruncated: Tokenizer,
    max_len: usize,
    vocab: usize,
    pad_id: u32,
}

impl TextTokenizer {
    pub fn load(path: &Path, max_len: usize, pad_id: Option<u32>) -> Result<Self, LoadError> {
        let err = |message: String| LoadError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        std::str::from_utf8(&bytes).map_err(|e| LoadError::Json {
            path: path.to_path_buf(),
            message: format!("not UTF-8 ({e})"),
        })?;
        let mut tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| err(e.to_string()))?;
        // Padding is ours (per batch); truncation is set once so overflow tells us it happened.
        tokenizer.with_padding(None);
        let mut untruncated = tokenizer.clone();
        untruncated
            .with_truncation(None)
            .map_err(|e| err(e.to_string()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| err(e.to_string()))?;
        // The highest id the tokenizer can emit bounds the embedding rows it needs; added tokens
        // may sit anywhere, so the count of entries is not enough.
        let vocab = tokenizer
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&m| m as usize + 1);
        let pad_id = pad_id
            .or_else(|| tokenizer.get_padding().map(|p| p.pad_id))
            .or_else(|| {
                ["[PAD]", "<pad>", "<PAD>"]
                    .iter()
                    .find_map(|t| tokenizer.token_to_id(t))
            })
            .unwrap_or(0);
        Ok(Self {
            tokenizer,
            untruncated,
            max_len,
            vocab,
            pad_id,
        })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }
    /// One more than the highest id the tokenizer can produce, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Tokenizes one input, once. With `truncate` false, an input longer than the model allows
    /// is an error (naming its exact length) instead of being cut.
    pub fn encode(&self, input: &Input, truncate: bool) -> Result<Encoded, InputError> {
        // Refusing needs the exact length, so the untruncated tokenizer runs instead of the
        // truncating one; within the limit both give the same encoding.
        let tokenizer = if truncate {
            &self.tokenizer
        } else {
            &self.untruncated
        };
        let encoding = match input {
            Input::Ids(ids) => return self.check_ids(ids, truncate),
            Input::Text(t) => tokenizer.encode(t.as_str(), true),
            Input::Pair(a, b) => tokenizer.encode((a.as_str(), b.as_str()), true),
        }
        .map_err(|e| InputError::Tokenize(e.to_string()))?;
        if !truncate && encoding.len() > self.max_len {
            return Err(InputError::TooLong {
                tokens: encoding.len(),
                max: self.max_len,
            });
        }
        Ok(Encoded {
            ids: encoding.get_ids().to_vec(),
            type_ids: encoding.get_type_ids().to_vec(),
        })
    }

    fn check_ids(&self, ids: &[u32], truncate: bool) -> Result<Encoded, InputError> {
        if ids.is_empty() {
            return Err(InputError::EmptyIds);
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab) {
            return Err(InputError::TokenOutOfRange {
                id,
                vocab: self.vocab,
            });
        }
        if ids.len() > self.max_len && !truncate {
            return Err(InputError::TooLong {
                tokens: ids.len(),
                max: self.max_len,
            });
        }
        let ids = ids[..ids.len().min(self.max_len)].to_vec();
        Ok(Encoded {
            type_ids: vec![0; ids.len()],
            ids,
        })
    }
}
