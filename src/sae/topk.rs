//! The one SAE type (DESIGN.md, "SAE semantics").
//!
//! encode: z = W_enc (x − b_pre) + b_enc, keep the k largest entries as they are (no ReLU for
//! `topk`; `topk_relu` clamps them at 0 afterwards). decode: x̂ = W_dec z + b_dec.
//! The decoder is stored feature-major (`w_dec[i]` = decoder column i) because decoding touches
//! only the k selected columns and the lake stores one row per feature.

use anyhow::{bail, Result};

use rayon::prelude::*;

use crate::kernels::{by_value, dot, encode, top_k, Encoded};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// The study's: the k largest pre-activations, kept as they are (negative ones too).
    TopK,
    /// SAELens's TopK: the k largest, then a ReLU.
    TopKRelu,
    /// sparsify's: a ReLU, then the k largest (the same dense latents as `TopKRelu`).
    ReluTopK,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::TopK => "topk",
            Activation::TopKRelu => "topk_relu",
            Activation::ReluTopK => "relu_topk",
        }
    }

    /// Whether latents are clamped at zero (the libraries' conventions).
    pub fn relu(self) -> bool {
        self != Activation::TopK
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "topk" => Ok(Activation::TopK),
            "topk_relu" => Ok(Activation::TopKRelu),
            "relu_topk" => Ok(Activation::ReluTopK),
            _ => bail!("unknown SAE activation {s:?} (expected topk, topk_relu or relu_topk)"),
        }
    }
}

/// Provenance kept with the weights.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SaeMeta {
    pub init_from_stage: Option<String>,
    pub best_epoch: Option<i32>,
    pub best_val_mse: Option<f64>,
    pub source: Option<String>,
}

/// The five tensors of a TopK SAE, in its layout: the biases b_pre, b_dec (d_model) and b_enc
/// (d_sae), and two [d_sae × d_model] matrices whose row i belongs to feature i. An SAE's
/// weights are one of these, and so is each of Adam's moments while it trains.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tensors {
    pub b_pre: Vec<f32>,
    /// Row i = encoder row of feature i.
    pub w_enc: Vec<f32>,
    pub b_enc: Vec<f32>,
    /// Row i = decoder column of feature i.
    pub w_dec: Vec<f32>,
    pub b_dec: Vec<f32>,
}

