//! The one SAE type (DESIGN.md, "SAE semantics").
//!
//! encode: z = W_enc (x − b_pre) + b_enc, keep the k largest entries as they are (no ReLU for
//! `topk`; `topk_relu` clamps them at 0 afterwards). decode: x̂ = W_dec z + b_dec.
//! The decoder is stored feature-major (`w_dec[i]` = decoder column i) because decoding touches
//! only the k selected columns and the lake stores one row per feature.

use std::cmp::Ordering;

use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    TopK,
    TopKRelu,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::TopK => "topk",
            Activation::TopKRelu => "topk_relu",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "topk" => Ok(Activation::TopK),
            "topk_relu" => Ok(Activation::TopKRelu),
            _ => bail!("unknown SAE activation {s:?} (expected topk or topk_relu)"),
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

#[derive(Debug, Clone, PartialEq)]
pub struct Sae {
    pub d_model: usize,
    pub d_sae: usize,
    pub k: usize,
    pub activation: Activation,
    pub b_pre: Vec<f32>,
    /// [d_sae × d_model], row i = encoder row of feature i.
    pub w_enc: Vec<f32>,
    pub b_enc: Vec<f32>,
    /// [d_sae × d_model], row i = decoder column of feature i.
    pub w_dec: Vec<f32>,
    pub b_dec: Vec<f32>,
    pub meta: SaeMeta,
}

impl Sae {
    /// Checks that every tensor has the size the dimensions promise and that the weights are finite.
    pub fn validate(&self) -> Result<()> {
        let (d, n) = (self.d_model, self.d_sae);
        if self.k == 0 || self.k > n {
            bail!("k = {} must be between 1 and d_sae = {n}", self.k);
        }
        for (name, got, want) in [
            ("b_pre", self.b_pre.len(), d),
            ("W_enc", self.w_enc.len(), n * d),
            ("b_enc", self.b_enc.len(), n),
            ("W_dec", self.w_dec.len(), n * d),
            ("b_dec", self.b_dec.len(), d),
        ] {
            if got != want {
                bail!("{name} has {got} values, expected {want} for d_model {d}, d_sae {n}");
            }
        }
        for (name, v) in [
            ("b_pre", &self.b_pre),
            ("W_enc", &self.w_enc),
            ("b_enc", &self.b_enc),
            ("W_dec", &self.w_dec),
            ("b_dec", &self.b_dec),
        ] {
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

    /// All pre-activations z for one input row.
    pub fn pre_activations(&self, x: &[f32], z: &mut Vec<f32>) {
        assert_eq!(x.len(), self.d_model, "input width must equal d_model");
        let centred: Vec<f32> = x.iter().zip(&self.b_pre).map(|(a, b)| a - b).collect();
        z.clear();
        z.extend((0..self.d_sae).map(|i| dot(self.enc_row(i), &centred) + self.b_enc[i]));
    }

    /// The k active latents of one row, largest first, as (feature, value).
    pub fn encode(&self, x: &[f32]) -> Vec<(u32, f32)> {
        let mut z = Vec::with_capacity(self.d_sae);
        self.pre_activations(x, &mut z);
        self.activate(&z)
    }

    /// The k active latents given a row's pre-activations (top-k, then ReLU for `topk_relu`).
    pub fn activate(&self, z: &[f32]) -> Vec<(u32, f32)> {
        let mut top = top_k(z, self.k);
        if self.activation == Activation::TopKRelu {
            top.iter_mut().for_each(|(_, v)| *v = v.max(0.0));
        }
        top
    }

    /// x̂ from sparse latents: only their decoder columns are touched.
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

/// Indices and values of the k largest entries, largest first; ties go to the lower index.
/// One pass with a k-element min-heap: after the first few hundred entries almost every value
/// fails the single comparison against the heap's minimum (inputs are expected to be finite).
pub fn top_k(z: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(z.len());
    if k == 0 {
        return Vec::new();
    }
    // `worse(a, b)`: a ranks below b.
    let worse = |a: (u32, f32), b: (u32, f32)| a.1 < b.1 || (a.1 == b.1 && a.0 > b.0);
    let sift_down = |h: &mut [(u32, f32)], mut i: usize| loop {
        let (l, r) = (2 * i + 1, 2 * i + 2);
        let mut m = i;
        if l < h.len() && worse(h[l], h[m]) {
            m = l;
        }
        if r < h.len() && worse(h[r], h[m]) {
            m = r;
        }
        if m == i {
            break;
        }
        h.swap(i, m);
        i = m;
    };
    let mut heap: Vec<(u32, f32)> = z[..k]
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v))
        .collect();
    for i in (0..k / 2).rev() {
        sift_down(&mut heap, i);
    }
    for (i, &v) in z.iter().enumerate().skip(k) {
        // A later index never wins a tie, so only a strictly larger value enters.
        if v > heap[0].1 {
            heap[0] = (i as u32, v);
            sift_down(&mut heap, 0);
        }
    }
    heap.sort_unstable_by(|a, b| {
        b.1.partial_cmp(&a.1)
            .unwrap_or(Ordering::Equal)
            .then(a.0.cmp(&b.0))
    });
    heap
}

/// f32 dot product with independent accumulators so it vectorises.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..L {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_largest_first_and_keeps_negatives() {
        let z = [-3.0, -1.0, -2.0, -5.0];
        assert_eq!(top_k(&z, 2), vec![(1, -1.0), (2, -2.0)]);
    }

    #[test]
    fn top_k_matches_a_full_sort_with_ties_to_the_lower_index() {
        let mut rng = crate::data::SplitMix64::new(7);
        for n in [1usize, 5, 64, 300, 7168] {
            // Few distinct values, so ties are everywhere.
            let z: Vec<f32> = (0..n).map(|_| rng.below(23) as f32 - 11.0).collect();
            for k in [1usize, 3, 64, n] {
                let mut all: Vec<(u32, f32)> =
                    z.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
                all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                all.truncate(k);
                assert_eq!(top_k(&z, k), all, "n {n} k {k}");
            }
        }
    }
}
