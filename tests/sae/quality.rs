//! `saerl eval` against the tiny-qwen2 fixture (PyTorch/transformers numbers), and `saerl stats`
//! against densities, effective counts and lifecycles computed here with plain loops.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use saerl::lake::{activation_batch, Lake, PartitionKey, Table, Txn};
use serde_json::Value;

use super::resume::{ok, saerl};

/// Writes `x` (rows × d) as an activation partition; `val[i]` marks val rows.
fn write_activations(lake: &Path, key: &PartitionKey, x: Vec<f32>, d: usize, val: &[bool]) {
    let n = val.len();
    let lake = Lake::open(lake).unwrap();
    let batch = activation_batch(
        (0..n as i64).collect(),
        vec![0; n],
        (0..n as i32).collect(),
        val,
        x,
        d,
    )
    .unwrap();
    let mut txn = Txn::begin(&lake, false).unwrap();
    txn.write(Table::Activations, key, &[batch]).unwrap();
    txn.commit().unwrap();
}

fn csv_rows(out: &str) -> Vec<HashMap<String, String>> {
    let mut lines = out.lines();
    let head: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .map(|l| head.iter().cloned().zip(l.split(',').map(str::to_string)).collect())
        .collect()
}

#[test]
fn eval_reproduces_the_reference_nmse_l0_and_ce_loss_recovered() {
    let fx = crate::shared::fixtures().join("tiny-qwen2");
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("sae_eval.json")).unwrap()).unwrap();
    let layer = want["layer"].as_i64().unwrap();
    let n_prompts = want["n_prompts"].as_u64().unwrap();
    let t = candle_core::safetensors::load(fx.join("sae_eval.safetensors"), &Device::Cpu).unwrap();
    let x: &Tensor = &t["sae_val_x"];
    let (rows, d) = x.dims2().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let l = lake.to_str().unwrap();
    let layer_s = layer.to_string();
    ok(&[
        "--lake",
        l,
        "import",
        "pt",
        fx.join("sae_layer2.pt").to_str().unwrap(),
        "--chain",
        "fx",
        "--stage",
        "instruct_base",
        "--layer",
        &layer_s,
    ]);
    write_activations(
        &lake,
        &PartitionKey::layer("fx", "instruct_base", layer as i32),
        x.flatten_all().unwrap().to_vec1().unwrap(),
        d,
        &vec![true; rows],
    );
    let data = crate::shared::fixtures().join("../data/gsm8k/test.jsonl");
    let n = n_prompts.to_string();
    ok(&[
        "--lake",
        l,
        "eval",
        "--chain",
        "fx",
        "--model",
        fx.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--prompts",
        &n,
    ]);
    let out = ok(&[
        "--lake",
        l,
        "sql",
        "-c",
        "SELECT nmse, mean_l0, l_base, l_sae, l_mean, frac_rec, n_val_rows, n_prompts, ablation, kl_sae, kl_rec FROM evals",
        "--format",
        "csv",
    ]);
    let got = &csv_rows(&out)[0];
    let num = |k: &str| got[k].parse::<f64>().unwrap();
    for (col, key) in [
        ("nmse", "nmse"),
        ("mean_l0", "mean_l0"),
        ("l_base", "L_base"),
        ("l_sae", "L_sae"),
        ("l_mean", "L_mean"),
        ("frac_rec", "frac_rec"),
    ] {
        let w = want[key].as_f64().unwrap();
        let rel = (num(col) - w).abs() / w.abs().max(1e-12);
        assert!(rel < 1e-4, "{col}: got {} want {w} (rel {rel:.2e})", num(col));
    }
    assert_eq!(num("n_val_rows") as usize, rows);
    assert_eq!(num("n_prompts") as u64, n_prompts);
    assert_eq!(got["ablation"], "mean");
    // The spliced SAE moves the output distribution less than the ablation does.
    assert!(num("kl_sae") > 0.0 && num("kl_rec") > 0.0 && num("kl_rec") < 1.0);
}
