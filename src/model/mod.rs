//! The language model side: a Qwen2 forward pass in candle with hooks on the residual stream,
//! loading of Hugging Face checkpoints, and tokenisation.

pub mod config;
pub mod lm_train;
pub mod load;
mod packed;
pub mod qwen2;
pub mod random;
pub mod tokenizer;

pub use config::Qwen2Config;
pub use load::load_model;
pub use qwen2::{
    next_token_log_softmax, next_token_logprobs, replace_real_with, splice_real, target_logprobs,
    Hooks, Output, Qwen2, Replace,
};
pub use tokenizer::{PaddedBatch, TextTokenizer};

use anyhow::{bail, Result};
use candle_core::Device;

/// `cpu` or `cuda` (the latter needs a build with `--features cuda`).
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(|e| anyhow::anyhow!("CUDA device unavailable ({e}); build with `--features cuda` on a machine with a GPU")),
        other => bail!("unknown device {other:?}: use cpu or cuda"),
    }
}
