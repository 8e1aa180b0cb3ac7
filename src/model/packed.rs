//! The CPU forward pass for activation collection and eval: the batch's real tokens packed into
//! one [tokens × hidden] matrix, so no row of any product is padding. Every linear layer is one
//! GEMM over the packed rows on the weights where they lie; attention runs per sequence and head
//! on strided views of the packed Q, K, V; the elementwise steps are the `kernels::nn` rows.
//! It computes the same block outputs as `Qwen2::forward` (which serves other devices and dtypes,
//! and the demo's training), stops after the deepest block asked for, and takes the head only
//! where a next token is scored.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use candle_core::{CpuStorage, Storage, Tensor};
use rayon::prelude::*;

use super::qwen2::{Block, Linear, Qwen2, RmsNorm};
use crate::kernels::nn::{causal_softmax, rms_norm, rope, silu_mul};
use crate::kernels::{add, gemm, Mat};

/// Runs `f` on the values of a contiguous f32 CPU tensor.
pub(super) fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(f(&v[a..b])),
        _ => bail!("the packed CPU forward needs contiguous f32 weights on the CPU"),
    }
}

/// out [rows × d_out] = x [rows × d_in] · wᵀ, w [d_out × d_in].
fn project(w: &Tensor, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<()> {
    let (d_out, d_in) = w.dims2()?;
    out.resize(rows * d_out, 0.0);
    with_values(w, |w| {
        gemm(
            Mat::rows(x, rows, d_in),
            Mat::rows(w, d_out, d_in).t(),
            out,
            d_out,
            false,
        )
    })
}

impl Linear {
    /// out [rows × d_out] = x [rows × d_in] · Wᵀ (+ b).
    fn apply(&self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<()> {
        project(&self.w, x, rows, out)?;
        let d_out = self.w.dim(0)?;
        if let Some(b) = &self.b {
            with_values(b, |b| {
                out.par_chunks_mut(d_out).for_each(|r| add(r, b));
            })?;
        }
        Ok(())
    }
}

impl RmsNorm {
    fn apply(&self, x: &[f32], d: usize, out: &mut Vec<f32>) -> Result<()> {
        out.resize(x.len(), 0.0);
        with_values(&self.w, |w| {
            out.par_chunks_mut(d)
                .zip(x.par_chunks(d))
                .for_each(|(o, x)| rms_norm(x, w, self.eps, o));
        })
    }
}

/// The packed token rows of a batch: where each sequence starts and how long it is.
struct Packing {
    starts: Vec<usize>,
    lens: Vec<usize>,
}

impl Packing {
    fn new(lens: &[usize]) -> Self {
        let starts = lens
            .iter()
            .scan(0, |acc, &l| Some(std::mem::replace(acc, *acc + l)))
            .collect();
        Self {
            starts,
            lens: lens.to_vec(),
        }
    }

    fn rows(&self) -> usize {
        self.lens.iter().sum()
    }
}

/// Buffers of one forward pass, reused block to block.
#[derive(Default)]
struct Buffers {
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
}

impl Qwen2 {
    /// The outputs of blocks `capture` for the real tokens of `rows` (token ids per sequence),
    /// each [tokens × hidden] with the sequences' tokens one after another.
    pub fn forward_packed(
        &self,
        rows: &[Vec<u32>],
        capture: &[usize],
    ) -> Result<BTreeMap<usize, Vec<f32>>> {
        let Some(&deepest) = capture.iter().max() else {
            bail!("a forward pass needs a block to capture");
        };
        self.check_block(deepest)?;
        let h = self.cfg.hidden_size;
        let lens: Vec<usize> = rows.iter().map(Vec::len).collect();
        let pack = Packing::new(&lens);
        let n = pack.rows();
        let vocab = self.cfg.vocab_size;
        let mut x = vec![0f32; n * h];
        with_values(&self.embed, |e| -> Result<()> {
            for (row, &id) in x.chunks_exact_mut(h).zip(rows.iter().flatten()) {
                let id = id as usize;
                if id >= vocab {
                    bail!("token id {id} is outside the vocabulary of {vocab}");
                }
                row.copy_from_slice(&e[id * h..(id + 1) * h]);
            }
            Ok(())
        })??;
        let mut out = BTreeMap::new();
        let mut buf = Buffers::default();
        for (i, block) in self.blocks.iter().enumerate().take(deepest + 1) {
            self.block_packed(block, &mut x, n, &pack, &mut buf)?;
            if capture.contains(&i) {
                out.insert(i, x.clone());
            }
        }
        Ok(out)
    }

    /// The next-token logits of a pass whose block `block` put out `x`, the packed rows of
    /// sequences of lengths `lens` (as `forward_packed` gives them): the blocks after it run
    /// over the packed rows, then the final norm and the head over the rows that have a next
    /// token (each sequence's but its last), [Σ (len − 1) × vocab] in sequence order.
    pub fn next_token_logits_packed(
        &self,
        block: usize,
        x: &[f32],
        lens: &[usize],
    ) -> Result<Vec<f32>> {
        self.check_block(block)?;
        let (h, pack) = (self.cfg.hidden_size, Packing::new(lens));
        let n = pack.rows();
        if x.len() != n * h {
            bail!(
                "{} block output values for {n} tokens of width {h}",
                x.len()
            );
        }
        let mut x = x.to_vec();
        let mut buf = Buffers::default();
        for b in &self.blocks[block + 1..] {
            self.block_packed(b, &mut x, n, &pack, &mut buf)?;
        }
        let mut last = Vec::with_capacity(n * h);
        for (&start, &len) in pack.starts.iter().zip(&pack.lens) {
            last.extend_from_slice(&x[start * h..(start + len.saturating_sub(1)) * h]);
        }
        self.norm.apply(&last, h, &mut buf.h)?;
        let mut logits = Vec::new();
        project(&self.head, &buf.h, last.len() / h, &mut logits)?;
        Ok(logits)
    }

    /// x ← x + attention(norm1(x)); x ← x + mlp(norm2(x)), over the packed rows.
    fn block_packed(
        &self,
        b: &Block,
        x: &mut [f32],
        n: usize,
        pack: &Packing,
        buf: &mut Buffers,
    ) -> Result<()> {
        let h = self.cfg.hidden_size;
        let a = &b.attn;
        b.norm1.apply(x, h, &mut buf.h)?;
        a.q.apply(&buf.h, n, &mut buf.q)?;
        a.k.apply(&buf.h, n, &mut buf.k)?;
        a.v.apply(&buf.h, n, &mut buf.v)?;
        let hd = a.head_dim;
        let inv_freq = &self.rotary.inv_freq;
        for (buf, heads) in [(&mut buf.q, a.heads), (&mut buf.k, a.kv_heads)] {
            buf.par_chunks_mut(heads * hd)
                .enumerate()
                .for_each(|(r, row)| {
                    let pos = position(pack, r);
                    row.chunks_exact_mut(hd)
                        .for_each(|head| rope(head, pos, inv_freq));
                });
        }
        attention(
            a.heads, a.kv_heads, hd, pack, &buf.q, &buf.k, &buf.v, &mut buf.o,
        );
        a.o.apply(&buf.o, n, &mut buf.proj)?;
        x.par_chunks_mut(h)
            .zip(buf.proj.par_chunks(h))
            .for_each(|(x, p)| add(x, p));
        b.norm2.apply(x, h, &mut buf.h)?;
        let m = &b.mlp;
        m.gate.apply(&buf.h, n, &mut buf.gate)?;
        m.up.apply(&buf.h, n, &mut buf.up)?;
        let inter = buf.gate.len() / n.max(1);
        buf.gate
            .par_chunks_mut(inter)
            .zip(buf.up.par_chunks(inter))
            .for_each(|(g, u)| silu_mul(g, u));
        m.down.apply(&buf.gate, n, &mut buf.proj)?;
        x.par_chunks_mut(h)
            .zip(buf.proj.par_chunks(h))
            .for_each(|(x, p)| add(x, p));
        Ok(())
    }
}

/// The position within its sequence of packed row `r`.
fn position(pack: &Packing, r: usize) -> usize {
    let s = pack.starts.partition_point(|&start| start <= r) - 1;
    r - pack.starts[s]
}

/// Causal grouped-query attention per sequence and head over the packed rows: scores =
/// Q·Kᵀ/√d, softmax over the prefix, then ·V, into `o` [tokens × heads·hd].
#[allow(clippy::too_many_arguments)]
fn attention(
    heads: usize,
    kv_heads: usize,
    hd: usize,
    pack: &Packing,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &mut Vec<f32>,
) {
    let (qw, kw) = (heads * hd, kv_heads * hd);
    let group = heads / kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let tasks: Vec<(usize, usize)> = (0..pack.lens.len())
        .flat_map(|s| (0..heads).map(move |h| (s, h)))
        .collect();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(s, h)| {
            let (r0, t) = (pack.starts[s], pack.lens[s]);
            let g = h / group;
            fn view(
                data: &[f32],
                r0: usize,
                t: usize,
                hd: usize,
                width: usize,
                col: usize,
            ) -> Mat<'_> {
                Mat {
                    data: &data[r0 * width + col..],
                    rows: t,
                    cols: hd,
                    rs: width,
                    cs: 1,
                }
            }
            let mut scores = vec![0f32; t * t];
            if t > 0 {
                gemm(
                    view(q, r0, t, hd, qw, h * hd),
                    view(k, r0, t, hd, kw, g * hd).t(),
                    &mut scores,
                    t,
                    false,
                );
            }
            for (i, row) in scores.chunks_exact_mut(t).enumerate() {
                row.iter_mut().for_each(|s| *s *= scale);
                causal_softmax(row, i);
            }
            let mut out = vec![0f32; t * hd];
            if t > 0 {
                gemm(
                    Mat::rows(&scores, t, t),
                    view(v, r0, t, hd, kw, g * hd),
                    &mut out,
                    hd,
                    false,
                );
            }
            out
        })
        .collect();
    o.resize(q.len(), 0.0);
    for (&(s, h), res) in tasks.iter().zip(&results) {
        let r0 = pack.starts[s];
        for (i, row) in res.chunks_exact(hd).enumerate() {
            let at = (r0 + i) * qw + h * hd;
            o[at..at + hd].copy_from_slice(row);
        }
    }
}

