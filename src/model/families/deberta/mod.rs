//! DeBERTa-v2 / v3 (`DebertaV2ForSequenceClassification`).
//!
//! Mirrors transformers' `modeling_deberta_v2.py` / `configuration_deberta_v2.py`:
//! disentangled self-attention (content→content plus content→position "c2p" and
//! position→content "p2c" terms over log-bucketed relative positions), the optional
//! convolution after the first layer, and the `ContextPooler` (dense + activation on `[CLS]`)
//! in front of the classifier.
//!
//! Implementation notes:
//! * Everything that does not depend on the input is computed once at load: the (normalised)
//!   relative embeddings are projected through each layer's position key/query projections, and
//!   the `1/sqrt(head_dim * scale_factor)` factor is folded into the query projection (which
//!   scales content→content and c2p) and into the projected position queries (p2c). Scores are
//!   therefore never formed unscaled, which keeps F16 clear of overflow.
//! * The c2p/p2c `torch.gather` calls become one `index_select` over a flattened
//!   `[query, 2*span]` score matrix with a `T*T` index built on the host per sequence length
//!   (relative positions depend only on `T`).
//! * Attention runs head-major (`[heads, batch, seq, head_dim]`) so the position projections,
//!   shared by the whole batch, multiply every row of a head in a single matmul.
//! * Only `[CLS]` of the last layer reaches the classifier, so the last layer computes its
//!   query row 0 only (keys and values still span the whole sequence).
//! * transformers masks with an outer-product `[B,1,T,T]` mask; for real query rows that is
//!   exactly a key mask, and padded query rows never influence real ones, so an additive key
//!   mask (finite, in the compute dtype) gives identical logits.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::model::layers::Embedding;

mod config;
mod relpos;

pub use config::{Config, MAX_RELATIVE_POSITIONS};
#[cfg(test)]
use relpos::log_bucket;
use relpos::{check_sizes, pass_indices};

use crate::model::layers::{
    additive_key_mask, attention_dtype, embedding, first_positions, first_token, Activation,
    LayerNorm, Linear, TokenHead,
};
use crate::model::{Batch, SequenceClassifier, Task};

/// DeBERTa-v2/v3 in the registry ([`crate::model::families::FAMILIES`]).
pub const FAMILY: crate::model::families::Family = crate::model::families::Family {
    name: "DeBERTa-v2/v3",
    decoder: false,
    architectures: &[
        "DebertaV2ForSequenceClassification",
        "DebertaV2ForTokenClassification",
    ],
    build: |spec, vb| {
        crate::model::families::build_checked(spec, vb, Config::check, DebertaV2::load)
    },
};

/// Relative attention's parameters from config.json, when it is on.
struct Relative {
    span: i64,
    buckets: i64,
    max_rel: i64,
}

impl Relative {
    /// The gather indices of a pass of `q_len` query rows over `t` keys, on `device`: built on
    /// the host per pass (`q_len × t` entries each, small beside the pass's scores) for only
    /// the relative-embedding columns the pass reads (see [`relpos::PassIndices`]).
    fn pass(&self, q_len: usize, t: usize, device: &Device) -> Result<PassRel> {
        let p = pass_indices(q_len, t, self.span, self.buckets, self.max_rel)
            .map_err(candle_core::Error::msg)?;
        Ok(PassRel {
            c2p: crate::model::upload::from_vec(p.c2p, q_len * t, device)?,
            c2p_cols: p.c2p_cols,
            p2c: crate::model::upload::from_vec(p.p2c, q_len * t, device)?,
            p2c_cols: p.p2c_cols,
        })
    }
}

/// One pass's flattened gather indices and the `(first, width)` columns each reads. Row-major
/// by query, so a layer that computes only the first `q` query rows reads the first `q·t`
/// entries of each.
struct PassRel {
    c2p: Tensor,
    c2p_cols: (usize, usize),
    p2c: Tensor,
    p2c_cols: (usize, usize),
}

struct Embeddings {
    words: Embedding,
    positions: Option<Embedding>,
    token_types: Option<Embedding>,
    proj: Option<Linear>,
    norm: LayerNorm,
}

