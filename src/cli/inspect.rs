//! `inspect`: what a model directory holds and how this build runs it.

use std::io::Write;

use serde_json::json;

use super::{load, InspectArgs};
use crate::model::kernels::weights::WeightUse;

pub(crate) fn inspect(a: InspectArgs) -> anyhow::Result<i32> {
    let engine = load(&a.model)?;
    let info = engine.info();
    let ops = match a.ops {
        Some(len) => Some(engine.ops_per_forward(1, len)?),
        None => None,
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        let mut v = serde_json::to_value(info)?;
        if let Some(o) = v.as_object_mut() {
            if let Some(ops) = ops {
                o.insert("tensors_per_forward".into(), json!(ops.tensors));
                o.insert("uploads_per_forward".into(), json!(ops.uploads));
            }
            if a.weights {
                o.insert("matmuls".into(), json!(engine.matmuls()));
            }
        }
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "architecture   {}", info.architecture)?;
        writeln!(out, "family         {}", info.family)?;
        writeln!(out, "labels         {}", info.labels.join(", "))?;
        writeln!(out, "problem type   {}", info.problem_type)?;
        writeln!(out, "parameters     {}", info.parameters)?;
        writeln!(out, "max length     {} tokens", info.max_length)?;
        writeln!(out, "weight dtype   {}", info.weight_dtype)?;
        writeln!(
            out,
            "compute dtype  {} ({})",
            info.compute_dtype, info.dtype_reason
        )?;
        writeln!(out, "kernels        {}", info.kernels)?;
        writeln!(out, "device         {}", info.device)?;
        writeln!(out, "task           {}", info.task)?;
        writeln!(out, "pooling        {}", info.pooling)?;
        writeln!(out, "attention      {}", info.attention)?;
        writeln!(
            out,
            "attn chunk     {} MiB of scores at most",
            info.attention_chunk_mib
        )?;
        if let (Some(ops), Some(len)) = (ops, a.ops) {
            let tensors = ops.tensors.map_or("?".to_string(), |n| n.to_string());
            writeln!(
                out,
                "tensor ops     {tensors} per forward pass of 1 × {len} tokens, {} of them \
                 made from host data (uploads on a GPU)",
                ops.uploads
            )?;
        }
        if a.weights {
            write_matmuls(&mut out, engine.matmuls())?;
        }
    }
    Ok(0)
}

/// `--weights` as text: one line per packed matmul weight, its kernel, shape and names.
fn write_matmuls(out: &mut impl Write, matmuls: &[WeightUse]) -> std::io::Result<()> {
    if matmuls.is_empty() {
        return writeln!(
            out,
            "matmuls        candle's, every one (a GPU, or F16/BF16)"
        );
    }
    let count = |kernel| matmuls.iter().filter(|m| m.kernel == kernel).count();
    writeln!(
        out,
        "matmuls        {} int8, {} f32",
        count("int8"),
        count("f32")
    )?;
    for m in matmuls {
        let names = match m.names.as_slice() {
            [] => "(built at load, unnamed: not in the weights cache)".to_string(),
            names => names.join(" + "),
        };
        writeln!(out, "  {:<5}{:>6} → {:<6} {names}", m.kernel, m.k, m.n)?;
    }
    Ok(())
}
