//! One file or folder per architecture family, and the registry that names them.
//!
//! [`FAMILIES`] is the one list of the `architectures` names classifyd serves: the engine builds
//! through it, `inspect` and the unknown-architecture error read it. A new family is a new file
//! that declares its [`Family`] and one line here.

pub mod bert;
pub mod deberta;
pub mod decoder;
pub mod distilbert;
pub mod electra;
pub mod modernbert;
pub mod roberta;

use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;

use crate::model::{SequenceClassifier, Task};

/// What a family's builder is given: the directory's config.json and its head's shape.
pub struct Spec<'a> {
    /// `architectures[0]`, one of the family's [`Family::architectures`].
    pub architecture: &'a str,
    pub config: &'a serde_json::Value,
    pub num_labels: usize,
    pub task: Task,
}

/// Why a family could not be built: its config.json (a message for that file), or its weights.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Weights(#[from] candle_core::Error),
}

/// The most positions any family builds tables for from config.json alone (rotary tables,
/// relative-position indices): a config asking for more is refused before anything is
/// allocated, so a hostile or mistyped `max_position_embeddings` is a load error, not an
/// allocation failure that aborts the process (on SIGHUP too). Position *embeddings* need no
/// bound here: their size is checked against the weight file's header before it is read.
pub const MAX_POSITIONS: usize = 1 << 16;

/// `max_position_embeddings` within [`MAX_POSITIONS`] (and above zero), as a config message.
pub fn positions_within(positions: usize) -> Result<(), String> {
    if positions == 0 || positions > MAX_POSITIONS {
        return Err(format!(
            "max_position_embeddings {positions} is outside 1..={MAX_POSITIONS}, the positions \
             classifyd builds tables for"
        ));
    }
    Ok(())
}

/// A built model, boxed behind the trait the engine drives.
pub type Built = Result<Box<dyn SequenceClassifier>, BuildError>;

/// One architecture family: the `architectures` names it serves and how to build it.
pub struct Family {
    /// For `inspect` and docs: "BERT", "DeBERTa-v2", ….
    pub name: &'static str,
    /// Every `architectures[0]` this family loads, sequence and token heads alike.
    pub architectures: &'static [&'static str],
    /// A decoder LLM: its `--dtype auto` on a GPU is BF16 (see `engine::device`).
    pub decoder: bool,
    pub build: fn(&Spec<'_>, VarBuilder<'_>) -> Built,
}

/// Every family this build serves, in the order the unknown-architecture error lists them.
pub const FAMILIES: &[&Family] = &[
    &bert::FAMILY,
    &distilbert::FAMILY,
    &roberta::FAMILY,
    &electra::FAMILY,
    &modernbert::FAMILY,
    &deberta::FAMILY,
    &decoder::llama::FAMILY,
    &decoder::mistral::FAMILY,
    &decoder::qwen2::FAMILY,
    &decoder::qwen3::FAMILY,
    &decoder::gemma2::FAMILY,
    &decoder::gemma3::FAMILY,
];

/// The family that serves `architecture`, if any.
pub fn find(architecture: &str) -> Option<&'static Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.architectures.contains(&architecture))
}

/// Every architecture name served, sequence heads first, then token heads.
pub fn architectures() -> Vec<&'static str> {
    let all = || {
        FAMILIES
            .iter()
            .flat_map(|f| f.architectures.iter().copied())
    };
    let (seq, tok): (Vec<_>, Vec<_>) = all().partition(|a| Task::of(a) == Task::Sequence);
    seq.into_iter().chain(tok).collect()
}

/// config.json as the family's config type; a serde error is a message for that file.
pub fn parse<T: DeserializeOwned>(spec: &Spec<'_>) -> Result<T, BuildError> {
    T::deserialize(spec.config).map_err(|e| BuildError::Config(e.to_string()))
}

/// The usual builder: config.json parsed as `C`, checked by `check`, then `load`ed.
pub fn build_checked<C, M>(
    spec: &Spec<'_>,
    vb: VarBuilder<'_>,
    check: fn(&C) -> Result<(), String>,
    load: for<'v> fn(C, usize, Task, VarBuilder<'v>) -> candle_core::Result<M>,
) -> Built
where
    C: DeserializeOwned,
    M: SequenceClassifier + 'static,
{
    let cfg: C = parse(spec)?;
    checked(check(&cfg))?;
    Ok(Box::new(load(cfg, spec.num_labels, spec.task, vb)?))
}

/// A family's own consistency check, as a config error.
pub fn checked(r: Result<(), String>) -> Result<(), BuildError> {
    r.map_err(BuildError::Config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_is_served_by_exactly_one_family() {
        let all = architectures();
        for a in &all {
            let owners = FAMILIES
                .iter()
                .filter(|f| f.architectures.contains(a))
                .count();
            assert_eq!(owners, 1, "{a} is claimed by {owners} families");
        }
        assert!(all.iter().all(|a| find(a).is_some()));
        assert!(find("GPT2ForSequenceClassification").is_none());
        // Sequence heads are listed before token heads.
        let first_token = all.iter().position(|a| Task::of(a) == Task::Token).unwrap();
        assert!(all[first_token..]
            .iter()
            .all(|a| Task::of(a) == Task::Token));
    }

    /// The registry is the only list: no source file outside the family that serves it spells
    /// an architecture name, so a new family is its own file plus one line in [`FAMILIES`].
    #[test]
    fn architecture_names_are_written_only_in_their_family() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
        for family in FAMILIES {
            for a in family.architectures {
                let quoted = format!("\"{a}\"");
                let writers: Vec<_> = files
                    .iter()
                    .filter(|p| std::fs::read_to_string(p).unwrap().contains(&quoted))
                    .map(|p| p.strip_prefix(&src).unwrap().display().to_string())
                    .collect();
                assert_eq!(writers.len(), 1, "{a} is written in {writers:?}");
                assert!(
                    writers[0].starts_with("model/families/"),
                    "{a} is written in {}",
                    writers[0]
                );
            }
        }
    }
}
