//! One optimiser step of TopK SAE training, written for the CPU: the encoder is one GEMM per
//! batch, everything after it touches only what the batch selected, and the dense remainder
//! (Adam over all parameters, decoder renormalisation) is one fused pass split across threads.
//!
//! Work per batch of B rows, d = d_model, n = d_sae:
//! - forward: Z = (X − b_pre)·W_encᵀ + b_enc (2·B·d·n FLOP, the GEMM), then per row the top-k
//!   (a heap scan) and x̂ from k decoder columns;
//! - backward: per row dz_i = ⟨W_dec[i], dL/dx̂⟩ for its k (+ k_aux) latents, then per feature
//!   (rows grouped by a counting sort, so threads own disjoint gradient rows) the W_enc and W_dec
//!   gradient rows; features nobody selected keep no gradient and are not read;
//! - update: global-norm clipping as a scale folded into Adam, Adam on every parameter (PyTorch's
//!   Adam moves untouched parameters too, through their moments), and the decoder column
//!   renormalised while it is still in cache.
//!
//! Rows and features are split over threads in a fixed way and every reduction runs in a fixed
//! order, so a step is deterministic: a resumed run reaches bit-identical weights.

use rayon::prelude::*;

use super::topk::{dot, top_k};
use super::Sae;

/// Gradients or Adam moments, in the SAE's own layout.
#[derive(Clone)]
pub struct Params {
    pub b_pre: Vec<f32>,
    pub w_enc: Vec<f32>,
    pub b_enc: Vec<f32>,
    pub w_dec: Vec<f32>,
    pub b_dec: Vec<f32>,
}

impl Params {
    pub fn zeros(s: &Sae) -> Self {
        let (d, n) = (s.d_model, s.d_sae);
        Self {
            b_pre: vec![0.0; d],
            w_enc: vec![0.0; n * d],
            b_enc: vec![0.0; n],
            w_dec: vec![0.0; n * d],
            b_dec: vec![0.0; d],
        }
    }
}

/// Adam's state (β 0.9/0.999, ε 1e-8, PyTorch's update order).
#[derive(Clone)]
pub struct Adam {
    pub m: Params,
    pub v: Params,
    pub t: i32,
}

const B1: f32 = 0.9;
const B2: f32 = 0.999;
const EPS: f32 = 1e-8;

/// The per-step constants of Adam, with the clipping scale.
struct AdamStep {
    step: f32,
    bc2_sqrt: f32,
    clip: f32,
}

impl AdamStep {
    /// p ← p − step·m̂/(√v̂ + ε) for one slice; `g` None means a zero gradient.
    #[inline]
    fn apply(&self, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: Option<&[f32]>) {
        let (step, bc2, c) = (self.step, self.bc2_sqrt, self.clip);
        match g {
            Some(g) => {
                for (((p, m), v), g) in p.iter_mut().zip(m).zip(v).zip(g) {
                    let g = g * c;
                    *m = B1 * *m + (1.0 - B1) * g;
                    *v = B2 * *v + (1.0 - B2) * g * g;
                    *p -= step * *m / (v.sqrt() / bc2 + EPS);
                }
            }
            None => {
                for ((p, m), v) in p.iter_mut().zip(m).zip(v) {
                    *m *= B1;
                    *v *= B2;
                    *p -= step * *m / (v.sqrt() / bc2 + EPS);
                }
            }
        }
    }
}

impl Adam {
    pub fn new(s: &Sae) -> Self {
        Self {
            m: Params::zeros(s),
            v: Params::zeros(s),
            t: 0,
        }
    }
}

/// One selected latent of one row: its feature and value.
#[derive(Clone, Copy, Default)]
struct Term {
    feature: u32,
    v: f32,
}

/// Buffers reused from step to step.
#[derive(Default)]
pub struct Scratch {
    xc: Vec<f32>,
    z: Vec<f32>,
    /// Per row: dL/dx̂ of the reconstruction, then of the aux reconstruction (2·d).
    dx: Vec<f32>,
    terms: Vec<Term>,
    start: Vec<u32>,
    order: Vec<u32>,
}

/// Features per parallel task in the per-feature passes.
const FEATURES_PER_TASK: usize = 64;

impl Scratch {
    /// The pre-activations of `x` ([rows × d_sae]), in this scratch space.
    pub fn encode(&mut self, sae: &Sae, x: &[f32]) -> &[f32] {
        encode_into(sae, x, &mut self.xc, &mut self.z);
        &self.z
    }
}

/// What a step reports.
pub struct StepOut {
    pub recon: f64,
    pub aux: Option<f64>,
}

