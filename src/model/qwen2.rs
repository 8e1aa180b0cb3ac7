//! Qwen2 forward pass with hooks on the residual stream (DESIGN.md, "Model").
//!
//! One small struct per block, each with `new(cfg, vb)` and `forward`; weights are named once,
//! where they are loaded. Hooks are plain arguments: which block outputs to capture, one block
//! output to rewrite, and whether logits are needed (if not, the pass stops after the deepest
//! block asked for). Padding is on the right; a padding key is never attended to.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use super::Qwen2Config;

pub(super) struct Linear {
    pub(super) w: Tensor,
    pub(super) b: Option<Tensor>,
}

impl Linear {
    fn new(vb: VarBuilder, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        let w = vb.get((d_out, d_in), "weight")?;
        let b = if bias {
            Some(vb.get(d_out, "bias")?)
        } else {
            None
        };
        Ok(Self { w, b })
    }

    /// x [.., d_in] → [.., d_out]
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let d_in = dims.pop().unwrap();
        let rows: usize = dims.iter().product();
        let mut y = linear(&x.reshape((rows, d_in))?, &self.w)?;
        if let Some(b) = &self.b {
            y = y.broadcast_add(b)?;
        }
        dims.push(self.w.dim(0)?);
        Ok(y.reshape(dims)?)
    }
}

pub(super) struct RmsNorm {
    pub(super) w: Tensor,
    pub(super) eps: f32,
}

impl RmsNorm {
    fn new(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            w: vb.get(size, "weight")?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if tracked(&[x, &self.w]) {
            return Ok(candle_nn::ops::rms_norm_slow(x, &self.w, self.eps)?);
        }
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            &self.w,
            self.eps,
        )?)
    }
}

/// cos/sin tables [T, head_dim/2] for rotate-half rotary embeddings.
pub(super) struct Rotary {
    pub(super) inv_freq: Vec<f32>,
}

impl Rotary {
    fn new(cfg: &Qwen2Config) -> Self {
        let hd = cfg.head_dim;
        let inv_freq = (0..hd / 2)
            .map(|i| (1.0 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32)
            .collect();
        Self { inv_freq }
    }

    fn tables(&self, t: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut angles = Vec::with_capacity(t * half);
        for pos in 0..t {
            angles.extend(self.inv_freq.iter().map(|f| pos as f32 * f));
        }
        let a = Tensor::from_vec(angles, (t, half), device)?;
        Ok((a.cos()?, a.sin()?))
    }
}

pub(super) struct Attention {
    pub(super) q: Linear,
    pub(super) k: Linear,
    pub(super) v: Linear,
    pub(super) o: Linear,
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
    pub(super) head_dim: usize,
}

impl Attention {
    fn new(cfg: &Qwen2Config, vb: VarBuilder) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        Ok(Self {
            q: Linear::new(vb.pp("q_proj"), h, cfg.num_attention_heads * hd, true)?,
            k: Linear::new(vb.pp("k_proj"), h, cfg.num_key_value_heads * hd, true)?,
            v: Linear::new(vb.pp("v_proj"), h, cfg.num_key_value_heads * hd, true)?,
            o: Linear::new(vb.pp("o_proj"), cfg.num_attention_heads * hd, h, false)?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: hd,
        })
    }

    /// Grouped-query: each key/value head serves `heads / kv_heads` query heads.
    fn repeat_kv(&self, x: Tensor) -> Result<Tensor> {
        let rep = self.heads / self.kv_heads;
        if rep == 1 {
            return Ok(x);
        }
        let (b, kv, t, d) = x.dims4()?;
        Ok(x.unsqueeze(2)?
            .expand((b, kv, rep, t, d))?
            .reshape((b, kv * rep, t, d))?)
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let split = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.q.forward(x)?, self.heads)?;
        let k = split(self.k.forward(x)?, self.kv_heads)?;
        let v = split(self.v.forward(x)?, self.kv_heads)?;
        let rope = if tracked(&[&q, &k]) {
            candle_nn::rotary_emb::rope_slow
        } else {
            candle_nn::rotary_emb::rope
        };
        let (q, k) = (rope(&q, cos, sin)?, rope(&k, cos, sin)?);
        let (k, v) = (self.repeat_kv(k)?, self.repeat_kv(v)?);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
        let probs = if tracked(&[&scores]) {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        let y = probs.matmul(&v.contiguous()?)?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, t, self.heads * self.head_dim))?;
        self.o.forward(&y)
    }
}

pub(super) struct Mlp {
    pub(super) gate: Linear,
    pub(super) up: Linear,
    pub(super) down: Linear,
}

impl Mlp {
    fn new(cfg: &Qwen2Config, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate: Linear::new(vb.pp("gate_proj"), h, i, false)?,
            up: Linear::new(vb.pp("up_proj"), h, i, false)?,
            down: Linear::new(vb.pp("down_proj"), i, h, false)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = candle_nn::ops::silu(&self.gate.forward(x)?)?;
        self.down.forward(&(g * self.up.forward(x)?)?)
    }
}

