//! Text → token ids with the model's own tokenizer.json, truncated the way transformers does
//! (`truncation=True, max_length=model_max_length`, longest-first for pairs).

use std::path::Path;

use tokenizers::{
    ModelWrapper, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::engine::entities::{Spans, Vocabulary};
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
    /// The text and each token's place in it, for a token-classification model's entities;
    /// `None` for sequence models, which need only the ids. Taken off before the ids queue.
    pub spans: Option<Box<Spans>>,
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
            spans: None,
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
    /// Keep each text's offsets ([`Spans`]): the model classifies tokens.
    spans: bool,
    unk_id: Option<u32>,
}

/// What a token-classification load needs besides the tokenizer file: transformers'
/// `unk_token` (tokenizer_config.json), whose tokens the pipeline words by the text they cover.
#[derive(Debug, Clone, Default)]
pub struct TokenTask {
    pub unk_token: Option<String>,
}

impl TextTokenizer {
    /// With `token_task`, every encoded text keeps its [`Spans`].
    pub fn load(
        path: &Path,
        max_len: usize,
        pad_id: Option<u32>,
        token_task: Option<&TokenTask>,
    ) -> Result<Self, LoadError> {
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
        let model_unk = match tokenizer.get_model() {
            ModelWrapper::WordPiece(m) => Some(m.unk_token.clone()),
            ModelWrapper::BPE(m) => m.unk_token.clone(),
            _ => None,
        };
        let unk_id = token_task
            .and_then(|t| t.unk_token.clone())
            .or(model_unk)
            .and_then(|t| tokenizer.token_to_id(&t));
        Ok(Self {
            tokenizer,
            untruncated,
            max_len,
            vocab,
            pad_id,
            spans: token_task.is_some(),
            unk_id,
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
            // Entities are spans of a text: ids and pairs have none to point into.
            Input::Ids(_) | Input::Pair(..) if self.spans => {
                return Err(InputError::NeedsText);
            }
            Input::Ids(ids) => return self.check_ids(ids, truncate),
            Input::Text(t) if self.spans => tokenizer.encode_char_offsets(t.as_str(), true),
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
        let spans = match input {
            Input::Text(t) if self.spans => Some(Box::new(Spans {
                text: t.clone(),
                offsets: encoding.get_offsets().to_vec(),
                special: encoding
                    .get_special_tokens_mask()
                    .iter()
                    .map(|&m| m != 0)
                    .collect(),
            })),
            _ => None,
        };
        Ok(Encoded {
            ids: encoding.get_ids().to_vec(),
            type_ids: encoding.get_type_ids().to_vec(),
            spans,
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
            spans: None,
        })
    }
}

impl Vocabulary for TextTokenizer {
    fn token(&self, id: u32) -> String {
        self.tokenizer.id_to_token(id).unwrap_or_default()
    }
    fn join(&self, tokens: &[String]) -> String {
        // transformers' `convert_tokens_to_string`: the decoder, or a space between tokens.
        match self.tokenizer.get_decoder() {
            Some(d) => {
                use tokenizers::Decoder;
                d.decode(tokens.to_vec())
                    .unwrap_or_else(|_| tokens.join(" "))
            }
            None => tokens.join(" "),
        }
    }
    fn word_aware(&self) -> bool {
        match self.tokenizer.get_model() {
            ModelWrapper::WordPiece(m) => !m.continuing_subword_prefix.is_empty(),
            ModelWrapper::BPE(m) => m
                .continuing_subword_prefix
                .as_deref()
                .is_some_and(|p| !p.is_empty()),
            _ => false,
        }
    }
    fn unk_id(&self) -> Option<u32> {
        self.unk_id
    }
}
