//! `decoder_cosine(a, b)`: cosine similarity of two float vectors.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Builder};
use arrow::datatypes::DataType;
use datafusion::common::{exec_err, plan_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::float_lists::{check_float_list, FloatLists, FloatSlice};

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DecoderCosine {
    signature: Signature,
}

impl DecoderCosine {
    pub fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl Default for DecoderCosine {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for DecoderCosine {
    fn name(&self) -> &str {
        "decoder_cosine"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        if args.len() != 2 {
            return plan_err!(
                "decoder_cosine(a, b) takes 2 float-list arguments, got {}",
                args.len()
            );
        }
        check_float_list("decoder_cosine", "a", &args[0])?;
        check_float_list("decoder_cosine", "b", &args[1])?;
        Ok(args.to_vec())
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        if arrays.iter().any(|a| a.data_type().is_null()) {
            return Ok(ColumnarValue::Scalar(
                datafusion::scalar::ScalarValue::Float64(None),
            ));
        }
        let (a, b) = (
            FloatLists::new("decoder_cosine", &arrays[0])?,
            FloatLists::new("decoder_cosine", &arrays[1])?,
        );
        let mut out = Float64Builder::with_capacity(n);
        for i in 0..n {
            match (a.row(i), b.row(i)) {
                (Some(x), Some(y)) => {
                    if x.len() != y.len() {
                        return exec_err!(
                            "decoder_cosine: vectors of different lengths ({} and {}) in row {i}",
                            x.len(),
                            y.len()
                        );
                    }
                    out.append_option(cosine(x, y));
                }
                _ => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}

/// Cosine of two equally long vectors, accumulated in f64; None when either norm is zero.
pub fn cosine(a: FloatSlice, b: FloatSlice) -> Option<f64> {
    let (dot, na, nb) = match (a, b) {
        (FloatSlice::F32(x), FloatSlice::F32(y)) => dots(x, y),
        (FloatSlice::F64(x), FloatSlice::F64(y)) => dots(x, y),
        (FloatSlice::F32(x), FloatSlice::F64(y)) => dots(x, y),
        (FloatSlice::F64(x), FloatSlice::F32(y)) => dots(x, y),
    };
    if na == 0.0 || nb == 0.0 {
        None
    } else {
        Some(dot / (na.sqrt() * nb.sqrt()))
    }
}

/// (a·b, a·a, b·b) with eight independent accumulators so the loop vectorises.
fn dots<A: Copy + Into<f64>, B: Copy + Into<f64>>(a: &[A], b: &[B]) -> (f64, f64, f64) {
    const L: usize = 8;
    let (mut d, mut sa, mut sb) = ([0f64; L], [0f64; L], [0f64; L]);
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..L {
            let (x, y): (f64, f64) = (x[j].into(), y[j].into());
            d[j] += x * y;
            sa[j] += x * x;
            sb[j] += y * y;
        }
    }
    for (x, y) in ra.iter().zip(rb) {
        let (x, y): (f64, f64) = ((*x).into(), (*y).into());
        d[0] += x * y;
        sa[0] += x * x;
        sb[0] += y * y;
    }
    (d.iter().sum(), sa.iter().sum(), sb.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_of_mixed_widths_and_lengths_past_the_unrolled_loop() {
        // 11 elements: one unrolled block of 8 and a remainder of 3.
        let a: Vec<f32> = (1..=11).map(|i| i as f32).collect();
        let b: Vec<f64> = (1..=11).map(|i| -2.0 * i as f64).collect();
        let c = cosine(FloatSlice::F32(&a), FloatSlice::F64(&b)).unwrap();
        assert!((c + 1.0).abs() < 1e-12, "{c}");
        let e1 = [1.0f64, 0.0, 0.0];
        let e2 = [0.0f32, 3.0, 4.0];
        assert_eq!(
            cosine(FloatSlice::F64(&e1), FloatSlice::F32(&e2)),
            Some(0.0)
        );
        let v = [3.0f32, 4.0];
        let w = [4.0f32, 3.0];
        assert!((cosine(FloatSlice::F32(&v), FloatSlice::F32(&w)).unwrap() - 0.96).abs() < 1e-7);
        assert_eq!(
            cosine(FloatSlice::F32(&[0.0; 4]), FloatSlice::F32(&[1.0; 4])),
            None
        );
    }
}
