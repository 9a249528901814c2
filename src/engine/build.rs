//! A model directory built into a [`SequenceClassifier`]: the family from the registry
//! ([`crate::model::families::FAMILIES`]), its weights private or viewed in the weights cache
//! ([`crate::engine::cache`]).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::engine::cache::{CacheFile, CacheStatus};
use crate::engine::error::LoadError;
use crate::engine::loader::ModelDir;
use crate::model::families::{self, BuildError, Spec};
use crate::model::kernels::weights;
use crate::model::{SequenceClassifier, Task};

/// The architectures (`architectures[0]` in config.json) this build can serve, sequence heads
/// first: the registry's names, for messages and `inspect`.
pub fn supported() -> String {
    families::architectures().join(", ")
}

/// The error for a directory whose architecture no family serves.
pub(super) fn unknown(dir: &ModelDir) -> LoadError {
    LoadError::UnknownArchitecture {
        path: dir.config_path.clone(),
        architecture: dir.head.architecture.clone(),
        supported: supported(),
    }
}

pub(super) fn build_model(
    dir: &ModelDir,
    vb: VarBuilder,
) -> Result<Box<dyn SequenceClassifier>, LoadError> {
    let architecture = dir.head.architecture.as_str();
    let family = families::find(architecture).ok_or_else(|| unknown(dir))?;
    let spec = Spec {
        architecture,
        config: &dir.config,
        num_labels: dir.head.labels.len(),
        task: Task::of(architecture),
    };
    (family.build)(&spec, vb).map_err(|e| match e {
        BuildError::Config(message) => LoadError::Config {
            path: dir.config_path.clone(),
            message,
        },
        BuildError::Weights(e) => LoadError::Weights {
            path: if dir.weight_files.len() == 1 {
                dir.weight_files[0].clone()
            } else {
                dir.root.clone()
            },
            message: crate::engine::error::one_line(&e),
        },
    })
}

/// A built model, how it used the weights cache, and `(entries used in place, in the file)`.
pub(super) type Built = (Box<dyn SequenceClassifier>, CacheStatus, (usize, usize));

/// Builds the model taking its large CPU weights from `cached`, reporting `status` and how many
/// of the file's entries the model uses in place.
pub(super) fn replay(
    dir: &ModelDir,
    vb: VarBuilder,
    cached: crate::model::kernels::weights::Cached,
    status: CacheStatus,
) -> Result<Built, LoadError> {
    let cached = Arc::new(cached);
    let model = weights::replaying(cached.clone(), || build_model(dir, vb))?;
    Ok((model, status, (cached.used(), cached.len())))
}

/// What a cache file is keyed by besides the model's files: where it lives, the compute dtype
/// and the kernel sets.
pub(super) struct CacheKey<'a> {
    pub dir: &'a Path,
    pub dtype: &'a str,
    pub kernels: &'a str,
}

/// Builds the model with its large CPU weights viewed in the cache file: replayed from a valid
/// file, or recorded from the checkpoint, written, and then replayed from the new file (so the
/// first start serves from shared pages too). `file` was keyed before the weights were mapped;
/// it is keyed again after a recording build, and not written if the model's files changed in
/// between. Cache trouble never fails a load: the weights then stay private and the status says
/// why.
pub(super) fn build_cached(
    dir: &ModelDir,
    vb: VarBuilder,
    file: std::io::Result<CacheFile>,
    key: CacheKey<'_>,
    device: &Device,
) -> Result<Built, LoadError> {
    let private = |status: CacheStatus, vb| Ok((build_model(dir, vb)?, status, (0, 0)));
    let file = match file {
        Ok(f) => f,
        Err(e) => {
            let status = CacheStatus::Unwritable {
                path: key.dir.to_path_buf(),
                why: format!("cannot key the model's files: {e}"),
            };
            return private(status, vb);
        }
    };
    if let Err(why) = file.dir_trusted() {
        let status = CacheStatus::Untrusted {
            path: key.dir.to_path_buf(),
            why,
        };
        return private(status, vb);
    }
    let why = match file.open() {
        Ok(Some(cached)) => return replay(dir, vb, cached, CacheStatus::Hit(file.path)),
        Ok(None) => "none yet".to_string(),
        Err(invalid) => invalid,
    };
    let (model, rec) = weights::recording(|| build_model(dir, vb));
    let model = model?;
    let unwritable = |path, why| (CacheStatus::Unwritable { path, why }, (0, 0));
    match CacheFile::for_model(key.dir, dir, key.dtype, key.kernels) {
        Ok(again) if again.same_key(&file) => {}
        _ => {
            let (status, views) = unwritable(
                file.path,
                "the model's files changed during the load; not cached".into(),
            );
            return Ok((model, status, views));
        }
    }
    if let Err(e) = file.write(&rec) {
        let (status, views) = unwritable(file.path, e.to_string());
        return Ok((model, status, views));
    }
    drop(rec);
    match file.open() {
        Ok(Some(cached)) => {
            let vb =
                VarBuilder::from_backend(Box::new(dir.map_weights()?), DType::F32, device.clone());
            drop(model);
            let status = CacheStatus::Written {
                path: file.path,
                why,
            };
            replay(dir, vb, cached, status)
        }
        // Written but gone or unreadable at once (another process, a full disk): serve what
        // was built.
        other => {
            let why = match other {
                Err(e) => e,
                _ => "vanished after writing".into(),
            };
            let (status, views) = unwritable(file.path, why);
            Ok((model, status, views))
        }
    }
}
