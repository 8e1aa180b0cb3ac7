//! The language model side: a Qwen2 forward pass in candle with hooks on the residual stream,
//! loading of Hugging Face checkpoints, and tokenisation.

pub mod config;
pub mod lm_train;
pub mod load;
mod packed;
pub mod qwen2;
pub mod random;
pub mod scoring;
pub mod token_text;
pub mod tokenizer;

pub use config::Qwen2Config;
pub use load::{load_model, load_model_as};
pub use qwen2::{
    next_token_log_softmax, next_token_logprobs, replace_real_with, splice_real, target_logprobs,
    Hooks, Output, Qwen2, Replace,
};
pub use tokenizer::{PaddedBatch, TextTokenizer};

use anyhow::{bail, Result};
use candle_core::Device;

/// The precision a model computes in.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ModelDtype {
    /// float32 (the reference).
    #[default]
    F32,
    /// bfloat16 (faster on a GPU; activations differ from f32 by bf16 rounding).
    Bf16,
}

impl ModelDtype {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            ModelDtype::F32 => candle_core::DType::F32,
            ModelDtype::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// `cpu` or `cuda` (the latter needs a build with `--features cuda` and a GPU).
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" if !cfg!(feature = "cuda") => bail!(
            "--device cuda: this saerl was built without CUDA; rebuild it with `cargo build --features cuda`"
        ),
        "cuda" => {
            let dev = Device::new_cuda(0).map_err(|e| {
                // candle's errors may carry a backtrace; the first line says what failed.
                let what = e.to_string();
                let what = what.lines().next().unwrap_or_default().to_string();
                anyhow::anyhow!(
                    "--device cuda: no usable GPU ({what}); check `nvidia-smi` and that the CUDA libraries (libcuda, cuBLAS, cuRAND, NVRTC) are on LD_LIBRARY_PATH"
                )
            })?;
            #[cfg(feature = "cuda")]
            if let Device::Cuda(cd) = &dev {
                crate::kernels::device::tune_cuda_device(cd)?;
            }
            Ok(dev)
        }
        other => bail!("unknown device {other:?}: use cpu or cuda"),
    }
}
