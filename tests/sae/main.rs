//! SAE training against the PyTorch reference trajectory in `sae-train/`: every step's losses,
//! every epoch's statistics, the best epoch and the final weights, then the warm-started run.

#[path = "../common/mod.rs"]
mod shared;

mod crash;
mod quality;
mod resume;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use saerl::sae::train::{train_on, TrainConfig};
use saerl::sae::{Activation, Sae, SaeMeta, Tensors};
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
        tensors: Tensors {
            b_pre: flat(&t[&format!("{prefix}.b_pre")]),
            w_enc: flat(&t[&format!("{prefix}.W_enc")]),
            b_enc: flat(&t[&format!("{prefix}.b_enc")]),
            w_dec: flat(&w_dec.t().unwrap().contiguous().unwrap()),
            b_dec: flat(&t[&format!("{prefix}.b_dec")]),
        },
        meta: SaeMeta::default(),
    }
}

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-12)
}

#[allow(clippy::too_many_arguments)]
fn check_run(
    name: &str,
    init: &Sae,
    train_rows: &[f32],
    val_rows: &[f32],
    log: &Value,
    want: &Sae,
    cfg: &TrainConfig,
    device: Option<&Device>,
) {
    let r = train_on(init, train_rows, val_rows, cfg, device, &mut |_| {}).unwrap();
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

/// The fixture's trajectory, cold then warm-started, on the CPU step or the device path.
fn trajectory(device: Option<&Device>) {
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
        resample_every: h["resample_every"].as_u64().map(|e| e as usize),
        shuffle: false,
        seed: h["seed"].as_u64().unwrap(),
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
        device,
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
        device,
    );
}

#[test]
fn training_follows_the_pytorch_trajectory_then_warm_starts() {
    trajectory(None);
}

/// The device path (candle tensors and saerl's device kernels, here on the CPU device) follows
/// the same trajectory; `SAERL_TEST_DEVICE=cuda` runs it on a GPU.
#[test]
fn the_device_path_follows_the_pytorch_trajectory_too() {
    let dev = match std::env::var("SAERL_TEST_DEVICE").as_deref() {
        Ok("cuda") => saerl::model::device("cuda").unwrap(),
        _ => Device::Cpu,
    };
    trajectory(Some(&dev));
}

#[test]
fn resampling_reinitialises_planted_dead_features_from_high_error_rows() {
    let t = tensors();
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(shared::fixtures().join("sae-train/train_ref.json")).unwrap(),
    )
    .unwrap();
    let mut s = sae(&t, "init", json["hyper"]["k"].as_u64().unwrap() as usize);
    let rows = flat(&t["train"]);
    let d = s.d_model;
    let dead: Vec<u32> = vec![1, 5, 9];
    let before = s.clone();
    saerl::sae::train::resample(&mut s, &dead, &rows, 7);
    // Reconstruction error of every row under the SAE before resampling, from first principles.
    let errs: Vec<f64> = rows
        .chunks(d)
        .map(|x| {
            let z: Vec<f32> = (0..before.d_sae)
                .map(|i| {
                    (0..d)
                        .map(|j| before.w_enc[i * d + j] * (x[j] - before.b_pre[j]))
                        .sum::<f32>()
                        + before.b_enc[i]
                })
                .collect();
            let mut idx: Vec<usize> = (0..z.len()).collect();
            idx.sort_by(|&a, &b| z[b].total_cmp(&z[a]));
            let mut x_hat = before.b_dec.clone();
            for &i in &idx[..before.k] {
                for (xh, w) in x_hat.iter_mut().zip(&before.w_dec[i * d..(i + 1) * d]) {
                    *xh += z[i] * w;
                }
            }
            x.iter()
                .zip(&x_hat)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum()
        })
        .collect();
    let mut sorted = errs.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let cutoff = sorted[sorted.len().div_ceil(4) - 1];
    for &f in &dead {
        let f = f as usize;
        assert_eq!(s.b_enc[f], 0.0);
        let enc = &s.w_enc[f * d..(f + 1) * d];
        assert_eq!(
            enc,
            &s.w_dec[f * d..(f + 1) * d],
            "encoder row and decoder column are the same vector"
        );
        let r = rows
            .chunks(d)
            .position(|x| {
                let n = x.iter().map(|v| v * v).sum::<f32>().sqrt();
                x.iter().zip(enc).all(|(a, b)| (a / n - b).abs() < 1e-6)
            })
            .expect("a normalised training row");
        assert!(
            errs[r] >= cutoff,
            "feature {f} came from a row outside the top error quartile"
        );
    }
    assert_eq!(s.b_dec, before.b_dec, "b_dec untouched");
    for i in (0..s.d_sae).filter(|i| !dead.contains(&(*i as u32))) {
        assert_eq!(
            s.enc_row(i),
            before.enc_row(i),
            "live feature {i} unchanged"
        );
    }
}

#[test]
fn train_walks_a_chain_with_warm_starts_and_skips_what_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let lake = resume::demo_lake(dir.path());
    let run = resume::ok;
    let l = lake.to_str().unwrap();
    let train = [
        "--lake", l, "train", "--chain", "tiny", "--layers", "2", "--k", "4", "--d-sae", "32",
        "--epochs", "2", "--batch", "64",
    ];
    run(&train);
    let again = run(&train);
    assert!(again.contains("already trained, skipped"), "{again}");
    let q = "SELECT s.stage, s.init_from_stage, count(t.epoch) AS epochs FROM saes s JOIN train_log t USING (chain, stage, layer, k) \
             WHERE s.chain = 'tiny' AND s.k = 4 GROUP BY s.stage, s.init_from_stage ORDER BY s.stage";
    let csv = run(&["--lake", l, "sql", "-c", q, "--format", "csv"]);
    assert_eq!(
        csv,
        "stage,init_from_stage,epochs\ninstruct_base,,2\nppo_step10,instruct_base,2\n"
    );
    let drift = run(&[
        "--lake",
        l,
        "sql",
        "-c",
        "SELECT count(*) AS n FROM feature_drift WHERE chain = 'tiny' AND k = 4",
        "--format",
        "csv",
    ]);
    assert_eq!(
        drift, "n\n32\n",
        "one drift row per feature of the warm-started pair"
    );
}
