//! The forward pass against transformers 5.24 (float32 from the checkpoint's weights).

use candle_core::{DType, Device, Tensor};
use saerl::model::qwen2::{next_token_logprobs, replace_real_with};
use saerl::model::{load_model, Hooks, TextTokenizer};

use crate::*;

fn reference() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(tiny().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn tokenizer_reproduces_the_reference_input_ids() {
    let r = reference();
    let ids: Vec<Vec<i64>> = r["input_ids"].to_vec2().unwrap();
    let mask: Vec<Vec<i64>> = r["attention_mask"].to_vec2().unwrap();
    let tok = TextTokenizer::from_file(&tiny().join("tokenizer.json")).unwrap();
    for (i, q) in reference_questions().iter().enumerate() {
        let got: Vec<i64> = tok
            .encode(q, max_len())
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect();
        let n = mask[i].iter().filter(|&&m| m == 1).count();
        assert_eq!(got, ids[i][..n].to_vec(), "row {i}");
    }
    assert_eq!(
        tok.pad_id() as i64,
        reference_json()["pad_token_id"].as_i64().unwrap()
    );
}

#[test]
fn blocks_logprobs_logits_and_losses_match_transformers() {
    let r = reference();
    let model = load_model(&tiny(), &Device::Cpu).unwrap();
    let n = model.config().num_hidden_layers;
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = r["attention_mask"].to_dtype(DType::U8).unwrap();
    let all: Vec<usize> = (0..n).collect();
    let out = model
        .forward(
            &ids,
            &mask,
            &Hooks {
                capture: &all,
                logits: true,
                ..Default::default()
            },
        )
        .unwrap();
    let real = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    for i in 0..n {
        let want = r[&format!("resid.{i}")].broadcast_mul(&real).unwrap();
        let got = out.blocks[&i].broadcast_mul(&real).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-4, "block {i}: max |Δ| = {d} at real positions");
    }
    let logits = out.logits.unwrap();
    let (tlp, sum, count) = next_token_logprobs(&logits, &ids, &mask).unwrap();
    let d = max_abs_diff(&tlp, &r["token_logprob"]);
    assert!(d < 1e-4, "token_logprob max |Δ| = {d}");
    let lens: Vec<u8> = mask.sum(1).unwrap().to_vec1::<u8>().unwrap();
    for (b, &len) in lens.iter().enumerate() {
        let got = logits.get(b).unwrap().get(len as usize - 1).unwrap();
        let d = max_abs_diff(&got, &r["logits_last"].get(b).unwrap());
        assert!(d < 1e-4, "logits_last row {b}: max |Δ| = {d}");
    }
    let losses = &reference_json()["losses"];
    let rel = |got: f64, want: f64| (got - want).abs() / want.abs();
    let base = sum / count as f64;
    assert!(
        rel(base, losses["base"].as_f64().unwrap()) < 1e-4,
        "base loss {base} vs {}",
        losses["base"]
    );
    for i in 0..n {
        let mean = r[&format!("mean.{i}")].clone();
        let f = |h: &Tensor, m: &Tensor| replace_real_with(h, m, &mean);
        let out = model
            .forward(
                &ids,
                &mask,
                &Hooks {
                    replace: Some((i, &f)),
                    logits: true,
                    ..Default::default()
                },
            )
            .unwrap();
        let (_, sum, count) = next_token_logprobs(&out.logits.unwrap(), &ids, &mask).unwrap();
        let want = losses[format!("mean_ablate.{i}")].as_f64().unwrap();
        assert!(
            rel(sum / count as f64, want) < 1e-4,
            "mean-ablation loss of block {i}: {} vs {want}",
            sum / count as f64
        );
    }
}

#[test]
fn stopping_early_and_resuming_after_a_block_give_the_same_pass() {
    let r = reference();
    let model = load_model(&tiny(), &Device::Cpu).unwrap();
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = r["attention_mask"].to_dtype(DType::U8).unwrap();
    let full = model
        .forward(
            &ids,
            &mask,
            &Hooks {
                capture: &[1],
                logits: true,
                ..Default::default()
            },
        )
        .unwrap();
    let early = model
        .forward(
            &ids,
            &mask,
            &Hooks {
                capture: &[1],
                ..Default::default()
            },
        )
        .unwrap();
    assert!(early.logits.is_none());
    assert_eq!(max_abs_diff(&full.blocks[&1], &early.blocks[&1]), 0.0);
    // Resuming after a captured block gives the whole pass's logits, and a rewritten block
    // output gives the replace hook's logits (eval's splices run this way).
    let n = model.config().num_hidden_layers;
    let all: Vec<usize> = (0..n).collect();
    let logits = |hooks: &Hooks| model.forward(&ids, &mask, hooks).unwrap();
    let captured = logits(&Hooks {
        capture: &all,
        logits: true,
        ..Default::default()
    });
    let whole = captured.logits.as_ref().unwrap();
    let halve = |h: &candle_core::Tensor, _: &candle_core::Tensor| Ok((h * 0.5)?);
    for i in 0..n {
        let after = model.logits_after(i, &captured.blocks[&i], &mask).unwrap();
        assert_eq!(max_abs_diff(&after, whole), 0.0, "block {i}");
        let hooked = logits(&Hooks {
            replace: Some((i, &halve)),
            logits: true,
            ..Default::default()
        });
        let halved = (&captured.blocks[&i] * 0.5).unwrap();
        let after = model.logits_after(i, &halved, &mask).unwrap();
        assert_eq!(
            max_abs_diff(&after, hooked.logits.as_ref().unwrap()),
            0.0,
            "block {i}"
        );
    }
    assert!(model.logits_after(n, whole, &mask).is_err());
    let err = model
        .forward(
            &ids,
            &mask,
            &Hooks {
                capture: &[n],
                ..Default::default()
            },
        )
        .err()
        .unwrap();
    assert!(err.to_string().contains("blocks"), "{err}");
}

#[test]
fn a_sharded_checkpoint_loads_like_the_single_file() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(tiny().join(f), dir.path().join(f)).unwrap();
    }
    // Gather the checkpoint's tensors (from however many files it has), then split them over
    // two new shards and index them.
    let mut tensors = std::collections::HashMap::new();
    for f in saerl::model::load::weight_files(&tiny()).unwrap() {
        tensors.extend(candle_core::safetensors::load(f, &Device::Cpu).unwrap());
    }
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (part, shard) in [
        (first, "model-00001-of-00002.safetensors"),
        (second, "model-00002-of-00002.safetensors"),
    ] {
        let sub: std::collections::HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&sub, dir.path().join(shard)).unwrap();
        for n in part {
            map.insert((*n).clone(), serde_json::json!(shard));
        }
    }
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::json!({ "weight_map": map }).to_string(),
    )
    .unwrap();
    let r = reference();
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = r["attention_mask"].to_dtype(DType::U8).unwrap();
    let hooks = Hooks {
        capture: &[0],
        ..Default::default()
    };
    let a = load_model(&tiny(), &Device::Cpu)
        .unwrap()
        .forward(&ids, &mask, &hooks)
        .unwrap();
    let b = load_model(dir.path(), &Device::Cpu)
        .unwrap()
        .forward(&ids, &mask, &hooks)
        .unwrap();
    assert_eq!(max_abs_diff(&a.blocks[&0], &b.blocks[&0]), 0.0);
}