pub(super) struct Block {
    pub(super) norm1: RmsNorm,
    pub(super) attn: Attention,
    pub(super) norm2: RmsNorm,
    pub(super) mlp: Mlp,
}

impl Block {
    fn new(cfg: &Qwen2Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: RmsNorm::new(vb.pp("input_layernorm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            attn: Attention::new(cfg, vb.pp("self_attn"))?,
            norm2: RmsNorm::new(
                vb.pp("post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let h = (x + self.attn.forward(&self.norm1.forward(x)?, cos, sin, mask)?)?;
        Ok((&h + self.mlp.forward(&self.norm2.forward(&h)?)?)?)
    }
}

/// Rewrites a block's output [B,T,H] given the real-token mask [B,T].
pub type Replace<'a> = &'a dyn Fn(&Tensor, &Tensor) -> Result<Tensor>;

/// What a forward pass should capture, rewrite and return.
#[derive(Default, Clone, Copy)]
pub struct Hooks<'a> {
    /// Blocks whose output (the residual stream after the block) to return.
    pub capture: &'a [usize],
    /// One block whose output is rewritten before the next block sees it.
    pub replace: Option<(usize, Replace<'a>)>,
    /// Compute the logits (runs every block, the final norm and the head).
    pub logits: bool,
}

pub struct Output {
    /// Captured block outputs [B,T,H], by block index.
    pub blocks: BTreeMap<usize, Tensor>,
    /// [B,T,V] when asked for.
    pub logits: Option<Tensor>,
}

pub struct Qwen2 {
    pub(super) cfg: Qwen2Config,
    pub(super) embed: Tensor,
    pub(super) blocks: Vec<Block>,
    pub(super) norm: RmsNorm,
    pub(super) head: Tensor,
    pub(super) rotary: Rotary,
}

impl Qwen2 {
    pub fn new(cfg: &Qwen2Config, vb: VarBuilder) -> Result<Self> {
        let m = vb.pp("model");
        let embed = m.get((cfg.vocab_size, cfg.hidden_size), "embed_tokens.weight")?;
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::new(cfg, m.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let head = if cfg.tie_word_embeddings {
            embed.clone()
        } else {
            vb.get((cfg.vocab_size, cfg.hidden_size), "lm_head.weight")?
        };
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            blocks,
            norm: RmsNorm::new(m.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            head,
            rotary: Rotary::new(cfg),
        })
    }

    pub fn config(&self) -> &Qwen2Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// `block` names one of the model's blocks, or an error says how many there are.
    pub(super) fn check_block(&self, block: usize) -> Result<()> {
        let n = self.blocks.len();
        if block >= n {
            bail!(
                "block {block} requested, but the model has {n} blocks (0..{})",
                n - 1
            );
        }
        Ok(())
    }

    /// Additive attention mask [B,1,T,T]: causal, and padding keys excluded.
    fn attention_mask(mask: &Tensor) -> Result<Tensor> {
        let (b, t) = mask.dims2()?;
        let keys: Vec<u8> = mask.to_dtype(DType::U8)?.flatten_all()?.to_vec1()?;
        let mut m = vec![0f32; b * t * t];
        for r in 0..b {
            for i in 0..t {
                for j in 0..t {
                    if j > i || keys[r * t + j] == 0 {
                        // Finite, so a row with no visible key stays finite (it is padding anyway).
                        m[(r * t + i) * t + j] = -1e30;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(m, (b, 1, t, t), mask.device())?)
    }

    /// ids [B,T] (u32), mask [B,T] (1 = real token, right padding).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, hooks: &Hooks) -> Result<Output> {
        let (b, t) = ids.dims2()?;
        let n = self.blocks.len();
        for &i in hooks
            .capture
            .iter()
            .chain(hooks.replace.iter().map(|(i, _)| i))
        {
            self.check_block(i)?;
        }
        let deepest = if hooks.logits {
            n - 1
        } else {
            match hooks
                .capture
                .iter()
                .chain(hooks.replace.iter().map(|(i, _)| i))
                .max()
            {
                Some(&d) => d,
                None => bail!("a forward pass needs a block to capture or logits"),
            }
        };
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((
            b,
            t,
            self.cfg.hidden_size,
        ))?;
        let (cos, sin, att_mask) = self.pass_tables(t, mask)?;
        let mut blocks = BTreeMap::new();
        for (i, block) in self.blocks.iter().enumerate().take(deepest + 1) {
            x = block.forward(&x, &cos, &sin, &att_mask)?;
            if let Some((r, f)) = hooks.replace {
                if r == i {
                    x = f(&x, mask)?;
                }
            }
            if hooks.capture.contains(&i) {
                blocks.insert(i, x.clone());
            }
        }
        let logits = match hooks.logits {
            true => Some(self.logits(&x)?),
            false => None,
        };
        Ok(Output { blocks, logits })
    }

    /// The logits [B,T,V] of a pass whose block `block` put out `x` [B,T,H]: only the blocks
    /// after it run, so a rewrite of a captured block output costs the rest of the model alone.
    pub fn logits_after(&self, block: usize, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.check_block(block)?;
        let (cos, sin, att_mask) = self.pass_tables(x.dim(1)?, mask)?;
        let mut x = x.clone();
        for b in &self.blocks[block + 1..] {
            x = b.forward(&x, &cos, &sin, &att_mask)?;
        }
        self.logits(&x)
    }

    /// Rotary tables and the attention mask for `t` positions, in the weights' dtype (a model
    /// loaded as bf16 computes in bf16).
    fn pass_tables(&self, t: usize, mask: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let dtype = self.embed.dtype();
        let (cos, sin) = self.rotary.tables(t, mask.device())?;
        let att_mask = Self::attention_mask(mask)?.to_dtype(dtype)?;
        Ok((cos.to_dtype(dtype)?, sin.to_dtype(dtype)?, att_mask))
    }

    /// The final norm and the head over the last block's output [B,T,H].
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let x = self.norm.forward(x)?;
        Ok(linear(&x.reshape((b * t, h))?, &self.head)?.reshape((b, t, self.cfg.vocab_size))?)
    }
}

/// log p(· | ids[..=t]) for t < T-1: the next-token log-probabilities [B,T-1,V].
pub fn next_token_log_softmax(logits: &Tensor) -> Result<Tensor> {
    let (_, t, _) = logits.dims3()?;
    if t < 2 {
        bail!("need at least two positions to score next tokens");
    }
    Ok(candle_nn::ops::log_softmax(
        &logits.narrow(1, 0, t - 1)?,
        D::Minus1,
    )?)
}

/// Given next-token log-probabilities `lp` [B,T-1,V]: log p(ids[t+1]), zero where the target is
/// padding [B,T-1], and the sum and count of the real targets' negative log-likelihoods
/// (Hugging Face's loss = sum/count).
pub fn target_logprobs(lp: &Tensor, ids: &Tensor, mask: &Tensor) -> Result<(Tensor, f64, usize)> {
    let t = lp.dim(1)? + 1;
    let targets = ids
        .narrow(1, 1, t - 1)?
        .to_dtype(DType::U32)?
        .contiguous()?;
    let picked = lp
        .gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?
        .squeeze(D::Minus1)?;
    let real = mask.narrow(1, 1, t - 1)?.to_dtype(DType::F32)?;
    let picked = (picked * &real)?;
    let sum = -(picked.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?);
    let count = real.sum_all()?.to_scalar::<f32>()? as usize;
    Ok((picked, sum, count))
}

/// `target_logprobs` straight from the logits [B,T,V].
pub fn next_token_logprobs(
    logits: &Tensor,
    ids: &Tensor,
    mask: &Tensor,
) -> Result<(Tensor, f64, usize)> {
    target_logprobs(&next_token_log_softmax(logits)?, ids, mask)
}

/// Replaces the real-token positions of a block output `h` [B,T,H] with those of `values`
/// (broadcastable to h's shape); padding positions keep h.
pub fn splice_real(h: &Tensor, mask: &Tensor, values: &Tensor) -> Result<Tensor> {
    let m = mask
        .to_dtype(DType::U8)?
        .unsqueeze(D::Minus1)?
        .broadcast_as(h.shape())?;
    Ok(m.where_cond(&values.broadcast_as(h.shape())?, h)?)
}

/// Replaces real-token positions of a block output with one vector (mean ablation).
pub fn replace_real_with(h: &Tensor, mask: &Tensor, vector: &Tensor) -> Result<Tensor> {
    splice_real(h, mask, &vector.reshape((1, 1, vector.elem_count()))?)
}

/// Whether any of the tensors takes part in a gradient computation (the demo trains its model):
/// candle's fused CPU ops (rms-norm, rope, last-dim softmax) and the slice GEMM have no
/// backward, so tracked tensors take candle's composite, differentiable ops instead.
fn tracked(ts: &[&Tensor]) -> bool {
    ts.iter().any(|t| t.track_op())
}

/// x · wᵀ for x [m,k] and w [n,k] as contiguous f32 CPU tensors, or None when they are not
/// (or when a gradient must flow through the product).
fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    use candle_core::{CpuStorage, Storage};
    let (Ok((m, k)), Ok((n, k2))) = (x.dims2(), w.dims2()) else {
        return Ok(None);
    };
    if k != k2 || !x.is_contiguous() || !w.is_contiguous() || tracked(&[x, w]) {
        return Ok(None);
    }
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(xv)), Storage::Cpu(CpuStorage::F32(wv))) = (&*xs, &*ws)
    else {
        return Ok(None);
    };
    let mut out = vec![0f32; m * n];
    crate::kernels::sgemm_nt(
        m,
        n,
        k,
        &xv[xl.start_offset()..xl.start_offset() + m * k],
        &wv[wl.start_offset()..wl.start_offset() + n * k],
        &mut out,
        false,
    );
    Ok(Some(Tensor::from_vec(out, (m, n), x.device())?))
}

/// x · wᵀ: through the kernels' GEMM on the CPU (weights multiplied where they lie), else
/// (CUDA, other dtypes) candle's matmul.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    match matmul_t(x, w)? {
        Some(y) => Ok(y),
        None => Ok(x.matmul(&w.t()?)?),
    }
}
