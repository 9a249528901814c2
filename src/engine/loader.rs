//! Reading a Hugging Face model directory: config.json, the safetensors weights (single file or
//! sharded with an index), tokenizer.json and tokenizer_config.json.
//!
//! Everything here validates before the model code sees it, so a bad directory ends in one
//! [`LoadError`] naming the file, never in a panic deep inside candle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use serde_json::Value;

use crate::engine::error::LoadError;

/// How scores are derived from logits; transformers' `problem_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    /// Softmax over the labels.
    SingleLabel,
    /// Independent sigmoid per label.
    MultiLabel,
    /// One raw value, no squashing.
    Regression,
}

impl ProblemType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemType::SingleLabel => "single_label_classification",
            ProblemType::MultiLabel => "multi_label_classification",
            ProblemType::Regression => "regression",
        }
    }
}

/// The parts of config.json common to every architecture.
#[derive(Debug, Clone)]
pub struct HeadConfig {
    pub architecture: String,
    pub labels: Vec<String>,
    pub problem_type: ProblemType,
    pub pad_token_id: Option<u32>,
}

/// A model directory whose files exist and whose JSON parses.
#[derive(Debug)]
pub struct ModelDir {
    pub root: PathBuf,
    pub config_path: PathBuf,
    /// config.json, parsed; each architecture deserializes its own fields from it.
    pub config: Value,
    pub head: HeadConfig,
    pub weight_files: Vec<PathBuf>,
    pub tokenizer_path: PathBuf,
    /// `model_max_length` from tokenizer_config.json, when it is a real limit.
    pub model_max_length: Option<usize>,
    /// `unk_token` from tokenizer_config.json (a string or an added-token object).
    pub unk_token: Option<String>,
}

fn read_json(path: &Path, what: &'static str) -> Result<Value, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => LoadError::Missing {
            path: path.to_path_buf(),
            what,
        },
        _ => LoadError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    parse_json(path, &bytes)
}