impl Tensors {
    /// Their names, in the order of `parts`.
    pub const NAMES: [&'static str; 5] = ["b_pre", "w_enc", "b_enc", "w_dec", "b_dec"];

    pub fn zeros(d_model: usize, d_sae: usize) -> Self {
        Self::from_parts(Self::sizes(d_model, d_sae).map(|len| vec![0.0; len]))
    }

    /// The length each part has for an SAE of this shape, in the order of `parts`.
    pub fn sizes(d_model: usize, d_sae: usize) -> [usize; 5] {
        let (d, n) = (d_model, d_sae);
        [d, n * d, n, n * d, d]
    }

    pub fn from_parts([b_pre, w_enc, b_enc, w_dec, b_dec]: [Vec<f32>; 5]) -> Self {
        Self {
            b_pre,
            w_enc,
            b_enc,
            w_dec,
            b_dec,
        }
    }

    pub fn parts(&self) -> [&Vec<f32>; 5] {
        [
            &self.b_pre,
            &self.w_enc,
            &self.b_enc,
            &self.w_dec,
            &self.b_dec,
        ]
    }

    pub fn parts_mut(&mut self) -> [&mut Vec<f32>; 5] {
        [
            &mut self.b_pre,
            &mut self.w_enc,
            &mut self.b_enc,
            &mut self.w_dec,
            &mut self.b_dec,
        ]
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sae {
    pub d_model: usize,
    pub d_sae: usize,
    pub k: usize,
    pub activation: Activation,
    /// The weights; `sae.w_enc` reads through to them.
    pub tensors: Tensors,
    pub meta: SaeMeta,
}

/// An SAE is its weights plus shape and provenance: field access reads through, so code that
/// computes with the weights names them directly.
impl std::ops::Deref for Sae {
    type Target = Tensors;
    fn deref(&self) -> &Tensors {
        &self.tensors
    }
}

impl std::ops::DerefMut for Sae {
    fn deref_mut(&mut self) -> &mut Tensors {
        &mut self.tensors
    }
}

impl Sae {
    /// Checks that every tensor has the size the dimensions promise and that the weights are finite.
    pub fn validate(&self) -> Result<()> {
        let (d, n) = (self.d_model, self.d_sae);
        if self.k == 0 || self.k > n {
            bail!("k = {} must be between 1 and d_sae = {n}", self.k);
        }
        const SHOWN: [&str; 5] = ["b_pre", "W_enc", "b_enc", "W_dec", "b_dec"];
        let sizes = Tensors::sizes(d, n);
        for ((name, v), want) in SHOWN.into_iter().zip(self.tensors.parts()).zip(sizes) {
            if v.len() != want {
                bail!(
                    "{name} has {} values, expected {want} for d_model {d}, d_sae {n}",
                    v.len()
                );
            }
        }
        for (name, v) in SHOWN.into_iter().zip(self.tensors.parts()) {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                bail!(
                    "{name} holds a non-finite value ({}) at flat index {i}",
                    v[i]
                );
            }
        }
        Ok(())
    }

    pub fn enc_row(&self, i: usize) -> &[f32] {
        &self.w_enc[i * self.d_model..(i + 1) * self.d_model]
    }

    pub fn dec_col(&self, i: usize) -> &[f32] {
        &self.w_dec[i * self.d_model..(i + 1) * self.d_model]
    }

    /// The pre-activations of one input row without the bias: z = W_enc (x − b_pre); the
    /// latents are the top-k of z + b_enc (`activate`).
    pub fn pre_activations(&self, x: &[f32], z: &mut Vec<f32>) {
        assert_eq!(x.len(), self.d_model, "input width must equal d_model");
        let centred: Vec<f32> = x.iter().zip(&self.b_pre).map(|(a, b)| a - b).collect();
        z.clear();
        z.extend((0..self.d_sae).map(|i| dot(self.enc_row(i), &centred)));
    }

    /// Encodes a batch of rows (`x` row-major, d_model wide) as one GEMM into `out`, then
    /// hands each row's pre-activations without b_enc (see `pre_activations`) to `f`, rows in
    /// parallel; the results come back in row order.
    pub fn map_pre_activations<R: Send>(
        &self,
        x: &[f32],
        out: &mut Encoded,
        f: impl Fn(usize, &[f32]) -> R + Sync,
    ) -> Vec<R> {
        encode(x, &self.b_pre, &self.w_enc, self.d_sae, out);
        out.z
            .par_chunks(self.d_sae)
            .enumerate()
            .map(|(r, z)| f(r, z))
            .collect()
    }

    /// The k active latents of one row, largest first, as (feature, value).
    pub fn encode(&self, x: &[f32]) -> Vec<(u32, f32)> {
        let mut z = Vec::with_capacity(self.d_sae);
        self.pre_activations(x, &mut z);
        let mut lat = self.activate(&z);
        by_value(&mut lat);
        lat
    }

    /// The k active latents given a row's pre-activations without b_enc (top-k of z + b_enc,
    /// clamped at zero for the ReLU conventions), in no particular order.
    #[inline(always)]
    pub fn activate(&self, z: &[f32]) -> Vec<(u32, f32)> {
        let mut top = top_k(z, &self.b_enc, self.k);
        if self.activation.relu() {
            top.iter_mut().for_each(|(_, v)| *v = v.max(0.0));
        }
        top
    }

    /// x̂ from sparse latents: only their decoder columns are touched.
    #[inline(always)]
    pub fn decode(&self, latents: &[(u32, f32)]) -> Vec<f32> {
        let mut out = self.b_dec.clone();
        for &(i, v) in latents {
            for (o, w) in out.iter_mut().zip(self.dec_col(i as usize)) {
                *o += v * w;
            }
        }
        out
    }
}

/// `topk_encode`'s view of an SAE.
impl saerl_udfs::Encoder for Sae {
    fn d_model(&self) -> usize {
        self.d_model
    }

    fn encode(&self, x: &[f32]) -> Result<Vec<(u32, f32)>, String> {
        Ok(Sae::encode(self, x))
    }

    /// Through the encoder GEMM, 1,024 rows at a time.
    fn encode_rows(&self, x: &[f32]) -> Result<Vec<Vec<(u32, f32)>>, String> {
        let mut enc = Encoded::default();
        let mut out = Vec::with_capacity(x.len() / self.d_model);
        for chunk in x.chunks(1024 * self.d_model) {
            out.extend(self.map_pre_activations(chunk, &mut enc, |_, z| {
                let mut lat = self.activate(z);
                by_value(&mut lat);
                lat
            }));
        }
        Ok(out)
    }
}
