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

use super::Sae;
use crate::kernels::{axpy, dot, top_k, unit_norm, unit_rows, Encoded};

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
    enc: Encoded,
    /// Per row: dL/dx̂ of the reconstruction, then of the aux reconstruction (2·d).
    dx: Vec<f32>,
    terms: Vec<Term>,
    /// Terms grouped by feature: feature f's are `order[start[f]..start[f + 1]]`.
    start: Vec<u32>,
    order: Vec<u32>,
}

/// Features per parallel task in the per-feature passes.
const FEATURES_PER_TASK: usize = 64;

impl Scratch {
    /// The pre-activations of `x` ([rows × d_sae]), in this scratch space.
    pub fn encode(&mut self, sae: &Sae, x: &[f32]) -> &[f32] {
        sae.encode_batch(x, &mut self.enc)
    }
}

/// What a step reports.
pub struct StepOut {
    pub recon: f64,
    pub aux: Option<f64>,
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

/// The loss terms of one step: which latents each row selected and where the aux term applies.
struct Shape {
    k: usize,
    /// Latents per row: k, plus k_aux when aux-k is on.
    kt: usize,
    k_aux: usize,
    /// rows × d_model, the MSE's denominator.
    elems: f32,
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
    let k = sae.k;
    let k_aux = dead.map_or(0, |dd| (16 * k).min(dd.len()));
    let shape = Shape {
        k,
        kt: k + k_aux,
        k_aux,
        elems: x.len() as f32,
    };
    let (recon, aux) = forward(sae, s, x, dead, aux_coeff, &shape);
    group_by_feature(s, sae.d_sae, &shape, fired);
    let sq = backward(sae, g, s, &shape);
    update(sae, adam, g, s, (sq.sqrt() as f32, clip_norm), lr);
    StepOut {
        recon: recon / shape.elems as f64,
        aux: (k_aux > 0).then_some(aux / shape.elems as f64),
    }
}

/// Encoder GEMM, then per row (in parallel) the top-k, x̂ and dL/dx̂, and the aux-k terms over
/// the dead features. Returns the summed squared errors of the reconstruction and the aux term.
fn forward(
    sae: &Sae,
    s: &mut Scratch,
    x: &[f32],
    dead: Option<&[u32]>,
    aux_coeff: f32,
    sh: &Shape,
) -> (f64, f64) {
    let (d, n) = (sae.d_model, sae.d_sae);
    let rows = x.len() / d;
    sae.encode_batch(x, &mut s.enc);
    s.dx.resize(rows * 2 * d, 0.0);
    s.terms.resize(rows * sh.kt, Term::default());
    let errs: Vec<(f64, f64)> = (
        x.par_chunks(d),
        s.enc.z.par_chunks(n),
        s.dx.par_chunks_mut(2 * d),
        s.terms.par_chunks_mut(sh.kt),
    )
        .into_par_iter()
        .map(|(x, z, dx, terms)| {
            let (dx0, dx1) = dx.split_at_mut(d);
            let top = top_k(z, sh.k);
            let recon = residual(sae, &top, x, 2.0 / sh.elems, dx0);
            let mut aux = 0.0;
            let mut picked = Vec::new();
            if let Some(dead) = dead.filter(|_| sh.k_aux > 0) {
                let zd: Vec<f32> = dead.iter().map(|&i| z[i as usize]).collect();
                picked = top_k(&zd, sh.k_aux)
                    .into_iter()
                    .map(|(j, v)| (dead[j as usize], v))
                    .collect();
                aux = residual(sae, &picked, x, aux_coeff * 2.0 / sh.elems, dx1);
            }
            for (t, &(feature, v)) in terms.iter_mut().zip(top.iter().chain(&picked)) {
                *t = Term { feature, v };
            }
            (recon, aux)
        })
        .collect();
    errs.iter().fold((0.0, 0.0), |(r, a), e| (r + e.0, a + e.1))
}

/// Groups the batch's terms by feature (a counting sort into `start`/`order`) and counts the
/// rows that selected each feature by top-k.
fn group_by_feature(s: &mut Scratch, n: usize, sh: &Shape, fired: &mut [u64]) {
    s.start.clear();
    s.start.resize(n + 1, 0);
    for (j, t) in s.terms.iter().enumerate() {
        s.start[t.feature as usize + 1] += 1;
        if j % sh.kt < sh.k {
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
}

/// The gradients, feature by feature, so each feature's encoder row and decoder column are read
/// once per step: dz = ⟨W_dec[i], dL/dx̂⟩ per (row, feature), the W_enc, W_dec and b_enc
/// gradient rows, b_pre's gradient −Σ_i ∂b_enc[i]·W_enc[i] (b_pre enters every row's
/// pre-activation through W_enc) and b_dec's (Σ of dL/dx̂ over rows). Each task returns its
/// share of b_pre's gradient and of the squared norm; they are summed in task order. Returns
/// the squared global gradient norm.
fn backward(sae: &Sae, g: &mut Params, s: &Scratch, sh: &Shape) -> f64 {
    let d = sae.d_model;
    let (k, kt) = (sh.k, sh.kt);
    let rows = s.dx.len() / (2 * d);
    g.b_dec.fill(0.0);
    for dx in s.dx.chunks_exact(2 * d).take(rows) {
        axpy(&mut g.b_dec, 1.0, &dx[..d]);
        if sh.k_aux > 0 {
            axpy(&mut g.b_dec, 1.0, &dx[d..]);
        }
    }
    let (terms, order, start, dx, xc) = (&s.terms, &s.order, &s.start, &s.dx, &s.enc.xc);
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
                let col = sae.dec_col(f);
                for &e in entries {
                    let (e, t) = (e as usize, terms[e as usize]);
                    let (r, slot) = (e / kt, usize::from(e % kt >= k));
                    let dx = &dx[(r * 2 + slot) * d..(r * 2 + slot + 1) * d];
                    let dz = dot(col, dx);
                    axpy(gd, t.v, dx);
                    axpy(ge, dz, &xc[r * d..(r + 1) * d]);
                    *gb += dz;
                }
                axpy(&mut b_pre, -*gb, sae.enc_row(f));
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
    sq_total
        + [&g.b_pre, &g.b_dec]
            .iter()
            .flat_map(|p| p.iter())
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
}

/// PyTorch's clip_grad_norm_ (as a scale folded into Adam), Adam on every parameter, then
/// unit-norm decoder columns while they are still in cache. `norm` = (gradient norm, clip).
fn update(sae: &mut Sae, adam: &mut Adam, g: &Params, s: &Scratch, norm: (f32, f32), lr: f64) {
    let d = sae.d_model;
    let (total, clip_norm) = norm;
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
            // Features nobody selected have no gradient this step (their buffers are stale).
            let touched = w[1] > w[0];
            h.apply(pe, me, ve, touched.then_some(ge));
            h.apply(pd, md, vd, touched.then_some(gd));
            unit_norm(pd);
        });
    h.apply(&mut sae.b_enc, &mut m.b_enc, &mut v.b_enc, Some(&g.b_enc));
    h.apply(&mut sae.b_pre, &mut m.b_pre, &mut v.b_pre, Some(&g.b_pre));
    h.apply(&mut sae.b_dec, &mut m.b_dec, &mut v.b_dec, Some(&g.b_dec));
}

/// Unit-norm decoder columns (after a cold start; steps renormalise their own).
pub fn normalize_decoder(sae: &mut Sae) {
    unit_rows(&mut sae.w_dec, sae.d_model);
}
