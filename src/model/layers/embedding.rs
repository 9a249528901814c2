//! Embedding tables: a candle tensor (GPU, reduced precision, or a CPU build without the
//! weights cache), or rows viewed in place in the mapped weights cache. The word table is the
//! largest single weight of a small encoder (47 MB of f32 for MiniLM's 30,522 × 384), so
//! gathering rows straight from the mapping keeps it out of private memory.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use half::slice::HalfFloatSliceExt;

use crate::model::kernels::weights::{self, Kind, Values};

#[derive(Clone)]
pub enum Embedding {
    Tensor(candle_nn::Embedding),
    Mapped {
        rows: usize,
        width: usize,
        values: Values,
    },
}

/// Loads an embedding table and checks its shape: from the weights cache when the build is
/// replaying it, otherwise from the checkpoint.
pub fn embedding(rows: usize, width: usize, vb: VarBuilder) -> Result<Embedding> {
    let name = weights::name(&vb, "weight");
    if let Some(values) = weights::view(&vb, &name, Kind::Rows, (rows, width)) {
        return Ok(Embedding::Mapped {
            rows,
            width,
            values,
        });
    }
    let w = vb.get((rows, width), "weight")?;
    weights::note_rows(&vb, name, &w);
    Ok(Embedding::Tensor(candle_nn::Embedding::new(w, width)))
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (rows, width, values) = match self {
            Embedding::Tensor(e) => return e.forward(ids),
            Embedding::Mapped {
                rows,
                width,
                values,
            } => (*rows, *width, values),
        };
        let flat: Vec<u32> = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
        let mut out = vec![0f32; flat.len() * width];
        for (dst, &id) in out.chunks_exact_mut(width).zip(&flat) {
            let id = id as usize;
            if id >= rows {
                candle_core::bail!("token id {id} is outside the embedding table of {rows} rows");
            }
            let span = id * width..(id + 1) * width;
            match values {
                Values::F32(v) => dst.copy_from_slice(&v[span]),
                Values::F16(v) => v[span].convert_to_f32_slice(dst),
            }
        }
        let mut dims = ids.dims().to_vec();
        dims.push(width);
        Tensor::from_vec(out, dims, &Device::Cpu)
    }
}
