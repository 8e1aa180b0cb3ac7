//! The SAE on a candle device (CUDA; the CPU too, which is how the tests run this path): the
//! encoder GEMM (cuBLAS), top-k, sparse decode and sparse backward, Adam with clipping and the
//! decoder renormalisation all stay on the device; only the batches of rows go up and a few
//! scalars per step come back. The host `Sae` is the source of truth between epochs
//! (`DeviceTrainer::download`), so checkpoints, the best epoch and resampling work as on the CPU.

use candle_core::{DType, Device, Tensor, D};

use super::step::{Adam, StepOut};
use super::{Activation, Sae};
use crate::kernels::device::{
    adam, bincount, gather_dot, sparse_decode, sparse_outer, sum_sq, topk_rows, unit_rows,
    AdamStep, B1, B2,
};

type Result<T> = candle_core::Result<T>;

/// The SAE's weights on a device, for encoding and reconstructing.
pub struct DeviceSae {
    pub k: usize,
    pub activation: Activation,
    b_pre: Tensor,
    w_enc: Tensor,
    b_enc: Tensor,
    w_dec: Tensor,
    b_dec: Tensor,
}

impl DeviceSae {
    pub fn new(sae: &Sae, dev: &Device) -> Result<Self> {
        let (d, n) = (sae.d_model, sae.d_sae);
        Ok(Self {
            k: sae.k,
            activation: sae.activation,
            b_pre: Tensor::from_slice(&sae.b_pre, d, dev)?,
            w_enc: Tensor::from_slice(&sae.w_enc, (n, d), dev)?,
            b_enc: Tensor::from_slice(&sae.b_enc, n, dev)?,
            w_dec: Tensor::from_slice(&sae.w_dec, (n, d), dev)?,
            b_dec: Tensor::from_slice(&sae.b_dec, d, dev)?,
        })
    }

    /// The active latents of rows x [rows × d]: (features u32, values) [rows × k], largest first.
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let z = pre_activations(x, &self.b_pre, &self.w_enc)?;
        let (idx, val) = topk_rows(&z, &self.b_enc, self.k)?;
        let val = match self.activation {
            Activation::TopK => val,
            Activation::TopKRelu | Activation::ReluTopK => val.relu()?,
        };
        Ok((idx, val))
    }

    /// x̂ = b_dec + Σ v·W_dec[i] for latents from `encode`.
    pub fn decode(&self, idx: &Tensor, val: &Tensor) -> Result<Tensor> {
        sparse_decode(idx, val, &self.w_dec)?.broadcast_add(&self.b_dec)
    }

    /// The reconstruction of rows x [rows × d] and each row's number of non-zero latents.
    pub fn reconstruct(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (idx, val) = self.encode(x)?;
        let l0 = val.ne(0f32)?.to_dtype(DType::F32)?.sum(D::Minus1)?;
        Ok((self.decode(&idx, &val)?, l0))
    }
}

/// (X − b_pre)·W_encᵀ without b_enc (top-k adds it).
fn pre_activations(x: &Tensor, b_pre: &Tensor, w_enc: &Tensor) -> Result<Tensor> {
    x.broadcast_sub(b_pre)?.matmul(&w_enc.t()?)
}

/// One parameter with Adam's moments: [p; m; v], 3 × numel, so one kernel updates all three.
struct State {
    state: Tensor,
    shape: Vec<usize>,
}

impl State {
    fn new(p: &[f32], m: &[f32], v: &[f32], shape: &[usize], dev: &Device) -> Result<Self> {
        let n = p.len();
        let state = Tensor::cat(
            &[
                Tensor::from_slice(p, (1, n), dev)?,
                Tensor::from_slice(m, (1, n), dev)?,
                Tensor::from_slice(v, (1, n), dev)?,
            ],
            0,
        )?;
        Ok(Self {
            state,
            shape: shape.to_vec(),
        })
    }

    /// The parameter, as a view in its own shape.
    fn p(&self) -> Result<Tensor> {
        self.state.narrow(0, 0, 1)?.reshape(self.shape.as_slice())
    }

    /// (p, m, v) back on the host.
    fn download(&self) -> Result<[Vec<f32>; 3]> {
        let rows = self.state.to_vec2::<f32>()?;
        let mut it = rows.into_iter();
        Ok([it.next().unwrap(), it.next().unwrap(), it.next().unwrap()])
    }
}