fn parse_json(path: &Path, bytes: &[u8]) -> Result<Value, LoadError> {
    let text = std::str::from_utf8(bytes).map_err(|e| LoadError::Json {
        path: path.to_path_buf(),
        message: format!("not UTF-8 ({e})"),
    })?;
    serde_json::from_str(text).map_err(|e| LoadError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// config.json's bytes → the parsed JSON and the head every architecture shares, as
/// [`ModelDir::open`] reads them; `path` only names the file in errors. Public so the fuzz
/// targets (fuzz/) reach the parser without a model directory.
pub fn parse_config_json(path: &Path, bytes: &[u8]) -> Result<(Value, HeadConfig), LoadError> {
    let config = parse_json(path, bytes)?;
    let head = parse_head(&config, path)?;
    Ok((config, head))
}

fn config_err(path: &Path, message: impl Into<String>) -> LoadError {
    LoadError::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// More labels than any sequence classifier has. `num_labels` without `id2label` makes one
/// `LABEL_i` name per label before the weights are looked at, so without a cap one number in
/// config.json could allocate names by the billion (found by fuzz/ config_json).
pub const MAX_LABELS: usize = 1 << 16;

/// `id2label` may be missing (labels default to LABEL_i), keyed by "0".."n-1", or (in hand-written
/// configs) carry integer values inverted like `label2id`.
fn parse_labels(config: &Value, path: &Path) -> Result<Vec<String>, LoadError> {
    let num_labels = match config.get("num_labels") {
        Some(v) => Some(v.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
            config_err(path, format!("num_labels {v} is not a positive integer"))
        })?),
        None => None,
    };
    let num_labels = match num_labels {
        Some(n) if n > MAX_LABELS as u64 => {
            return Err(config_err(
                path,
                format!("num_labels {n} is more than the {MAX_LABELS} labels supported"),
            ))
        }
        n => n.map(|n| n as usize),
    };
    let Some(map) = config.get("id2label") else {
        let n = num_labels.unwrap_or(2);
        return Ok((0..n).map(|i| format!("LABEL_{i}")).collect());
    };
    let obj = map
        .as_object()
        .ok_or_else(|| config_err(path, "id2label is not an object"))?;
    let mut by_id = BTreeMap::new();
    for (k, v) in obj {
        let (id, name) = match (k.trim().parse::<usize>(), v) {
            (Ok(id), Value::String(s)) => (id, s.clone()),
            (Ok(id), Value::Number(n)) => (id, n.to_string()),
            (Err(_), Value::Number(n)) => match n.as_u64() {
                Some(id) => (id as usize, k.clone()),
                None => {
                    return Err(config_err(
                        path,
                        format!("id2label entry {k:?}: {n} is not an id"),
                    ))
                }
            },
            _ => {
                return Err(config_err(
                    path,
                    format!("id2label entry {k:?} is not id → label"),
                ))
            }
        };
        if by_id.insert(id, name).is_some() {
            return Err(config_err(path, format!("id2label has id {id} twice")));
        }
    }
    let n = by_id.len();
    if n == 0 {
        return Err(config_err(path, "id2label is empty"));
    }
    if by_id.keys().copied().ne(0..n) {
        return Err(config_err(path, "id2label ids are not 0..n-1"));
    }
    if let Some(expected) = num_labels {
        if expected != n {
            return Err(config_err(
                path,
                format!("num_labels is {expected} but id2label has {n} entries"),
            ));
        }
    }
    Ok(by_id.into_values().collect())
}

fn parse_head(config: &Value, path: &Path) -> Result<HeadConfig, LoadError> {
    let architecture = config
        .get("architectures")
        .and_then(|a| a.as_array())
        .and_then(|a| a.first())
        .and_then(|a| a.as_str())
        .ok_or_else(|| config_err(path, "no \"architectures\" entry naming the model class"))?
        .to_string();
    let labels = parse_labels(config, path)?;
    let problem_type = match config.get("problem_type").and_then(|p| p.as_str()) {
        Some("multi_label_classification") => ProblemType::MultiLabel,
        Some("regression") => ProblemType::Regression,
        Some("single_label_classification") => ProblemType::SingleLabel,
        Some(other) => return Err(config_err(path, format!("unknown problem_type {other:?}"))),
        None if labels.len() == 1 => ProblemType::Regression,
        None => ProblemType::SingleLabel,
    };
    let pad_token_id = config
        .get("pad_token_id")
        .and_then(|v| v.as_u64())
        .map(|v| v as u32);
    Ok(HeadConfig {
        architecture,
        labels,
        problem_type,
        pad_token_id,
    })
}

/// The weight files of the directory: `model.safetensors`, or the shards its index names.
fn weight_files(root: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let single = root.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = root.join("model.safetensors.index.json");
    if !index_path.is_file() {
        // The format people most often have instead: say how to get safetensors from it.
        for found in ["pytorch_model.bin", "pytorch_model.bin.index.json"] {
            if root.join(found).is_file() {
                return Err(LoadError::PickleOnly {
                    path: root.to_path_buf(),
                    found,
                });
            }
        }
        return Err(LoadError::Missing {
            path: single,
            what: "weights: neither model.safetensors nor model.safetensors.index.json",
        });
    }
    let index = read_json(&index_path, "weights index")?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| config_err(&index_path, "no \"weight_map\" object"))?;
    let mut files = BTreeSet::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            config_err(
                &index_path,
                format!("weight_map[{tensor:?}] is not a file name"),
            )
        })?;
        // A shard name must stay inside the model directory.
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(config_err(
                &index_path,
                format!("shard name {file:?} is not a plain file name"),
            ));
        }
        files.insert(file.to_string());
    }
    if files.is_empty() {
        return Err(config_err(&index_path, "weight_map is empty"));
    }
    files
        .into_iter()
        .map(|f| {
            let p = root.join(&f);
            if p.is_file() {
                Ok(p)
            } else {
                Err(LoadError::Missing {
                    path: p,
                    what: "weight shard named in model.safetensors.index.json",
                })
            }
        })
        .collect()
}

/// tokenizer_config.json, when there is one.
fn tokenizer_config(root: &Path) -> Result<Option<Value>, LoadError> {
    let path = root.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(None);
    }
    read_json(&path, "tokenizer config").map(Some)
}

fn unk_token_of(cfg: &Value) -> Option<String> {
    let unk = cfg.get("unk_token")?;
    unk.as_str()
        .or_else(|| unk.get("content").and_then(Value::as_str))
        .map(str::to_string)
}

/// `model_max_length` is set to 1e30 by transformers when a tokenizer has no limit.
fn max_length_of(cfg: &Value) -> Option<usize> {
    cfg.get("model_max_length")
        .and_then(|v| v.as_f64())
        .filter(|v| *v >= 1.0 && *v < 1.0e9)
        .map(|v| v as usize)
}

/// tokenizer_config.json's bytes → `model_max_length` when it is a real limit, as
/// [`ModelDir::open`] reads it; `path` only names the file in errors. Public for the fuzz
/// targets (fuzz/).
pub fn parse_tokenizer_config(path: &Path, bytes: &[u8]) -> Result<Option<usize>, LoadError> {
    Ok(max_length_of(&parse_json(path, bytes)?))
}

