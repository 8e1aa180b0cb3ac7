//! Dense numeric kernels on f32 slices: the GEMM, the SAE's batched encoder, top-k selection and
//! the vector helpers (dot, axpy, unit norm, cosine). The model, the SAE and SQL all compute
//! through here, so a backend is swapped or added in one place. Nothing here knows the lake,
//! the model or the SAE type.

pub mod bf16;
pub mod device;
pub mod encode;
pub mod gemm;
pub mod nn;
#[macro_use]
pub mod simd;
pub mod topk;
pub mod vector;

pub use encode::{encode, Encoded};
pub use gemm::{for_each_cosine_row, gemm, sgemm_nt, Mat};
pub use topk::{by_value, top_k};
pub use vector::{add, axpy, cosine, dot, transpose, unit_norm, unit_rows};
