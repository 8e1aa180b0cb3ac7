//! One optimiser step of TopK SAE training, written for the CPU: the encoder is one GEMM per
//! batch, everything after it touches only what the batch selected, and the dense remainder
//! (Adam over all parameters, decoder renormalisation) is one pass over the features that
//! computes each feature's gradient in cache and updates it at once.
//!
//! Work per batch of B rows, d = d_model, n = d_sae:
//! - encode: Z = (X − b_pre)·W_encᵀ + b_enc (2·B·d·n FLOP, the GEMM);
//! - select: per row the top-k, grouped by feature (a counting sort), and with aux-k on, the
//!   top k_aux among the dead features;
//! - decode: x̂ = b_dec + Σ v·W_dec[i], feature by feature over blocks of rows, so each decoder
//!   column is read once per block; then dL/dx̂ per row;
//! - norm: per feature dz = ⟨W_dec[i], dL/dx̂⟩ for the rows that selected it, its gradient rows
//!   built to measure them (the global norm that clipping needs), and b_pre's gradient
//!   −Σ_i ∂b_enc[i]·W_enc[i];
//! - update: per feature the gradient rows rebuilt from the stored dz (cheap: a few rows in
//!   cache) and Adam applied at once with the clipping scale, the decoder column renormalised
//!   while in cache; Adam moves features nobody selected too, through their moments, as
//!   PyTorch's does.
//!
//! Aux-k is dense instead (`Aux`): each row picks k_aux = min(16·k, n_dead) of the dead features,
//! so most rows pick most of them. Its reconstruction, its dz and the dead features' gradient
//! rows are GEMMs over a B × n_dead matrix (term by term, every dead feature would stream every
//! row's residual through the caches), and those gradient rows are kept for the update.
//!
//! The two passes over the features read and write the weights and Adam's moments once each.
//! Rows and features are split in a fixed way and every reduction runs in a fixed order
//! (independent of the thread count), so a step is deterministic: a resumed run reaches
//! bit-identical weights.

use rayon::prelude::*;

use super::{Sae, Tensors};
use crate::kernels::simd::simd_fn;
use crate::kernels::{axpy, dot, gemm, top_k, unit_norm, unit_rows, Encoded, Mat};

