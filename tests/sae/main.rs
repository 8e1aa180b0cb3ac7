//! SAE training against the PyTorch reference trajectory in `sae-train/`: every step's losses,
//! every epoch's statistics, the best epoch and the final weights, then the warm-started run.

#[path = "../common/mod.rs"]
mod shared;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use saerl::sae::train::{train, TrainConfig};
use saerl::sae::{Activation, Sae, SaeMeta};
use serde_json::Value;

fn tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        shared::fixtures().join("sae-train/train_ref.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// The SAE stored under `prefix` (W_dec [d, d_sae] is transposed into our feature-major layout).
fn sae(t: &HashMap<String, Tensor>, prefix: &str, k: usize) -> Sae {
    let w_dec = &t[&format!("{prefix}.W_dec")];
    let (d, n) = w_dec.dims2().unwrap();
    Sae {
        d_model: d,
        d_sae: n,
        k,
        activation: Activation::TopK,
        b_pre: flat(&t[&format!("{prefix}.b_pre")]),
        w_enc: flat(&t[&format!("{prefix}.W_enc")]),
        b_enc: flat(&t[&format!("{prefix}.b_enc")]),
        w_dec: flat(&w_dec.t().unwrap().contiguous().unwrap()),
        b_dec: flat(&t[&format!("{prefix}.b_dec")]),
        meta: SaeMeta::default(),
    }
}

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-12)
}

fn check_run(
    name: &str,
    init: &Sae,
    train_rows: &[f32],
    val_rows: &[f32],
    log: &Value,
    want: &Sae,
    cfg: &TrainConfig,
) {
    let r = train(init, train_rows, val_rows, cfg).unwrap();
    let steps = log["steps"].as_array().unwrap();
    assert_eq!(r.steps.len(), steps.len(), "{name}: number of steps");
    for (i, (got, s)) in r.steps.iter().zip(steps).enumerate() {
        let recon = s["recon_loss"].as_f64().unwrap();
        assert!(
            rel(got.recon_loss, recon) < 1e-4,
            "{name} step {i}: recon {} vs {recon}",
            got.recon_loss
        );
        match (got.aux_loss, s["aux_loss"].as_f64()) {
            (Some(g), Some(w)) => assert!(rel(g, w) < 1e-4, "{name} step {i}: aux {g} vs {w}"),
            (None, None) => {}
            (g, w) => panic!("{name} step {i}: aux term {g:?} vs {w:?}"),
        }
    }
    for (e, (got, w)) in r
        .epochs
        .iter()
        .zip(log["epochs"].as_array().unwrap())
        .enumerate()
    {
        assert_eq!(
            got.n_dead as u64,
            w["n_dead"].as_u64().unwrap(),
            "{name} epoch {e}: n_dead"
        );
        assert!(
            rel(got.val_mse, w["val_mse"].as_f64().unwrap()) < 1e-4,
            "{name} epoch {e}: val_mse {} vs {}",
            got.val_mse,
            w["val_mse"]
        );
        assert!(
            rel(got.train_mse, w["train_mse"].as_f64().unwrap()) < 1e-4,
            "{name} epoch {e}: train_mse"
        );
    }
    assert_eq!(
        r.best_epoch as u64,
        log["best_epoch"].as_u64().unwrap(),
        "{name}: best epoch"
    );
    for (part, got, w) in [
        ("b_pre", &r.sae.b_pre, &want.b_pre),
        ("W_enc", &r.sae.w_enc, &want.w_enc),
        ("b_enc", &r.sae.b_enc, &want.b_enc),
        ("W_dec", &r.sae.w_dec, &want.w_dec),
        ("b_dec", &r.sae.b_dec, &want.b_dec),
    ] {
        let max = got
            .iter()
            .zip(w.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-3, "{name}: final {part} differs by up to {max}");
    }
}

#[test]
fn training_follows_the_pytorch_trajectory_then_warm_starts() {
    let t = tensors();
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(shared::fixtures().join("sae-train/train_ref.json")).unwrap(),
    )
    .unwrap();
    let h = &json["hyper"];
    let k = h["k"].as_u64().unwrap() as usize;
    let cfg = TrainConfig {
        epochs: h["epochs"].as_u64().unwrap() as usize,
        lr: h["lr"].as_f64().unwrap(),
        batch: h["batch"].as_u64().unwrap() as usize,
        aux_coeff: h["aux_coeff"].as_f64().unwrap() as f32,
        dead_threshold: h["dead_threshold"].as_f64().unwrap(),
        clip_grad_norm: h["clip_grad_norm"].as_f64().unwrap() as f32,
    };
    let init = sae(&t, "init", k);
    let final_ = sae(&t, "final", k);
    check_run(
        "cold",
        &init,
        &flat(&t["train"]),
        &flat(&t["val"]),
        &json,
        &final_,
        &cfg,
    );
    let warm = sae(&t, "warm.final", k);
    check_run(
        "warm",
        &final_,
        &flat(&t["warm.train"]),
        &flat(&t["warm.val"]),
        &json["warm"],
        &warm,
        &cfg,
    );
}