impl Embeddings {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let e = cfg.embedding_size.unwrap_or(cfg.hidden_size);
        let h = cfg.hidden_size;
        Ok(Self {
            words: embedding(cfg.vocab_size, e, vb.pp("word_embeddings"))?,
            positions: if cfg.position_biased_input {
                Some(embedding(
                    cfg.max_position_embeddings,
                    e,
                    vb.pp("position_embeddings"),
                )?)
            } else {
                None
            },
            token_types: if cfg.type_vocab_size > 0 {
                Some(embedding(
                    cfg.type_vocab_size,
                    e,
                    vb.pp("token_type_embeddings"),
                )?)
            } else {
                None
            },
            proj: if e != h {
                Some(Linear::load_no_bias(e, h, vb.pp("embed_proj"))?)
            } else {
                None
            },
            norm: LayerNorm::load(h, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    /// `mask` is `[B, T, 1]` in the compute dtype (1 real, 0 padding).
    fn forward(&self, batch: &Batch, mask: &Tensor) -> Result<Tensor> {
        let mut x = self.words.forward(&batch.input_ids)?;
        if let Some(p) = &self.positions {
            x = (x + p.forward(&batch.position_ids)?)?;
        }
        if let Some(tt) = &self.token_types {
            x = (x + tt.forward(&batch.token_type_ids)?)?;
        }
        if let Some(proj) = &self.proj {
            x = proj.forward(&x)?;
        }
        self.norm.forward(&x)?.broadcast_mul(mask)
    }
}

/// Disentangled self-attention plus the post-LN output and feed-forward blocks of one layer.
struct Layer {
    /// Query projection with `1/sqrt(head_dim * scale_factor)` folded in.
    query: Linear,
    /// Key and value projections fused.
    kv: Linear,
    /// `[heads, head_dim, 2*span]` projected relative keys (c2p), unscaled (the query carries it).
    pos_key_t: Option<Tensor>,
    /// `[heads, head_dim, 2*span]` projected relative queries (p2c), pre-scaled.
    pos_query_t: Option<Tensor>,
    attn_out: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
    heads: usize,
    hidden: usize,
    act: Activation,
}

/// `[B, L, heads*d]` → `[heads, B, L, d]` in `dtype`: the permute and the cast are one copy.
fn heads_first(x: &Tensor, heads: usize, dtype: DType) -> Result<Tensor> {
    let (b, l, hd) = x.dims3()?;
    crate::model::layers::contiguous_as(
        &x.reshape((b, l, heads, hd / heads))?
            .permute((2, 0, 1, 3))?,
        dtype,
    )
}

/// `[2*span, hidden]` relative embeddings through a projection → `[heads, head_dim, 2*span]`.
fn project_positions(proj: &Linear, rel: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let (n, _) = rel.dims2()?;
    let p = proj.forward(rel)?;
    let hd = p.dim(1)?;
    let p = p
        .reshape((n, heads, hd / heads))?
        .permute((1, 2, 0))?
        .contiguous()?;
    // Kept in the attention's dtype (f32 under F16/BF16), scaled there.
    let p = p.to_dtype(attention_dtype(p.dtype()))?;
    if scale == 1.0 {
        Ok(p)
    } else {
        p.affine(scale, 0.0)
    }
}

impl Layer {
    fn load(cfg: &Config, rel: Option<&Tensor>, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let heads = cfg.num_attention_heads;
        let att = vb.pp("attention");
        let sa = att.pp("self");
        let inv_scale = 1.0 / ((cfg.head_dim() as f32) * cfg.scale_factor() as f32).sqrt() as f64;

        let key = Linear::load(h, h, sa.pp("key_proj"))?;
        let value = Linear::load(h, h, sa.pp("value_proj"))?;

        let (mut pos_key_t, mut pos_query_t) = (None, None);
        if let Some(rel) = rel {
            if cfg.c2p() {
                let pk = if cfg.share_att_key {
                    key.clone()
                } else {
                    Linear::load(h, h, sa.pp("pos_key_proj"))?
                };
                pos_key_t = Some(project_positions(&pk, rel, heads, 1.0)?);
            }
            if cfg.p2c() {
                let pq = if cfg.share_att_key {
                    // The unscaled query projection (the scale is applied below), used at
                    // load only to project the relative positions: unnamed, so it stays f32
                    // and out of the weights cache, where the served (scaled) query has
                    // this name.
                    let q = sa.pp("query_proj");
                    Linear::from_weights(q.get((h, h), "weight")?, Some(q.get(h, "bias")?))?
                } else {
                    Linear::load(h, h, sa.pp("pos_query_proj"))?
                };
                pos_query_t = Some(project_positions(&pq, rel, heads, inv_scale)?);
            }
        }

        Ok(Self {
            query: Linear::load_transformed(h, h, true, sa.pp("query_proj"), |t| {
                t.affine(inv_scale, 0.0)
            })?,
            kv: Linear::fused(&[key, value])?,
            pos_key_t,
            pos_query_t,
            attn_out: Linear::load(h, h, att.pp("output").pp("dense"))?,
            attn_norm: LayerNorm::load(h, cfg.layer_norm_eps, att.pp("output").pp("LayerNorm"))?,
            up: Linear::load(h, cfg.intermediate_size, vb.pp("intermediate").pp("dense"))?,
            down: Linear::load(cfg.intermediate_size, h, vb.pp("output").pp("dense"))?,
            out_norm: LayerNorm::load(h, cfg.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            heads,
            hidden: h,
            act: cfg.hidden_act,
        })
    }

    /// `x`: `[B, T, H]`; returns `[B, q_len, H]` for the first `q_len` query rows.
    /// `mask`: additive `[1, B, 1, T]`.
    fn forward(
        &self,
        x: &Tensor,
        q_len: usize,
        mask: &Tensor,
        rel: Option<&PassRel>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (heads, h) = (self.heads, self.hidden);
        let d = h / heads;
        let x_q = first_positions(x, q_len)?;

        let dtype = x.dtype();
        let adt = attention_dtype(dtype);
        // [heads, B, q, d], pre-scaled; scores and softmax in f32 under F16/BF16.
        let q = heads_first(&self.query.forward(&x_q)?, heads, adt)?;
        let kv = self.kv.forward(x)?;
        let k = heads_first(&kv.narrow(2, 0, h)?, heads, adt)?; // [heads, B, T, d]
        let v = heads_first(&kv.narrow(2, h, h)?, heads, adt)?;

        let mut scores = q.matmul(&k.t()?)?; // [heads, B, q, T]
        if let Some(rel) = rel {
            // Only the relative-embedding columns this pass reads (`PassRel`).
            let cols = |t: &Tensor, (first, width): (usize, usize)| {
                t.narrow(2, first, width)?.contiguous()
            };
            if let Some(pk) = &self.pos_key_t {
                // [heads, B*q, d] x [heads, d, w] → gather along the flattened (i, r) axis.
                let pk = cols(pk, rel.c2p_cols)?;
                let att = q.reshape((heads, b * q_len, d))?.matmul(&pk)?;
                let att = att.reshape((heads, b, q_len * rel.c2p_cols.1))?;
                let c2p = att
                    .index_select(&rel.c2p.narrow(0, 0, q_len * t)?, 2)?
                    .reshape((heads, b, q_len, t))?;
                scores = (scores + c2p)?;
            }
            if let Some(pq) = &self.pos_query_t {
                let pq = cols(pq, rel.p2c_cols)?;
                let att = k.reshape((heads, b * t, d))?.matmul(&pq)?;
                let att = att.reshape((heads, b, t * rel.p2c_cols.1))?;
                let p2c = att
                    .index_select(&rel.p2c.narrow(0, 0, q_len * t)?, 2)?
                    .reshape((heads, b, q_len, t))?;
                scores = (scores + p2c)?;
            }
        }
        let scores = scores.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.permute((1, 2, 0, 3))?; // [B, q, heads, d]
        let ctx = crate::model::layers::contiguous_as(&ctx, dtype)?.reshape((b, q_len, h))?;

        let x = self
            .attn_norm
            .forward(&(self.attn_out.forward(&ctx)? + x_q)?)?;
        let inner = self.up.forward_act(&x, self.act)?;
        self.out_norm.forward(&(self.down.forward(&inner)? + x)?)
    }
}

/// `ConvLayer`: a 1-D convolution over the embeddings added to the first layer's output.
struct Conv {
    weight: Tensor,
    bias: Tensor,
    padding: usize,
    groups: usize,
    act: Activation,
    norm: LayerNorm,
}

impl Conv {
    fn load(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let k = cfg.conv_kernel_size;
        Ok(Self {
            weight: vb.pp("conv").get((h, h / cfg.conv_groups, k), "weight")?,
            bias: vb.pp("conv").get(h, "bias")?.reshape((1, 1, h))?,
            padding: (k - 1) / 2,
            groups: cfg.conv_groups,
            act: cfg.conv_act,
            norm: LayerNorm::load(h, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    /// `embedded`: `[B, T, H]` encoder input; `residual`: `[B, q, H]` first-layer output rows;
    /// `mask`: `[B, T, 1]`.
    fn forward(&self, embedded: &Tensor, residual: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let q_len = residual.dim(1)?;
        let out = embedded
            .transpose(1, 2)?
            .contiguous()?
            .conv1d(&self.weight, self.padding, 1, 1, self.groups)?
            .transpose(1, 2)?
            .broadcast_add(&self.bias)?;
        let out = out.broadcast_mul(mask)?;
        let out = self.act.apply(&out)?;
        let t = out.dim(1)?;
        let (out, mask) = if q_len == t {
            (out, mask.clone())
        } else {
            (out.narrow(1, 0, q_len)?, mask.narrow(1, 0, q_len)?)
        };
        self.norm.forward(&(residual + out)?)?.broadcast_mul(&mask)
    }
}

/// `DebertaV2ForSequenceClassification`: DeBERTa encoder, `ContextPooler`, linear classifier.
pub struct DebertaV2 {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    conv: Option<Conv>,
    head: Head,
    /// Relative attention's parameters, when it is on.
    relative: Option<Relative>,
    dtype: DType,
    cfg: Config,
}

enum Head {
    /// `ContextPooler` (dense + `pooler_hidden_act` over `[CLS]`), then `classifier`.
    Pooled {
        pooler: Linear,
        classifier: Linear,
    },
    Tokens(TokenHead),
}

impl DebertaV2 {
    pub fn load(cfg: Config, num_labels: usize, task: Task, vb: VarBuilder) -> Result<Self> {
        if let Err(e) = cfg.check() {
            candle_core::bail!("unsupported DeBERTa-v2 config: {e}");
        }
        let h = cfg.hidden_size;
        let body = vb.pp("deberta");
        let enc = body.pp("encoder");

        // Relative embeddings only matter when some position term is on.
        let relative = cfg.relative_attention && (cfg.c2p() || cfg.p2c());
        let rel = if relative {
            let span = cfg.att_span() as usize;
            let table = enc.pp("rel_embeddings").get((2 * span, h), "weight")?;
            let table = if cfg.norm_rel() {
                LayerNorm::load(h, cfg.layer_norm_eps, enc.pp("LayerNorm"))?.forward(&table)?
            } else {
                table
            };
            Some(table)
        } else {
            None
        };

        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(&cfg, rel.as_ref(), enc.pp("layer").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let conv = if cfg.conv_kernel_size > 0 {
            Some(Conv::load(&cfg, enc.pp("conv"))?)
        } else {
            None
        };
        Ok(Self {
            embeddings: Embeddings::load(&cfg, body.pp("embeddings"))?,
            layers,
            conv,
            head: match task {
                Task::Sequence => Head::Pooled {
                    pooler: Linear::load(
                        h,
                        h,
                        crate::model::layers::head_vb(vb.pp("pooler").pp("dense")),
                    )?,
                    classifier: Linear::load(
                        h,
                        num_labels,
                        crate::model::layers::head_vb(vb.pp("classifier")),
                    )?,
                },
                Task::Token => Head::Tokens(TokenHead::load(h, num_labels, vb.clone())?),
            },
            relative: if relative {
                // The longest input's indices must fit: refused here, not at a pass.
                check_sizes(cfg.positions(), cfg.att_span()).map_err(candle_core::Error::msg)?;
                Some(Relative {
                    span: cfg.att_span(),
                    buckets: cfg.position_buckets,
                    max_rel: cfg.max_relative(),
                })
            } else {
                None
            },
            dtype: vb.dtype(),
            cfg,
        })
    }
}

impl SequenceClassifier for DebertaV2 {
    fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let (b, t) = batch.input_ids.dims2()?;
        let keep = batch
            .attention_mask
            .to_dtype(DType::F32)?
            .to_dtype(self.dtype)?
            .reshape((b, t, 1))?;
        let key_mask = additive_key_mask(&batch.attention_mask, attention_dtype(self.dtype))?
            .reshape((1, b, 1, t))?;
        let pooled = matches!(self.head, Head::Pooled { .. });
        let device = batch.input_ids.device();
        let rel = self
            .relative
            .as_ref()
            .map(|r| r.pass(t, t, device))
            .transpose()?;

        let embedded = self.embeddings.forward(batch, &keep)?;
        let mut x = embedded.clone();
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            // Only [CLS] of the last layer is read by the pooler; a token head reads them all.
            let q_len = if i == last && pooled { 1 } else { t };
            x = layer.forward(&x, q_len, &key_mask, rel.as_ref())?;
            if i == 0 {
                if let Some(conv) = &self.conv {
                    x = conv.forward(&embedded, &x, &keep)?;
                }
            }
        }
        match &self.head {
            Head::Pooled { pooler, classifier } => {
                let pooled = self
                    .cfg
                    .pooler_hidden_act
                    .apply(&pooler.forward(&crate::model::layers::to_head(&first_token(&x)?)?)?)?;
                classifier.forward(&pooled)
            }
            Head::Tokens(head) => head.forward(&x),
        }
    }
    fn uses_token_types(&self) -> bool {
        self.cfg.type_vocab_size > 0
    }
    fn token_types(&self) -> usize {
        self.cfg.type_vocab_size
    }
    fn attention_pattern(&self) -> String {
        if self.relative.is_some() {
            "bidirectional, disentangled (content and relative position)".into()
        } else {
            "bidirectional".into()
        }
    }
    fn max_positions(&self) -> usize {
        self.cfg.positions()
    }
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
    fn attention_bytes(&self, rows: usize, len: usize, _chunk_bytes: usize) -> usize {
        // Not chunked. Scores, c2p and p2c gathers, their sum, the masked sum and probabilities:
        // six [heads, rows, T, T] tensors at the peak; the two position products before their
        // gathers, [heads, rows, T, w] with w at most 2T - 1 and 2span columns; and the two u32
        // gather tables of T × T.
        let heads_rows = self.cfg.num_attention_heads.saturating_mul(rows);
        let t2 = len.saturating_mul(len);
        let w = relpos::max_cols(len, self.cfg.att_span());
        let products = match &self.relative {
            Some(_) => 2 * heads_rows.saturating_mul(len).saturating_mul(w),
            None => 0,
        };
        6usize
            .saturating_mul(heads_rows)
            .saturating_mul(t2)
            .saturating_add(products)
            .saturating_mul(4)
            .saturating_add(t2.saturating_mul(8))
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn huge_attention_head_size_is_refused() {
        let c: Config = serde_json::from_str(
            r#"{"vocab_size": 1, "hidden_size": 4, "num_hidden_layers": 1,
                "num_attention_heads": 2, "intermediate_size": 1,
                "attention_head_size": 9223372036854775810}"#,
        )
        .unwrap();
        assert!(c.check().unwrap_err().contains("attention_head_size"));
    }

    /// Values from transformers' `make_log_bucket_position` (checked exhaustively for
    /// |rel| <= 1500 against (256, 512), (16, 128), (8, 128), (256, 1024), (64, 256)).
    #[test]
    fn log_buckets_match_transformers() {
        let rel = [
            0, 1, -1, 7, 8, 9, -9, 127, 128, 129, -129, 200, 300, 511, -511, 512, 1000, -1000,
        ];
        let v3 = [
            0, 1, -1, 7, 8, 9, -9, 127, 128, 129, -129, 169, 207, 255, -255, 256, 317, -317,
        ];
        let small = [
            0, 1, -1, 7, 8, 9, -9, 18, 18, 18, -18, 19, 21, 23, -23, 23, 25, -25,
        ];
        for ((r, a), b) in rel.iter().zip(v3).zip(small) {
            assert_eq!(log_bucket(*r, 256, 512), a, "rel {r}");
            assert_eq!(log_bucket(*r, 16, 64), b, "rel {r}");
        }
    }

    #[test]
    fn pos_att_type_accepts_list_string_and_null() {
        let base = r#""vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16"#;
        let parse = |extra: &str| -> Config {
            serde_json::from_str(&format!("{{{base}{extra}}}")).unwrap()
        };
        assert_eq!(
            parse(r#", "pos_att_type": "p2c|C2P""#).pos_att_type,
            ["p2c", "c2p"]
        );
        assert_eq!(parse(r#", "pos_att_type": ["c2p"]"#).pos_att_type, ["c2p"]);
        assert!(parse(r#", "pos_att_type": null"#).pos_att_type.is_empty());
        let c = parse("");
        assert!(c.pos_att_type.is_empty() && !c.relative_attention && c.position_biased_input);
        assert_eq!(
            (c.type_vocab_size, c.layer_norm_eps, c.att_span()),
            (0, 1e-7, 512)
        );
        assert_eq!(c.scale_factor(), 1);
    }

    /// c2p and p2c gather indices for a short sequence without bucketing, whose pass reads
    /// every column.
    #[test]
    fn relative_indices_follow_torch_gather() {
        let p = pass_indices(3, 3, 2, -1, 2).unwrap();
        // rel(i, j) = i - j; c2p[i][j] = i*4 + clamp(i - j + 2, 0, 3)
        assert_eq!(p.c2p, [2, 1, 0, 7, 6, 5, 11, 11, 10]);
        // p2c[i][j] = j*4 + clamp(2 - (j - i), 0, 3)
        assert_eq!(p.p2c, [2, 5, 8, 3, 6, 9, 3, 7, 10]);
        assert_eq!((p.c2p_cols, p.p2c_cols), ((0, 4), (0, 4)));
    }

    /// A short text against DeBERTa-v3's 512 relative embeddings reads a narrow range of
    /// columns, and each narrowed index names the same column as transformers' full gather.
    #[test]
    fn a_short_pass_reads_only_its_columns_and_the_same_ones() {
        let (span, buckets, max_rel) = (256i64, 256, 512);
        for (q_len, t) in [(12, 12), (1, 12), (7, 300), (300, 300)] {
            let p = pass_indices(q_len, t, span, buckets, max_rel).unwrap();
            assert!(p.c2p_cols.1 < 2 * t && p.p2c_cols.1 < 2 * t);
            let full = |d: i64| log_bucket(d, buckets, max_rel);
            let clamp = |x: i64| x.clamp(0, 2 * span - 1) as usize;
            for i in 0..q_len {
                for j in 0..t {
                    let at = i * t + j;
                    let (first, w) = p.c2p_cols;
                    let c2p = p.c2p[at] as usize;
                    assert_eq!(c2p / w, i);
                    assert_eq!(first + c2p % w, clamp(full(i as i64 - j as i64) + span));
                    let (first, w) = p.p2c_cols;
                    let p2c = p.p2c[at] as usize;
                    assert_eq!(p2c / w, j);
                    assert_eq!(first + p2c % w, clamp(span - full(j as i64 - i as i64)));
                }
            }
        }
        // 12 tokens: 23 of 512 columns.
        assert_eq!(
            pass_indices(12, 12, span, buckets, max_rel)
                .unwrap()
                .c2p_cols,
            (245, 23)
        );
    }

    /// Sizes from config.json cannot wrap the indices: refused as errors at load, before
    /// anything is allocated.
    #[test]
    fn relative_indices_refuse_sizes_that_overflow() {
        assert!(check_sizes(4, i64::MAX / 2).is_err());
        assert!(check_sizes(4, 0).is_err());
        let e = check_sizes(70_000, 40_000).unwrap_err();
        assert!(e.contains("overflow"), "{e}");
        assert!(check_sizes(512, 256).is_ok());
        assert!(pass_indices(5, 4, 256, 256, 512).is_err());
    }
}
