//! `effective_count(w)`: exp of the Shannon entropy (nats) of w / Σw over a group.
//!
//! With S = Σw and T = Σ w·ln w, H = ln S − T/S, so the state (S, T) merges by addition and
//! the aggregate streams. Zero weights contribute nothing (0·ln 0 = 0), i.e. they are dropped.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct EffectiveCount {
    signature: Signature,
}

impl EffectiveCount {
    pub fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl Default for EffectiveCount {
    fn default() -> Self {
        Self::new()
    }
}

impl AggregateUDFImpl for EffectiveCount {
    fn name(&self) -> &str {
        "effective_count"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        match args {
            [t] if t.is_numeric() || t.is_null() => Ok(vec![DataType::Float64]),
            [t] => {
                plan_err!("effective_count(w) expects one numeric argument (weights ≥ 0), got {t}")
            }
            _ => plan_err!(
                "effective_count(w) takes exactly one numeric argument, got {}",
                args.len()
            ),
        }
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(EntropyAcc::default()))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format!("{}_sum", args.name),
                DataType::Float64,
                true,
            )),
            Arc::new(Field::new(
                format!("{}_wlogw", args.name),
                DataType::Float64,
                true,
            )),
        ])
    }
}

#[derive(Debug, Default)]
struct EntropyAcc {
    sum: f64,
    wlogw: f64,
}

impl EntropyAcc {
    fn add(&mut self, w: f64) -> Result<()> {
        if w.is_nan() || w < 0.0 {
            return exec_err!("effective_count: weights must be finite and ≥ 0, got {w}");
        }
        if w > 0.0 {
            self.sum += w;
            self.wlogw += w * w.ln();
        }
        Ok(())
    }
}

impl Accumulator for EntropyAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        for w in values[0].as_primitive::<Float64Type>().iter().flatten() {
            self.add(w)?;
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        if self.sum <= 0.0 {
            return Ok(ScalarValue::Float64(None));
        }
        let h = self.sum.ln() - self.wlogw / self.sum;
        Ok(ScalarValue::Float64(Some(h.exp())))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            ScalarValue::Float64(Some(self.sum)),
            ScalarValue::Float64(Some(self.wlogw)),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (s, t) = (
            states[0].as_primitive::<Float64Type>(),
            states[1].as_primitive::<Float64Type>(),
        );
        for (s, t) in s.iter().zip(t.iter()) {
            self.sum += s.unwrap_or(0.0);
            self.wlogw += t.unwrap_or(0.0);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Float64Array;
    use std::sync::Arc;

    fn count(acc: &mut EntropyAcc) -> Option<f64> {
        match acc.evaluate().unwrap() {
            ScalarValue::Float64(v) => v,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn uniform_weights_count_themselves_and_zeros_do_not_count() {
        let mut acc = EntropyAcc::default();
        let w: ArrayRef = Arc::new(Float64Array::from(vec![
            Some(0.2),
            Some(0.2),
            None,
            Some(0.2),
            Some(0.0),
        ]));
        acc.update_batch(&[w]).unwrap();
        assert!((count(&mut acc).unwrap() - 3.0).abs() < 1e-12);
        // exp(H) of (0.5, 0.25, 0.25): H = 1.5 ln 2.
        let mut acc = EntropyAcc::default();
        acc.update_batch(&[Arc::new(Float64Array::from(vec![2.0, 1.0, 1.0])) as ArrayRef])
            .unwrap();
        assert!((count(&mut acc).unwrap() - (1.5 * 2f64.ln()).exp()).abs() < 1e-12);
        assert_eq!(count(&mut EntropyAcc::default()), None);
    }

    #[test]
    fn merged_partial_states_equal_one_pass_and_negative_weights_fail() {
        let all = [0.1, 3.0, 0.7, 2.2, 0.0, 5.5];
        let mut one = EntropyAcc::default();
        one.update_batch(&[Arc::new(Float64Array::from(all.to_vec())) as ArrayRef])
            .unwrap();
        let mut merged = EntropyAcc::default();
        for part in all.chunks(2) {
            let mut p = EntropyAcc::default();
            p.update_batch(&[Arc::new(Float64Array::from(part.to_vec())) as ArrayRef])
                .unwrap();
            let state: Vec<ArrayRef> = p
                .state()
                .unwrap()
                .into_iter()
                .map(|s| s.to_array().unwrap())
                .collect();
            merged.merge_batch(&state).unwrap();
        }
        assert!((count(&mut one).unwrap() - count(&mut merged).unwrap()).abs() < 1e-12);
        let bad: ArrayRef = Arc::new(Float64Array::from(vec![1.0, -0.5]));
        assert!(EntropyAcc::default().update_batch(&[bad]).is_err());
    }
}
