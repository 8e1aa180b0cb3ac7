//! Synthetic SAE chains with planted drift, for the demo and the benchmarks. Each stage is the
//! previous stage's SAE with every feature's decoder column and encoder row rotated by a
//! feature-specific amount, so drift statistics have known structure:
//! deeper layers drift more, the KL chain's rate differs from flexible's by a modest factor,
//! and at layer 18 the first transition moves decoders and encoders in opposite measure.

use anyhow::Result;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::kernels::unit_norm;
use crate::lake::{PartitionKey, StageRow, Txn};
use crate::rng::normal;
use crate::sae::{Activation, Sae, SaeMeta, Tensors};
use crate::study::stage_name;
use crate::tables::write_sae;

pub struct ChainPlan {
    pub chain: String,
    pub reward: Option<String>,
    pub kl_coef: Option<f64>,
    pub steps: Vec<i64>,
    /// (layer, k) pairs; one SAE chain each.
    pub saes: Vec<(i32, usize)>,
    pub d_model: usize,
    pub d_sae: usize,
    /// Multiplies the per-step drift rate (the KL-budget effect).
    pub rate: f64,
}

/// A cold-start SAE: the same for every chain (the chains share their base model).
pub fn base_sae(layer: i32, k: usize, d: usize, n: usize) -> Sae {
    let mut rng = SmallRng::seed_from_u64(layer as u64 * 1000 + k as u64);
    let scale = 1.0 / (d as f32).sqrt();
    let w_enc: Vec<f32> = (0..n * d).map(|_| normal(&mut rng) * scale).collect();
    let mut w_dec: Vec<f32> = (0..n * d).map(|_| normal(&mut rng)).collect();
    w_dec.chunks_mut(d).for_each(unit_norm);
    Sae {
        d_model: d,
        d_sae: n,
        k,
        activation: Activation::TopK,
        tensors: Tensors {
            b_pre: (0..d).map(|_| normal(&mut rng) * 0.1).collect(),
            w_enc,
            b_enc: (0..n).map(|_| normal(&mut rng) * 0.01).collect(),
            w_dec,
            b_dec: (0..d).map(|_| normal(&mut rng) * 0.01).collect(),
        },
        meta: SaeMeta {
            source: Some(format!("synthetic layer {layer}")),
            ..Default::default()
        },
    }
}

/// The next stage: feature i's vectors get noise of norm ≈ s_i·‖v‖, s_i² ∝ d_step so that
/// 1 − cos grows about linearly with the steps between stages.
pub fn drift(prev: &Sae, seed: u64, layer: i32, d_step: i64, rate: f64, first: bool) -> Sae {
    let mut rng = SmallRng::seed_from_u64(seed);
    let (d, n) = (prev.d_model, prev.d_sae);
    let depth = 1.0
        + crate::study::LAYERS
            .iter()
            .position(|&l| l == layer)
            .unwrap_or(0) as f64;
    let base = (2.0 * 2e-4 * depth * rate * d_step.max(1) as f64).sqrt();
    let mut next = prev.clone();
    let noise_scale = 1.0 / (d as f32).sqrt();
    for i in 0..n {
        let u: f64 = rng.random();
        // Layer 18's first transition: features whose decoder moves most keep their encoder.
        let decoupled = layer == 18 && first;
        let v: f64 = rng.random();
        let (sd, se) = if decoupled {
            (base * 2.0 * u, base * (1.5 - u + v))
        } else {
            (base * 2.0 * u, base * (0.5 + u))
        };
        let dec = &mut next.w_dec[i * d..(i + 1) * d];
        dec.iter_mut()
            .for_each(|x| *x += sd as f32 * normal(&mut rng) * noise_scale);
        unit_norm(dec);
        let enc = &mut next.w_enc[i * d..(i + 1) * d];
        let norm = enc.iter().map(|x| x * x).sum::<f32>().sqrt();
        enc.iter_mut()
            .for_each(|x| *x += se as f32 * norm * normal(&mut rng) * noise_scale);
        next.b_enc[i] += 0.001 * normal(&mut rng);
    }
    next
}

/// Writes a whole synthetic chain (all stages, all layers) into a transaction.
/// `on_sae` is called after each SAE (for progress).
pub fn write_chain(txn: &mut Txn, plan: &ChainPlan, mut on_sae: impl FnMut()) -> Result<()> {
    let stages: Vec<String> = plan.steps.iter().map(|&s| stage_name(s)).collect();
    for &(layer, k) in &plan.saes {
        let mut sae = base_sae(layer, k, plan.d_model, plan.d_sae);
        for (si, stage) in stages.iter().enumerate() {
            if si > 0 {
                let seed = (plan.chain.bytes().map(u64::from).sum::<u64>() << 20)
                    ^ ((layer as u64) << 10)
                    ^ si as u64;
                sae = drift(
                    &sae,
                    seed,
                    layer,
                    plan.steps[si] - plan.steps[si - 1],
                    plan.rate,
                    si == 1,
                );
                sae.meta.init_from_stage = Some(stages[si - 1].clone());
            }
            sae.meta.source = Some(format!("{stage}_layer{layer}"));
            write_sae(
                txn,
                &PartitionKey::sae(&plan.chain, stage, layer, k as i32),
                &sae,
            )?;
            on_sae();
        }
    }
    let rows: Vec<StageRow> = plan
        .steps
        .iter()
        .zip(&stages)
        .map(|(&step, stage)| StageRow {
            chain: plan.chain.clone(),
            stage: stage.clone(),
            step,
            reward: plan.reward.clone(),
            kl_coef: plan.kl_coef,
            model_path: None,
        })
        .collect();
    txn.upsert_stages(&rows);
    Ok(())
}
