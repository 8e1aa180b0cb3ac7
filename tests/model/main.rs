//! Model tests: the Qwen2 forward pass against Hugging Face transformers' outputs in
//! `tiny-qwen2/`, tokenisation, and `saerl ingest` (rows, split, resume, bad input).

mod crash;
mod forward;
mod ingest;
mod run;
#[path = "../common/mod.rs"]
mod shared;

pub use shared::{contents, fixtures, snapshot};

use std::path::{Path, PathBuf};

pub fn tiny() -> PathBuf {
    fixtures().join("tiny-qwen2")
}

pub fn reference_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(tiny().join("reference.json")).unwrap()).unwrap()
}

/// The questions the reference batch was made from (per the generator's recorded args).
pub fn reference_questions() -> Vec<String> {
    let r = reference_json();
    let args = &r["args"];
    // Recorded relative to shared/ (e.g. data/gsm8k/test.jsonl), or as a bare file name.
    let name = Path::new(args["gsm8k"].as_str().unwrap());
    let shared = fixtures().join("..");
    let file = [
        shared.join(name),
        shared.join("data/gsm8k").join(name.file_name().unwrap()),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .unwrap_or_else(|| {
        panic!(
            "the reference's GSM8k file {name:?} is not under {}",
            shared.display()
        )
    });
    let seed = args["seed"].as_u64().unwrap() as usize;
    let batch = args["batch"].as_u64().unwrap() as usize;
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["question"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .skip(seed * 7)
        .take(batch)
        .collect()
}

/// The fixture model's number of blocks (from its config.json).
pub fn n_blocks() -> usize {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny().join("config.json")).unwrap())
            .unwrap();
    cfg["num_hidden_layers"].as_u64().unwrap() as usize
}

/// Two blocks of the fixture model for tests that store more than one: 1 and the last.
pub fn first_and_last_block() -> String {
    format!("1,{}", n_blocks() - 1)
}

pub fn max_len() -> usize {
    reference_json()["args"]["max_len"].as_u64().unwrap() as usize
}
