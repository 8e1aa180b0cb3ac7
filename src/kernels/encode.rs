//! The SAE's batched encoder: Z = (X − b_pre)·W_encᵀ + b_enc as one GEMM over a batch of rows.

/// Buffers of one batched encoding, reused from batch to batch.
#[derive(Default)]
pub struct Encoded {
    /// X − b_pre, rows × d.
    pub xc: Vec<f32>,
    /// The pre-activations, rows × n.
    pub z: Vec<f32>,
}

/// Encodes the rows of `x` (row-major, `b_pre.len()` wide) with encoder rows `w_enc`
/// ([n × d], row i = feature i) into `out`.
pub fn encode(x: &[f32], b_pre: &[f32], w_enc: &[f32], b_enc: &[f32], out: &mut Encoded) {
    let (d, n) = (b_pre.len(), b_enc.len());
    assert_eq!(x.len() % d, 0, "encode: rows must be {d} wide");
    assert_eq!(w_enc.len(), n * d, "encode: W_enc must be {n}×{d}");
    let rows = x.len() / d;
    out.xc.clear();
    out.xc.extend(
        x.chunks_exact(d)
            .flat_map(|r| r.iter().zip(b_pre).map(|(a, b)| a - b)),
    );
    out.z.clear();
    for _ in 0..rows {
        out.z.extend_from_slice(b_enc);
    }
    super::sgemm_nt(rows, n, d, &out.xc, w_enc, &mut out.z, true);
}