/// Training on a device: the five parameters with their Adam moments, the step count, and the
/// per-feature selection counts of the current epoch.
pub struct DeviceTrainer {
    dev: Device,
    d: usize,
    n: usize,
    k: usize,
    activation: Activation,
    b_pre: State,
    w_enc: State,
    b_enc: State,
    w_dec: State,
    b_dec: State,
    t: i32,
    fired: Tensor,
    /// The steps whose losses are still on the device: (rows, elements, [Σ err² per term]).
    pending: Vec<(usize, f64, Tensor)>,
    /// With `SAERL_PROFILE` set: the device is synchronised between the step's phases and the
    /// time of each summed here (see `profile`).
    phases: Option<Vec<(&'static str, f64)>>,
}

impl DeviceTrainer {
    /// Seconds per phase of the steps so far, when profiling (`SAERL_PROFILE`).
    pub fn profile(&self) -> Option<&[(&'static str, f64)]> {
        self.phases.as_deref()
    }

    /// Ends phase `name` when profiling: waits for the device, adds the time since `clock`.
    fn lap(&mut self, name: &'static str, clock: &mut std::time::Instant) -> Result<()> {
        let Some(phases) = &mut self.phases else {
            return Ok(());
        };
        self.dev.synchronize()?;
        let secs = clock.elapsed().as_secs_f64();
        match phases.iter_mut().find(|p| p.0 == name) {
            Some(p) => p.1 += secs,
            None => phases.push((name, secs)),
        }
        *clock = std::time::Instant::now();
        Ok(())
    }

    pub fn new(sae: &Sae, adam: &Adam, dev: &Device) -> Result<Self> {
        let (d, n) = (sae.d_model, sae.d_sae);
        let st = |p: &[f32], m: &[f32], v: &[f32], shape: &[usize]| State::new(p, m, v, shape, dev);
        let (m, v) = (&adam.m, &adam.v);
        Ok(Self {
            dev: dev.clone(),
            d,
            n,
            k: sae.k,
            activation: sae.activation,
            b_pre: st(&sae.b_pre, &m.b_pre, &v.b_pre, &[d])?,
            w_enc: st(&sae.w_enc, &m.w_enc, &v.w_enc, &[n, d])?,
            b_enc: st(&sae.b_enc, &m.b_enc, &v.b_enc, &[n])?,
            w_dec: st(&sae.w_dec, &m.w_dec, &v.w_dec, &[n, d])?,
            b_dec: st(&sae.b_dec, &m.b_dec, &v.b_dec, &[d])?,
            t: adam.t,
            fired: Tensor::zeros(n, DType::U32, dev)?,
            pending: Vec::new(),
            phases: std::env::var_os("SAERL_PROFILE").map(|_| Vec::new()),
        })
    }

    /// The weights and Adam's state back into the host SAE and optimiser.
    pub fn download(&self, sae: &mut Sae, adam: &mut Adam) -> Result<()> {
        let states = [
            &self.b_pre,
            &self.w_enc,
            &self.b_enc,
            &self.w_dec,
            &self.b_dec,
        ];
        let host = sae.tensors.parts_mut().into_iter();
        let moments = adam.m.parts_mut().into_iter().zip(adam.v.parts_mut());
        for ((s, p), (m, v)) in states.into_iter().zip(host).zip(moments) {
            let [dp, dm, dv] = s.download()?;
            (*p, *m, *v) = (dp, dm, dv);
        }
        adam.t = self.t;
        Ok(())
    }

    /// The rows each feature was selected by (top-k, not aux) since the last call, and reset.
    pub fn take_fired(&mut self) -> Result<Vec<u64>> {
        let counts = self.fired.to_vec1::<u32>()?;
        self.fired = self.fired.zeros_like()?;
        Ok(counts.into_iter().map(u64::from).collect())
    }

    /// The current weights as an SAE for evaluation on the device (shares the tensors).
    pub fn sae(&self) -> Result<DeviceSae> {
        Ok(DeviceSae {
            k: self.k,
            activation: self.activation,
            b_pre: self.b_pre.p()?,
            w_enc: self.w_enc.p()?,
            b_enc: self.b_enc.p()?,
            w_dec: self.w_dec.p()?,
            b_dec: self.b_dec.p()?,
        })
    }

    /// aux-k's view of the previous epoch's dead features: a bias that keeps every live feature
    /// out of the top k_aux, and k_aux = min(16k, dead).
    pub fn dead_mask(&self, dead: &[u32]) -> Result<(Tensor, usize)> {
        let mut mask = vec![-1e30f32; self.n];
        for &i in dead {
            mask[i as usize] = 0.0;
        }
        let k_aux = (16 * self.k).min(dead.len());
        Ok((Tensor::from_slice(&mask, self.n, &self.dev)?, k_aux))
    }

    /// The losses of the steps queued since the last call, in order, with each step's rows:
    /// all of them, or (`all` false) none until `LOSS_GROUP` are waiting, so the host waits for
    /// the device once per group of steps rather than at every step.
    pub fn losses(&mut self, all: bool) -> Result<Vec<(usize, StepOut)>> {
        const LOSS_GROUP: usize = 32;
        if self.pending.is_empty() || (!all && self.pending.len() < LOSS_GROUP) {
            return Ok(Vec::new());
        }
        let pending = std::mem::take(&mut self.pending);
        let errs = Tensor::cat(&pending.iter().map(|p| p.2.clone()).collect::<Vec<_>>(), 0)?;
        let mut errs = errs.to_vec1::<f64>()?.into_iter();
        let mut out = Vec::with_capacity(pending.len());
        for (rows, elems, e) in &pending {
            let recon = errs.next().unwrap_or(f64::NAN) / elems;
            let aux = (e.elem_count() > 1).then(|| errs.next().unwrap_or(f64::NAN) / elems);
            out.push((*rows, StepOut { recon, aux }));
        }
        Ok(out)
    }

    /// One training step on host rows `x` (the same algorithm as `step::step`): losses, the
    /// sparse backward, clipping, Adam and the decoder renormalisation, all on the device,
    /// with nothing read back (the losses wait for `losses`). `dead` (`dead_mask` of the
    /// previous epoch's dead features) switches on aux-k.
    pub fn step(
        &mut self,
        x: &[f32],
        dead: Option<&(Tensor, usize)>,
        aux_coeff: f32,
        clip_norm: f32,
        lr: f64,
    ) -> Result<()> {
        let rows = x.len() / self.d;
        let elems = x.len() as f64;
        let mut clock = std::time::Instant::now();
        let x = Tensor::from_slice(x, (rows, self.d), &self.dev)?;
        self.lap("upload", &mut clock)?;
        let xc = x.broadcast_sub(&self.b_pre.p()?)?;
        let terms = self.selections(&x, &xc, dead, aux_coeff, elems, &mut clock)?;
        let g = self.gradients(&terms, &xc)?;
        self.lap("gradients", &mut clock)?;
        // torch's clip_grad_norm_: the norm stays on the device, Adam reads it.
        let mut sq_norm = sum_sq(&g.enc)?;
        for g in [&g.b_pre, &g.w_dec, &g.b_dec] {
            sq_norm = (sq_norm + sum_sq(g)?)?;
        }
        let errs = Tensor::stack(&terms.iter().map(|t| t.err.clone()).collect::<Vec<_>>(), 0)?;
        self.pending.push((rows, elems, errs));
        self.lap("norms + losses", &mut clock)?;
        self.update(&g, &sq_norm, clip_norm, lr)?;
        self.lap("Adam + renorm", &mut clock)
    }

    /// The step's selections, one term each: top-k (its features counted in `fired`), then
    /// with `dead` the aux-k of the dead features.
    fn selections(
        &mut self,
        x: &Tensor,
        xc: &Tensor,
        dead: Option<&(Tensor, usize)>,
        aux_coeff: f32,
        elems: f64,
        clock: &mut std::time::Instant,
    ) -> Result<Vec<Term>> {
        let (b_enc, w_dec, b_dec) = (self.b_enc.p()?, self.w_dec.p()?, self.b_dec.p()?);
        let z = xc.matmul(&self.w_enc.p()?.t()?)?;
        self.lap("encoder GEMM", clock)?;
        let (idx, val) = topk_rows(&z, &b_enc, self.k)?;
        self.fired = (&self.fired + bincount(&idx, self.n)?)?;
        self.lap("top-k", clock)?;
        // One term per selection (recon, then aux): features, values, the rows' dL/dx̂.
        let mut terms = vec![self.term(&idx, &val, x, &w_dec, &b_dec, 2.0 / elems)?];
        if let Some((mask, k_aux)) = dead {
            // Live features are pushed out of reach; the values are the plain pre-activations.
            let (ia, _) = topk_rows(&z, &(&b_enc + mask)?, *k_aux)?;
            let va = (z.gather(&ia, 1)?
                + b_enc
                    .index_select(&ia.flatten_all()?, 0)?
                    .reshape(ia.shape())?)?;
            terms.push(self.term(&ia, &va, x, &w_dec, &b_dec, aux_coeff as f64 * 2.0 / elems)?);
        }
        self.lap("decode", clock)?;
        Ok(terms)
    }

    /// Gradients through the selections only: dz = ⟨W_dec[i], dL/dx̂⟩ per selection; W_enc's
    /// rows gather dz·(x − b_pre) (and b_enc the dz), W_dec's rows z·dL/dx̂, per feature.
    fn gradients(&self, terms: &[Term], xc: &Tensor) -> Result<Grads> {
        let (n, w_dec) = (self.n, self.w_dec.p()?);
        let (mut enc, mut w_dec_g, mut b_dec) = (None::<Tensor>, None::<Tensor>, None::<Tensor>);
        let add = |acc: Option<Tensor>, g: Tensor| match acc {
            Some(a) => a + g,
            None => Ok(g),
        };
        for t in terms {
            let dz = gather_dot(&t.idx, &w_dec, &t.dx)?;
            enc = Some(add(enc, sparse_outer(&t.idx, &dz, xc, n, true)?)?);
            w_dec_g = Some(add(
                w_dec_g,
                sparse_outer(&t.idx, &t.val, &t.dx, n, false)?,
            )?);
            b_dec = Some(add(b_dec, t.dx.sum(0)?)?);
        }
        let enc = enc.expect("a step has its top-k term");
        let (w_enc, b_enc) = (enc.narrow(0, 0, n * self.d)?, enc.narrow(0, n * self.d, n)?);
        let b_pre = b_enc
            .unsqueeze(0)?
            .matmul(&self.w_enc.p()?)?
            .squeeze(0)?
            .neg()?;
        Ok(Grads {
            enc,
            w_enc,
            b_enc,
            b_pre,
            w_dec: w_dec_g.expect("a step has its top-k term"),
            b_dec: b_dec.expect("a step has its top-k term"),
        })
    }

    /// Adam on every parameter with the clipped gradients (`sq_norm`: their squared norm),
    /// then unit-norm decoder rows.
    fn update(&mut self, g: &Grads, sq_norm: &Tensor, clip_norm: f32, lr: f64) -> Result<()> {
        self.t += 1;
        let h = AdamStep {
            step: lr as f32 / (1.0 - B1.powi(self.t)),
            bc2_sqrt: (1.0 - B2.powi(self.t)).sqrt(),
            clip_norm,
        };
        for (s, g) in [
            (&self.b_pre, &g.b_pre),
            (&self.w_enc, &g.w_enc),
            (&self.b_enc, &g.b_enc),
            (&self.w_dec, &g.w_dec),
            (&self.b_dec, &g.b_dec),
        ] {
            adam(&s.state, &g.flatten_all()?.contiguous()?, sq_norm, h)?;
        }
        unit_rows(&self.w_dec.p()?)
    }

    /// A selection's reconstruction: its terms, the summed squared error and dL/dx̂·scale.
    fn term(
        &self,
        idx: &Tensor,
        val: &Tensor,
        x: &Tensor,
        w_dec: &Tensor,
        b_dec: &Tensor,
        scale: f64,
    ) -> Result<Term> {
        let err = (sparse_decode(idx, val, w_dec)?.broadcast_add(b_dec)? - x)?;
        Ok(Term {
            idx: idx.clone(),
            val: val.clone(),
            dx: (&err * scale)?,
            err: sum_sq(&err)?,
        })
    }
}

/// A step's gradients: W_enc's and b_enc's in one tensor (n·d + n, as the sparse outer products
/// write them; the clipping norm reads it whole) and as views of its two parts, b_pre's, W_dec's
/// and b_dec's.
struct Grads {
    enc: Tensor,
    w_enc: Tensor,
    b_enc: Tensor,
    b_pre: Tensor,
    w_dec: Tensor,
    b_dec: Tensor,
}

/// One kind of selection in a step: features and values [rows × k], dL/dx̂ [rows × d] and the
/// summed squared error (a scalar on the device).
struct Term {
    idx: Tensor,
    val: Tensor,
    dx: Tensor,
    err: Tensor,
}