/// Adam's state (β 0.9/0.999, ε 1e-8, PyTorch's update order).
#[derive(Clone)]
pub struct Adam {
    /// The moments, in the SAE's own layout.
    pub m: Tensors,
    pub v: Tensors,
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

simd_fn! {
/// p ← p − step·m̂/(√v̂ + ε) for one slice with gradient `clip·g`; `g` None means a zero gradient.
fn adam_slice(h: &AdamStep, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: Option<&[f32]>) {
    let (step, bc2, c) = (h.step, h.bc2_sqrt, h.clip);
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
            m: Tensors::zeros(s.d_model, s.d_sae),
            v: Tensors::zeros(s.d_model, s.d_sae),
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

/// One row's selection: its top-k terms and its aux picks (index among the dead, value).
type Selection = (Vec<Term>, Vec<(u32, f32)>);

/// The phases of a step, in order, as `Scratch::phase_times` reports them.
pub const PHASES: [&str; 5] = [
    "encoder GEMM + top-k",
    "group",
    "decode",
    "norm",
    "Adam + renorm",
];

/// Buffers reused from step to step.
#[derive(Default)]
pub struct Scratch {
    enc: Encoded,
    /// Per row: x̂ then dL/dx̂ of the reconstruction, then of the aux reconstruction (2·d).
    dx: Vec<f32>,
    /// Per row, its k selected latents.
    terms: Vec<Term>,
    /// Terms grouped by feature: feature f's are `order[start[f]..start[f + 1]]` (term indices,
    /// ascending, so rows ascending too).
    start: Vec<u32>,
    order: Vec<u32>,
    /// dz of each grouped term (aligned with `order`).
    dz: Vec<f32>,
    aux: Aux,
    /// The bias gradients.
    g_b_pre: Vec<f32>,
    g_b_enc: Vec<f32>,
    g_b_dec: Vec<f32>,
    /// Time spent in each phase, summed over steps (see `PHASES`).
    times: [std::time::Duration; 5],
}

/// Features per parallel task in the per-feature passes.
const FEATURES_PER_TASK: usize = 64;

/// The features each task of the per-feature passes owns, in order, of `n`.
fn task_features(n: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (0..n)
        .step_by(FEATURES_PER_TASK)
        .map(move |f0| f0..(f0 + FEATURES_PER_TASK).min(n))
}

impl Scratch {
    /// Seconds spent in each of `PHASES` over all steps so far.
    pub fn phase_times(&self) -> [f64; 5] {
        self.times.map(|t| t.as_secs_f64())
    }

    pub fn reset_phase_times(&mut self) {
        self.times = Default::default();
    }

    /// The grouped terms of feature `f`: (positions in `order`, their term indices).
    fn entries(&self, f: usize) -> (std::ops::Range<usize>, &[u32]) {
        let r = self.start[f] as usize..self.start[f + 1] as usize;
        (r.clone(), &self.order[r])
    }
}

/// Marks a feature that is not dead in `Aux::index`.
const ALIVE: u32 = u32::MAX;

/// The aux-k terms of a step as dense matrices over the dead features.
#[derive(Default)]
struct Aux {
    /// The dead features (ascending) and, per feature, its index among them (`ALIVE` if none).
    dead: Vec<u32>,
    index: Vec<u32>,
    /// B × n_dead: the aux values (0 where the row did not pick the feature), and 1 where the
    /// term passes a gradient (picked, and not clamped under the ReLU conventions).
    v: Vec<f32>,
    live: Vec<f32>,
    /// n_dead × d: the dead features' decoder columns.
    w_dec: Vec<f32>,
    /// B × n_dead: dz of the aux terms, and per dead feature their sum (∂b_enc's aux part).
    dz: Vec<f32>,
    g_b_enc: Vec<f32>,
    /// n_dead × 2d: per dead feature its gradient rows gd then ge, the aux terms' part from the
    /// GEMMs, then the top-k terms' added by `norm`; the update reads them from here.
    grads: Vec<f32>,
    /// Task t's dead features' rows are `grads[parts[t]..parts[t + 1]]`.
    parts: Vec<usize>,
}

impl Aux {
    /// The dead features of this step (none when aux-k is off), over `n` features.
    fn set_dead(&mut self, dead: Option<&[u32]>, n: usize, d: usize) {
        self.dead.clear();
        self.dead.extend_from_slice(dead.unwrap_or_default());
        self.dead.sort_unstable();
        self.index.clear();
        self.index.resize(n, ALIVE);
        for (j, &f) in self.dead.iter().enumerate() {
            self.index[f as usize] = j as u32;
        }
        self.parts.clear();
        self.parts.push(0);
        for fs in task_features(n) {
            let dead = self.index[fs].iter().filter(|&&j| j != ALIVE).count();
            self.parts.push(self.parts.last().unwrap() + dead * 2 * d);
        }
    }

    /// The rows' picks as the dense value and live matrices.
    fn fill(&mut self, selected: &[Selection], relu: bool) {
        let nd = self.dead.len();
        if nd == 0 {
            return;
        }
        self.v.clear();
        self.v.resize(selected.len() * nd, 0.0);
        self.live.clear();
        self.live.resize(selected.len() * nd, 0.0);
        let rows = self
            .v
            .chunks_exact_mut(nd)
            .zip(self.live.chunks_exact_mut(nd));
        for ((v, live), (_, picks)) in rows.zip(selected) {
            for &(j, x) in picks {
                v[j as usize] = x;
                live[j as usize] = f32::from(!(relu && x == 0.0));
            }
        }
    }

    /// Adds the aux reconstruction Σ v·W_dec[dead] to each row's second half of `dx`
    /// (B rows of 2d, the aux half starting at b_dec).
    fn decode(&mut self, sae: &Sae, dx: &mut [f32]) {
        let (d, nd) = (sae.d_model, self.dead.len());
        self.w_dec.clear();
        for &f in &self.dead {
            self.w_dec.extend_from_slice(sae.dec_col(f as usize));
        }
        let rows = self.v.len() / nd;
        let v = Mat::rows(&self.v, rows, nd);
        gemm(v, Mat::rows(&self.w_dec, nd, d), &mut dx[d..], 2 * d, true);
    }

    /// From the aux residuals dL/dx̂ (the second halves of `dx`) and X − b_pre: dz = (dL/dx̂ ·
    /// W_dec[dead]ᵀ) where live, its sums per feature, and the gradient rows gd = vᵀ·dL/dx̂ and
    /// ge = dzᵀ·(X − b_pre).
    fn backward(&mut self, dx: &[f32], xc: &[f32], d: usize) {
        let nd = self.dead.len();
        let rows = xc.len() / d;
        let residual = Mat {
            data: &dx[d..],
            rows,
            cols: d,
            rs: 2 * d,
            cs: 1,
        };
        self.dz.resize(rows * nd, 0.0);
        let w_dec = Mat::rows(&self.w_dec, nd, d);
        gemm(residual, w_dec.t(), &mut self.dz, nd, false);
        self.dz
            .iter_mut()
            .zip(&self.live)
            .for_each(|(z, l)| *z *= l);
        self.g_b_enc.clear();
        self.g_b_enc.resize(nd, 0.0);
        for dz in self.dz.chunks_exact(nd) {
            axpy(&mut self.g_b_enc, 1.0, dz);
        }
        self.grads.resize(nd * 2 * d, 0.0);
        let (v, dz) = (Mat::rows(&self.v, rows, nd), Mat::rows(&self.dz, rows, nd));
        gemm(v.t(), residual, &mut self.grads, 2 * d, false);
        gemm(
            dz.t(),
            Mat::rows(xc, rows, d),
            &mut self.grads[d..],
            2 * d,
            false,
        );
    }
}

/// What a step reports.
pub struct StepOut {
    pub recon: f64,
    pub aux: Option<f64>,
}

/// The loss terms of one step: which latents each row selected and where the aux term applies.
struct Shape {
    d: usize,
    k: usize,
    k_aux: usize,
    /// rows × d_model, the MSE's denominator.
    elems: f32,
    aux_coeff: f32,
    /// The SAE's latents are clamped at zero (SAELens/sparsify conventions): a clamped latent
    /// neither fires nor passes a gradient.
    relu: bool,
}

impl Shape {
    /// Where the reconstruction gradient dL/dx̂ of term `e`'s row lies in `Scratch::dx`.
    fn dx_row(&self, e: u32) -> std::ops::Range<usize> {
        let at = (e as usize / self.k) * 2 * self.d;
        at..at + self.d
    }
}

/// One training step on batch `x`: losses, gradients, clipping, Adam and the decoder
/// renormalisation. `dead` (the previous epoch's dead features) switches on aux-k. `fired`
/// counts, per feature, the rows that selected it.
#[allow(clippy::too_many_arguments)]
pub fn step(
    sae: &mut Sae,
    adam: &mut Adam,
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
    let sh = Shape {
        d: sae.d_model,
        k,
        k_aux,
        elems: x.len() as f32,
        aux_coeff,
        relu: sae.activation.relu(),
    };
    let mut clock = std::time::Instant::now();
    let mut lap = |s: &mut Scratch, phase: usize| {
        let now = std::time::Instant::now();
        s.times[phase] += now - clock;
        clock = now;
    };
    s.aux
        .set_dead(dead.filter(|_| k_aux > 0), sae.d_sae, sae.d_model);
    let aux = &s.aux;
    let selected = sae.map_pre_activations(x, &mut s.enc, |_, z| {
        select_row(z, &sae.b_enc, &aux.dead, &sh)
    });
    lap(s, 0);
    group_by_feature(s, sae.d_sae, &selected, &sh, fired);
    s.aux.fill(&selected, sh.relu);
    lap(s, 1);
    let (recon, aux) = decode(sae, s, x, &sh);
    lap(s, 2);
    let sq = norm(sae, s, &sh);
    lap(s, 3);
    update(sae, adam, s, &sh, (sq.sqrt() as f32, clip_norm), lr);
    lap(s, 4);
    StepOut {
        recon: recon / sh.elems as f64,
        aux: (k_aux > 0).then_some(aux / sh.elems as f64),
    }
}

/// One row's selection: the top-k of its pre-activations z + b_enc and, with aux-k on, the top
/// k_aux among the `dead` features (as indices among them).
fn select_row(z: &[f32], b_enc: &[f32], dead: &[u32], sh: &Shape) -> Selection {
    let clamp = |v: f32| if sh.relu { v.max(0.0) } else { v };
    let top = top_k(z, b_enc, sh.k)
        .into_iter()
        .map(|(feature, v)| Term {
            feature,
            v: clamp(v),
        })
        .collect();
    let picks = match sh.k_aux {
        0 => Vec::new(),
        k_aux => {
            let zd: Vec<f32> = dead.iter().map(|&i| z[i as usize]).collect();
            let bd: Vec<f32> = dead.iter().map(|&i| b_enc[i as usize]).collect();
            top_k(&zd, &bd, k_aux)
                .into_iter()
                .map(|(j, v)| (j, clamp(v)))
                .collect()
        }
    };
    (top, picks)
}

/// The rows' top-k terms, grouped by feature (a counting sort), with `fired` counted.
fn group_by_feature(
    s: &mut Scratch,
    n: usize,
    selected: &[Selection],
    sh: &Shape,
    fired: &mut [u64],
) {
    s.terms.clear();
    for (top, _) in selected {
        s.terms.extend_from_slice(top);
    }
    s.start.clear();
    s.start.resize(n + 1, 0);
    for t in &s.terms {
        s.start[t.feature as usize + 1] += 1;
        if !(sh.relu && t.v == 0.0) {
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

/// x̂ of every row (and its aux reconstruction), then dL/dx̂ = scale·(x̂ − x) in place. Returns
/// the summed squared errors of the reconstruction and of the aux term.
fn decode(sae: &Sae, s: &mut Scratch, x: &[f32], sh: &Shape) -> (f64, f64) {
    let d = sh.d;
    let rows = x.len() / d;
    s.dx.resize(rows * 2 * d, 0.0);
    // The top-k terms feature by feature over one block of rows per thread: each block reads
    // every selected decoder column once. A row's sum runs in feature order whatever the
    // blocks, so results do not depend on the thread count.
    let per = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let mut dx = std::mem::take(&mut s.dx);
    let (start, order, terms) = (&s.start, &s.order, &s.terms);
    dx.par_chunks_mut(per * 2 * d)
        .enumerate()
        .for_each(|(b, out)| {
            let r0 = b * per;
            let r1 = r0 + out.len() / (2 * d);
            for o in out.chunks_exact_mut(d) {
                o.copy_from_slice(&sae.b_dec);
            }
            for f in 0..sae.d_sae {
                let entries = &order[start[f] as usize..start[f + 1] as usize];
                let lo = entries.partition_point(|&e| (e as usize) / sh.k < r0);
                let hi = entries.partition_point(|&e| (e as usize) / sh.k < r1);
                let col = sae.dec_col(f);
                for &e in &entries[lo..hi] {
                    let at = sh.dx_row(e).start - r0 * 2 * d;
                    axpy(&mut out[at..at + d], terms[e as usize].v, col);
                }
            }
        });
    if sh.k_aux > 0 {
        s.aux.decode(sae, &mut dx);
    }
    let errs: Vec<(f64, f64)> = dx
        .par_chunks_mut(per * 2 * d)
        .zip(x.par_chunks(per * d))
        .map(|(out, x)| {
            let (mut recon, mut aux) = (0f64, 0f64);
            for (o, x) in out.chunks_exact_mut(2 * d).zip(x.chunks_exact(d)) {
                let (o0, o1) = o.split_at_mut(d);
                recon += residual(o0, x, 2.0 / sh.elems);
                if sh.k_aux > 0 {
                    aux += residual(o1, x, sh.aux_coeff * 2.0 / sh.elems);
                }
            }
            (recon, aux)
        })
        .collect();
    s.dx = dx;
    errs.iter().fold((0.0, 0.0), |(r, a), e| (r + e.0, a + e.1))
}

/// x̂ in `out` becomes `scale·(x̂ − x)`; returns Σ(x̂ − x)².
fn residual(out: &mut [f32], x: &[f32], scale: f32) -> f64 {
    out.iter_mut().zip(x).for_each(|(o, x)| *o -= x);
    let err = dot(out, out) as f64;
    out.iter_mut().for_each(|o| *o *= scale);
    err
}

/// Adds a feature's top-k terms to its gradient rows: gd += Σ v·dL/dx̂_r (W_dec) and
/// ge += Σ dz·(x_r − b_pre) (W_enc).
fn add_feature_grads(
    s: &Scratch,
    sh: &Shape,
    entries: &[u32],
    dz: &[f32],
    gd: &mut [f32],
    ge: &mut [f32],
) {
    let d = sh.d;
    for (&e, &dz) in entries.iter().zip(dz) {
        let r = e as usize / sh.k;
        axpy(gd, s.terms[e as usize].v, &s.dx[sh.dx_row(e)]);
        axpy(ge, dz, &s.enc.xc[r * d..(r + 1) * d]);
    }
}

/// Per feature: dz of its top-k terms (stored for the update), ∂b_enc, the squared norms of its
/// gradient rows (built in cache and discarded, but for the dead features', which are kept),
/// and its share of b_pre's gradient −Σ ∂b_enc[i]·W_enc[i] (b_pre enters every pre-activation
/// through W_enc); then the bias gradients and the squared global gradient norm.
fn norm(sae: &Sae, s: &mut Scratch, sh: &Shape) -> f64 {
    let (d, n) = (sh.d, sae.d_sae);
    if sh.k_aux > 0 {
        s.aux.backward(&s.dx, &s.enc.xc, d);
    }
    let mut dz = std::mem::take(&mut s.dz);
    dz.resize(s.order.len(), 0.0);
    let mut g_b_enc = std::mem::take(&mut s.g_b_enc);
    g_b_enc.resize(n, 0.0);
    let mut grads = std::mem::take(&mut s.aux.grads);
    // dz and the dead features' rows split at the task boundaries (a task's features own a
    // contiguous range of each).
    let dz_lens = task_features(n).map(|fs| (s.start[fs.end] - s.start[fs.start]) as usize);
    let dz_parts = split_lengths(&mut dz, dz_lens);
    let grad_parts = split_lengths(&mut grads, s.aux.parts.windows(2).map(|w| w[1] - w[0]));
    let s_ref = &*s;
    let shares: Vec<(f64, Vec<f32>)> = (
        g_b_enc.par_chunks_mut(FEATURES_PER_TASK),
        dz_parts.into_par_iter(),
        grad_parts.into_par_iter(),
    )
        .into_par_iter()
        .enumerate()
        .map(|(task, (gb, dz, mut dead_rows))| {
            let (mut sq, mut b_pre) = (0f64, vec![0f32; d]);
            let (mut gd_own, mut ge_own) = (vec![0f32; d], vec![0f32; d]);
            let base = s_ref.start[task * FEATURES_PER_TASK] as usize;
            for (j, gb) in gb.iter_mut().enumerate() {
                let f = task * FEATURES_PER_TASK + j;
                let (range, entries) = s_ref.entries(f);
                let dz = &mut dz[range.start - base..range.end - base];
                let col = sae.dec_col(f);
                for (&e, dz) in entries.iter().zip(dz.iter_mut()) {
                    *dz = match sh.relu && s_ref.terms[e as usize].v == 0.0 {
                        true => 0.0,
                        false => dot(col, &s_ref.dx[sh.dx_row(e)]),
                    };
                }
                *gb = dz.iter().sum();
                let (gd, ge) = match s_ref.aux.index[f] {
                    ALIVE if entries.is_empty() => continue,
                    ALIVE => {
                        gd_own.fill(0.0);
                        ge_own.fill(0.0);
                        (gd_own.as_mut_slice(), ge_own.as_mut_slice())
                    }
                    i => {
                        *gb += s_ref.aux.g_b_enc[i as usize];
                        let (rows, tail) = std::mem::take(&mut dead_rows).split_at_mut(2 * d);
                        dead_rows = tail;
                        rows.split_at_mut(d)
                    }
                };
                add_feature_grads(s_ref, sh, entries, dz, gd, ge);
                axpy(&mut b_pre, -*gb, sae.enc_row(f));
                sq += dot(ge, ge) as f64 + dot(gd, gd) as f64 + (*gb as f64).powi(2);
            }
            (sq, b_pre)
        })
        .collect();
    s.dz = dz;
    s.aux.grads = grads;
    s.g_b_enc = g_b_enc;
    bias_grads(s, sh, &shares)
}

/// `rest` cut into consecutive parts of the given lengths.
fn split_lengths<T>(mut rest: &mut [T], lens: impl Iterator<Item = usize>) -> Vec<&mut [T]> {
    lens.map(|len| {
        let (part, tail) = std::mem::take(&mut rest).split_at_mut(len);
        rest = tail;
        part
    })
    .collect()
}

/// b_pre's gradient from the feature tasks' (squared norm, b_pre share) and b_dec's from the
/// rows; returns the squared global gradient norm, summed in a fixed order.
fn bias_grads(s: &mut Scratch, sh: &Shape, shares: &[(f64, Vec<f32>)]) -> f64 {
    let d = sh.d;
    s.g_b_pre.clear();
    s.g_b_pre.resize(d, 0.0);
    let mut sq_total = 0f64;
    for (sq, b_pre) in shares {
        sq_total += sq;
        axpy(&mut s.g_b_pre, 1.0, b_pre);
    }
    s.g_b_dec.clear();
    s.g_b_dec.resize(d, 0.0);
    for dx in s.dx.chunks_exact(2 * d) {
        axpy(&mut s.g_b_dec, 1.0, &dx[..d]);
        if sh.k_aux > 0 {
            axpy(&mut s.g_b_dec, 1.0, &dx[d..]);
        }
    }
    sq_total
        + [&s.g_b_pre, &s.g_b_dec]
            .iter()
            .flat_map(|p| p.iter())
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
}

/// PyTorch's clip_grad_norm_ (as a scale folded into Adam), then Adam on every parameter with
/// each feature's gradient rows rebuilt in cache (or read back, for the dead features), then
/// unit-norm decoder columns. `norm` = (gradient norm, clip).
fn update(sae: &mut Sae, adam: &mut Adam, s: &Scratch, sh: &Shape, norm: (f32, f32), lr: f64) {
    let d = sh.d;
    let (total, clip_norm) = norm;
    adam.t += 1;
    let h = AdamStep {
        step: lr as f32 / (1.0 - B1.powi(adam.t)),
        bc2_sqrt: (1.0 - B2.powi(adam.t)).sqrt(),
        clip: (clip_norm / (total + 1e-6)).min(1.0),
    };
    let (p, m, v) = (&mut sae.tensors, &mut adam.m, &mut adam.v);
    let chunk = FEATURES_PER_TASK * d;
    (
        p.w_enc.par_chunks_mut(chunk),
        p.w_dec.par_chunks_mut(chunk),
        (m.w_enc.par_chunks_mut(chunk), v.w_enc.par_chunks_mut(chunk)),
        (m.w_dec.par_chunks_mut(chunk), v.w_dec.par_chunks_mut(chunk)),
    )
        .into_par_iter()
        .enumerate()
        .for_each(|(task, (pe, pd, (me, ve), (md, vd)))| {
            let (mut gd_own, mut ge_own) = (vec![0f32; d], vec![0f32; d]);
            let mut dead_rows = &s.aux.grads[s.aux.parts[task]..s.aux.parts[task + 1]];
            for j in 0..pe.len() / d {
                let f = task * FEATURES_PER_TASK + j;
                let (range, entries) = s.entries(f);
                let rows = j * d..(j + 1) * d;
                // Features nobody selected have no gradient this step.
                let g = match s.aux.index[f] {
                    ALIVE if entries.is_empty() => None,
                    ALIVE => {
                        gd_own.fill(0.0);
                        ge_own.fill(0.0);
                        let dz = &s.dz[range];
                        add_feature_grads(s, sh, entries, dz, &mut gd_own, &mut ge_own);
                        Some((gd_own.as_slice(), ge_own.as_slice()))
                    }
                    _ => {
                        let (g, tail) = dead_rows.split_at(2 * d);
                        dead_rows = tail;
                        Some(g.split_at(d))
                    }
                };
                adam_slice(
                    &h,
                    &mut pe[rows.clone()],
                    &mut me[rows.clone()],
                    &mut ve[rows.clone()],
                    g.map(|g| g.1),
                );
                let col = &mut pd[rows.clone()];
                adam_slice(
                    &h,
                    col,
                    &mut md[rows.clone()],
                    &mut vd[rows],
                    g.map(|g| g.0),
                );
                unit_norm(col);
            }
        });
    adam_bias(&h, &mut p.b_enc, &mut m.b_enc, &mut v.b_enc, &s.g_b_enc);
    adam_bias(&h, &mut p.b_pre, &mut m.b_pre, &mut v.b_pre, &s.g_b_pre);
    adam_bias(&h, &mut p.b_dec, &mut m.b_dec, &mut v.b_dec, &s.g_b_dec);
}

fn adam_bias(h: &AdamStep, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
    adam_slice(h, p, m, v, Some(g));
}

/// Unit-norm decoder columns (after a cold start; steps renormalise their own).
pub fn normalize_decoder(sae: &mut Sae) {
    let d = sae.d_model;
    unit_rows(&mut sae.w_dec, d);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::Activation;

    /// An SAE whose every pre-activation is negative: under the study's `topk` its k latents
    /// still fire and learn; under the ReLU conventions nothing fires and the encoder gets no
    /// gradient (its weights move only by the decoder's renorm, which touches W_dec alone).
    #[test]
    fn relu_conventions_pass_no_gradient_through_clamped_latents() {
        let (d, n, k) = (4, 6, 2);
        let base = Sae {
            d_model: d,
            d_sae: n,
            k,
            activation: Activation::TopK,
            tensors: Tensors {
                b_pre: vec![0.0; d],
                w_enc: (0..n * d).map(|i| 0.1 + i as f32 * 0.01).collect(),
                b_enc: vec![-10.0; n],
                w_dec: (0..n * d)
                    .map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.3)
                    .collect(),
                b_dec: vec![0.0; d],
            },
            meta: Default::default(),
        };
        let x: Vec<f32> = (0..8 * d).map(|i| (i % 3) as f32 * 0.5).collect();
        let run = |activation| {
            let mut sae = Sae {
                activation,
                ..base.clone()
            };
            let mut adam = Adam::new(&sae);
            let mut fired = vec![0u64; n];
            step(
                &mut sae,
                &mut adam,
                &mut Scratch::default(),
                &x,
                None,
                0.0,
                1.0,
                1e-2,
                &mut fired,
            );
            (sae, fired)
        };
        let (topk, fired) = run(Activation::TopK);
        assert_eq!(fired.iter().sum::<u64>(), 8 * k as u64);
        assert_ne!(topk.w_enc, base.w_enc);
        for act in [Activation::TopKRelu, Activation::ReluTopK] {
            let (relu, fired) = run(act);
            assert_eq!(fired.iter().sum::<u64>(), 0, "{act:?}");
            assert_eq!(relu.w_enc, base.w_enc, "{act:?}: the encoder moved");
            assert_eq!(relu.b_enc, base.b_enc, "{act:?}: the encoder bias moved");
        }
    }
}