impl Qwen2 {
    /// Whether this model runs the packed forward: f32 weights on the CPU.
    pub fn packs(&self) -> bool {
        self.device().is_cpu() && self.embed.dtype() == candle_core::DType::F32
    }

    /// The outputs of blocks `capture` at the real tokens of `rows`, packed as `forward_packed`
    /// gives them: on the CPU by the packed pass; on other devices by the padded `forward`
    /// (right padding with `pad`), its real positions gathered afterwards.
    pub fn block_outputs(
        &self,
        rows: &[Vec<u32>],
        capture: &[usize],
        pad: u32,
    ) -> Result<BTreeMap<usize, Vec<f32>>> {
        if self.packs() {
            return self.forward_packed(rows, capture);
        }
        let batch = super::PaddedBatch::new(rows.to_vec(), pad, self.device())?;
        let hooks = super::Hooks {
            capture,
            ..Default::default()
        };
        let out = self.forward(&batch.ids, &batch.mask, &hooks)?;
        let (t, h) = (batch.ids.dim(1)?, self.cfg.hidden_size);
        let mut packed = BTreeMap::new();
        for &l in capture {
            let all: Vec<f32> = out.blocks[&l]
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?;
            let mut real = Vec::with_capacity(batch.lengths.iter().sum::<usize>() * h);
            for (i, &len) in batch.lengths.iter().enumerate() {
                real.extend_from_slice(&all[i * t * h..(i * t + len) * h]);
            }
            packed.insert(l, real);
        }
        Ok(packed)
    }
}
