//! The SAE's batched encoder: Z = (X − b_pre)·W_encᵀ as one GEMM over a batch of rows. The
//! bias b_enc is not added here: consumers add it row by row while the row is in cache
//! (`Sae::map_pre_activations`), which saves writing and re-reading the whole Z once.

use rayon::prelude::*;

/// Buffers of one batched encoding, reused from batch to batch.
#[derive(Default)]
pub struct Encoded {
    /// X − b_pre, rows × d.
    pub xc: Vec<f32>,
    /// The pre-activations without b_enc, rows × n.
    pub z: Vec<f32>,
}

/// Encodes the rows of `x` (row-major, `b_pre.len()` wide) with the `n` encoder rows `w_enc`
/// ([n × d], row i = feature i) into `out`, without the bias.
pub fn encode(x: &[f32], b_pre: &[f32], w_enc: &[f32], n: usize, out: &mut Encoded) {
    let d = b_pre.len();
    assert_eq!(x.len() % d, 0, "encode: rows must be {d} wide");
    assert_eq!(w_enc.len(), n * d, "encode: W_enc must be {n}×{d}");
    let rows = x.len() / d;
    out.xc.resize(rows * d, 0.0);
    out.xc
        .par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(c, x)| {
            c.iter_mut()
                .zip(x)
                .zip(b_pre)
                .for_each(|((c, x), b)| *c = x - b)
        });
    out.z.resize(rows * n, 0.0);
    super::sgemm_nt(rows, n, d, &out.xc, w_enc, &mut out.z, false);
}