impl ModelDir {
    pub fn open(root: &Path) -> Result<Self, LoadError> {
        if root.exists() && !root.is_dir() {
            return Err(LoadError::NotADirectory {
                path: root.to_path_buf(),
            });
        }
        if !root.is_dir() {
            return Err(LoadError::Missing {
                path: root.to_path_buf(),
                what: "model directory",
            });
        }
        let config_path = root.join("config.json");
        let config = read_json(&config_path, "model config")?;
        let head = parse_head(&config, &config_path)?;
        let weight_files = weight_files(root)?;
        let tokenizer_path = root.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(LoadError::Missing {
                path: tokenizer_path,
                what: "tokenizer",
            });
        }
        let tok_cfg = tokenizer_config(root)?;
        Ok(Self {
            root: root.to_path_buf(),
            config_path,
            model_max_length: tok_cfg.as_ref().and_then(max_length_of),
            unk_token: tok_cfg.as_ref().and_then(unk_token_of),
            config,
            head,
            weight_files,
            tokenizer_path,
        })
    }

    /// Memory-maps every weight file, checking each header and that its data fits the file.
    ///
    /// The maps live only as long as the returned value, and the engine drops it once the model
    /// is built: every tensor is copied out of the map as it is loaded (candle's
    /// `MmapedSafetensors::load` ends in `Tensor::from_slice`, which copies into CPU storage or
    /// uploads to the device), and `Engine::load` hands the maps to a `VarBuilder` that
    /// `build_model` consumes. Keep it that way: a weight file truncated in place while it is
    /// mapped makes the next read of the lost pages a SIGBUS, which would kill the daemon. With
    /// no map alive while serving, only a truncation racing a load (start or SIGHUP) can do
    /// that; a file replaced by rename cannot, as the map holds the old inode.
    pub fn map_weights(&self) -> Result<MmapedSafetensors, LoadError> {
        for path in &self.weight_files {
            check_complete(path)?;
            // Opened one by one first so the error names the broken file.
            // SAFETY: the map is read-only and dropped before serving starts (see above); the
            // header checks refuse a file whose data does not fit it.
            unsafe { MmapedSafetensors::new(path) }.map_err(|e| LoadError::Weights {
                path: path.clone(),
                message: crate::engine::error::one_line(&e),
            })?;
        }
        // SAFETY: as above.
        unsafe { MmapedSafetensors::multi(&self.weight_files) }.map_err(|e| LoadError::Weights {
            path: self.root.clone(),
            message: crate::engine::error::one_line(&e),
        })
    }
}

/// A safetensors file is as long as its header says: 8 bytes of header length, the JSON
/// header, then the tensors' data up to the largest `data_offsets` end. A shorter file is the
/// common case of an interrupted download or copy, which the safetensors crate reports only as
/// "incomplete metadata, file not fully covered"; this says which and by how much. Anything
/// else wrong with the header is left to the safetensors crate's own checks.
fn check_complete(path: &Path) -> Result<(), LoadError> {
    use std::io::Read;
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let truncated = |want: u64, have: u64| LoadError::Weights {
        path: path.to_path_buf(),
        message: format!(
            "truncated: its header describes {want} bytes but the file has {have} (an \
             interrupted download or copy? fetch or copy it again)"
        ),
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let have = file.metadata().map_err(io)?.len();
    let mut len = [0u8; 8];
    if have < 8 {
        return Err(truncated(8, have));
    }
    file.read_exact(&mut len).map_err(io)?;
    let header_len = u64::from_le_bytes(len);
    // The safetensors crate's own bound on a header; past it the crate's error says why.
    if header_len > 100_000_000 {
        return Ok(());
    }
    if 8 + header_len > have {
        return Err(truncated(8 + header_len, have));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let Ok(serde_json::Value::Object(tensors)) = serde_json::from_slice(&header) else {
        return Ok(());
    };
    let data_end = tensors
        .values()
        .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let want = 8 + header_len + data_end;
    if want > have {
        return Err(truncated(want, have));
    }
    Ok(())
}

/// Summary of the stored tensors: total parameters and the dtype(s) they are stored in.
pub fn weight_summary(st: &MmapedSafetensors) -> (usize, String) {
    let mut params = 0usize;
    let mut dtypes = BTreeSet::new();
    for (_, view) in st.tensors() {
        params += view.shape().iter().product::<usize>();
        dtypes.insert(format!("{:?}", view.dtype()));
    }
    (params, dtypes.into_iter().collect::<Vec<_>>().join("+"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_num_labels_is_refused_before_naming_labels() {
        let path = Path::new("config.json");
        let e = parse_config_json(
            path,
            br#"{"architectures": ["X"], "num_labels": 100000000000}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("num_labels 100000000000"), "{e}");
        let (_, head) =
            parse_config_json(path, br#"{"architectures": ["X"], "num_labels": 3}"#).unwrap();
        assert_eq!(head.labels, ["LABEL_0", "LABEL_1", "LABEL_2"]);
    }
}