/// Z = (X − b_pre)·W_encᵀ + b_enc into `z`, with X − b_pre left in `xc`.
pub fn encode_into(sae: &Sae, x: &[f32], xc: &mut Vec<f32>, z: &mut Vec<f32>) {
    let (d, n) = (sae.d_model, sae.d_sae);
    let rows = x.len() / d;
    xc.clear();
    xc.extend(
        x.chunks_exact(d)
            .flat_map(|r| r.iter().zip(&sae.b_pre).map(|(a, b)| a - b)),
    );
    z.clear();
    for _ in 0..rows {
        z.extend_from_slice(&sae.b_enc);
    }
    crate::model::blas::sgemm_nt(rows, n, d, xc, &sae.w_enc, z, true);
}

/// `out = scale·(b_dec + Σ v·W_dec[i] − x)`, returning Σ(x̂ − x)².
fn residual(sae: &Sae, latents: &[(u32, f32)], x: &[f32], scale: f32, out: &mut [f32]) -> f64 {
    out.copy_from_slice(&sae.b_dec);
    for &(i, v) in latents {
        axpy(out, v, sae.dec_col(i as usize));
    }
    let mut err = 0f64;
    for (o, xv) in out.iter_mut().zip(x) {
        let r = *o - xv;
        err += (r as f64) * (r as f64);
        *o = scale * r;
    }
    err
}

#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

/// One training step on batch `x`: losses, sparse gradients into `g`, clipping, Adam and the
/// decoder renormalisation. `dead` (the previous epoch's dead features) switches on aux-k.
/// `fired` counts, per feature, the rows that selected it.
#[allow(clippy::too_many_arguments)]
pub fn step(
    sae: &mut Sae,
    adam: &mut Adam,
    g: &mut Params,
    s: &mut Scratch,
    x: &[f32],
    dead: Option<&[u32]>,
    aux_coeff: f32,
    clip_norm: f32,
    lr: f64,
    fired: &mut [u64],
) -> StepOut {
    let (d, n, k) = (sae.d_model, sae.d_sae, sae.k);
    let rows = x.len() / d;
    let k_aux = dead.map_or(0, |dd| (16 * k).min(dd.len()));
    let kt = k + k_aux;
    let elems = (rows * d) as f32;

    // Forward: top-k, x̂ and dL/dx̂ per row (rows in parallel).
    encode_into(sae, x, &mut s.xc, &mut s.z);
    s.dx.resize(rows * 2 * d, 0.0);
    s.terms.resize(rows * kt, Term::default());
    let sae_ref: &Sae = sae;
    let errs: Vec<(f64, f64)> = (
        x.par_chunks(d),
        s.z.par_chunks(n),
        s.dx.par_chunks_mut(2 * d),
        s.terms.par_chunks_mut(kt),
    )
        .into_par_iter()
        .map(|(x, z, dx, terms)| {
            let (dx0, dx1) = dx.split_at_mut(d);
            let top = top_k(z, k);
            let recon = residual(sae_ref, &top, x, 2.0 / elems, dx0);
            let mut aux = 0.0;
            let mut picked = Vec::new();
            if let Some(dead) = dead.filter(|_| k_aux > 0) {
                let zd: Vec<f32> = dead.iter().map(|&i| z[i as usize]).collect();
                picked = top_k(&zd, k_aux)
                    .into_iter()
                    .map(|(j, v)| (dead[j as usize], v))
                    .collect();
                aux = residual(sae_ref, &picked, x, aux_coeff * 2.0 / elems, dx1);
            }
            for (t, &(feature, v)) in terms.iter_mut().zip(top.iter().chain(&picked)) {
                *t = Term { feature, v };
            }
            (recon, aux)
        })
        .collect();

    // b_dec's gradient (summed in row order) and the terms grouped by feature.
    g.b_dec.fill(0.0);
    for r in 0..rows {
        let dx = &s.dx[r * 2 * d..(r + 1) * 2 * d];
        axpy(&mut g.b_dec, 1.0, &dx[..d]);
        if k_aux > 0 {
            axpy(&mut g.b_dec, 1.0, &dx[d..]);
        }
    }
    s.start.clear();
    s.start.resize(n + 1, 0);
    for (j, t) in s.terms.iter().enumerate() {
        s.start[t.feature as usize + 1] += 1;
        if j % kt < k {
            fired[t.feature as usize] += 1;
        }
    }
    for f in 0..n {
        s.start[f + 1] += s.start[f];
    }
    s.order.resize(s.terms.len(), 0);
    let mut next = s.start.clone();
    for (j, t) in s.terms.iter().enumerate() {
        let f = t.feature as usize;
        s.order[next[f] as usize] = j as u32;
        next[f] += 1;
    }

    // The rest of the backward, feature by feature, so each feature's encoder row and decoder
    // column are read once per step: dz = ⟨W_dec[i], dL/dx̂⟩ per (row, feature), the W_enc,
    // W_dec and b_enc gradient rows, and b_pre's gradient −Σ_i ∂b_enc[i]·W_enc[i] (b_pre enters
    // every row's pre-activation through W_enc). Each task returns its share of b_pre's
    // gradient and of the squared norm; they are summed in task order.
    let (terms, order, start, dx, xc) = (&s.terms, &s.order, &s.start, &s.dx, &s.xc);
    let shares: Vec<(f64, Vec<f32>)> = (
        g.w_enc.par_chunks_mut(FEATURES_PER_TASK * d),
        g.w_dec.par_chunks_mut(FEATURES_PER_TASK * d),
        g.b_enc.par_chunks_mut(FEATURES_PER_TASK),
    )
        .into_par_iter()
        .enumerate()
        .map(|(task, (ge, gd, gb))| {
            let mut sq = 0f64;
            let mut b_pre = vec![0f32; d];
            for (j, gb) in gb.iter_mut().enumerate() {
                let f = task * FEATURES_PER_TASK + j;
                *gb = 0.0;
                let entries = &order[start[f] as usize..start[f + 1] as usize];
                if entries.is_empty() {
                    continue;
                }
                let (ge, gd) = (&mut ge[j * d..(j + 1) * d], &mut gd[j * d..(j + 1) * d]);
                ge.fill(0.0);
                gd.fill(0.0);
                let col = sae_ref.dec_col(f);
                for &e in entries {
                    let (e, t) = (e as usize, terms[e as usize]);
                    let (r, slot) = (e / kt, usize::from(e % kt >= k));
                    let dx = &dx[(r * 2 + slot) * d..(r * 2 + slot + 1) * d];
                    let dz = dot(col, dx);
                    axpy(gd, t.v, dx);
                    axpy(ge, dz, &xc[r * d..(r + 1) * d]);
                    *gb += dz;
                }
                axpy(&mut b_pre, -*gb, sae_ref.enc_row(f));
                sq += ge
                    .iter()
                    .chain(gd.iter())
                    .map(|v| (*v as f64).powi(2))
                    .sum::<f64>()
                    + (*gb as f64).powi(2);
            }
            (sq, b_pre)
        })
        .collect();
    g.b_pre.fill(0.0);
    let mut sq_total = 0f64;
    for (sq, b_pre) in &shares {
        sq_total += sq;
        axpy(&mut g.b_pre, 1.0, b_pre);
    }
    let small: f64 = [&g.b_pre, &g.b_dec]
        .iter()
        .flat_map(|p| p.iter())
        .map(|v| (*v as f64).powi(2))
        .sum();
    let total = (sq_total + small).sqrt() as f32;

    // PyTorch's clip_grad_norm_ then Adam, then unit-norm decoder columns.
    adam.t += 1;
    let h = AdamStep {
        step: lr as f32 / (1.0 - B1.powi(adam.t)),
        bc2_sqrt: (1.0 - B2.powi(adam.t)).sqrt(),
        clip: (clip_norm / (total + 1e-6)).min(1.0),
    };
    let (m, v) = (&mut adam.m, &mut adam.v);
    (
        sae.w_enc.par_chunks_mut(d),
        sae.w_dec.par_chunks_mut(d),
        (m.w_enc.par_chunks_mut(d), v.w_enc.par_chunks_mut(d)),
        (m.w_dec.par_chunks_mut(d), v.w_dec.par_chunks_mut(d)),
        (g.w_enc.par_chunks(d), g.w_dec.par_chunks(d)),
        s.start.par_windows(2),
    )
        .into_par_iter()
        .for_each(|(pe, pd, (me, ve), (md, vd), (ge, gd), w)| {
            let touched = w[1] > w[0];
            h.apply(pe, me, ve, touched.then_some(ge));
            h.apply(pd, md, vd, touched.then_some(gd));
            unit_norm(pd);
        });
    h.apply(&mut sae.b_enc, &mut m.b_enc, &mut v.b_enc, Some(&g.b_enc));
    h.apply(&mut sae.b_pre, &mut m.b_pre, &mut v.b_pre, Some(&g.b_pre));
    h.apply(&mut sae.b_dec, &mut m.b_dec, &mut v.b_dec, Some(&g.b_dec));

    let recon: f64 = errs.iter().map(|e| e.0).sum();
    let aux: f64 = errs.iter().map(|e| e.1).sum();
    StepOut {
        recon: recon / elems as f64,
        aux: (k_aux > 0).then_some(aux / elems as f64),
    }
}

/// Scales a decoder column to unit norm (as torch's `normalize`, ε 1e-12).
fn unit_norm(col: &mut [f32]) {
    let n = col.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    col.iter_mut().for_each(|x| *x /= n);
}

/// Unit-norm decoder columns (after a cold start; steps renormalise their own).
pub fn normalize_decoder(sae: &mut Sae) {
    sae.w_dec.par_chunks_mut(sae.d_model).for_each(unit_norm);
}
