//! The study's two GSM8k rewards as scalar functions:
//! `gsm8k_score_strict(response, answer)` is verl's built-in scorer (`#### N` in the last 300
//! characters, exact string match); `gsm8k_score_flexible(response, answer)` takes the last number
//! anywhere in the response and compares numerically. `answer` may be the bare ground truth or a
//! full GSM8k answer ending in `#### N`.

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, Float64Builder};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::common::{plan_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use regex::Regex;

static STRICT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"#### (\-?[0-9\.\,]+)").unwrap());
static NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"-?[0-9][0-9,]*(?:\.[0-9]+)?").unwrap());
/// verl only looks at the tail of a response.
const STRICT_CLIP_CHARS: usize = 300;

/// The ground truth of a GSM8k answer: the text after the last `#### `, commas removed.
pub fn gold_answer(answer: &str) -> String {
    let tail = answer.rsplit_once("#### ").map_or(answer, |(_, t)| t);
    tail.trim().replace(',', "")
}

/// 1.0 when the last `#### N` of the response's last 300 characters equals the ground truth.
pub fn score_strict(response: &str, answer: &str) -> f64 {
    let n = response.chars().count();
    let clipped = match response
        .char_indices()
        .nth(n.saturating_sub(STRICT_CLIP_CHARS))
    {
        Some((at, _)) if n > STRICT_CLIP_CHARS => &response[at..],
        _ => response,
    };
    let Some(m) = STRICT.captures_iter(clipped).last() else {
        return 0.0;
    };
    let pred = m[1].replace([',', '$'], "");
    f64::from(pred == gold_answer(answer))
}

/// 1.0 when the last number in the response is within 1e-4 of the ground truth.
pub fn score_flexible(response: &str, answer: &str) -> f64 {
    let Some(m) = NUMBER.find_iter(response).last() else {
        return 0.0;
    };
    let pred: Option<f64> = m.as_str().replace(',', "").parse().ok();
    let gold: Option<f64> = gold_answer(answer).parse().ok();
    match (pred, gold) {
        (Some(p), Some(g)) => f64::from((p - g).abs() < 1e-4),
        _ => 0.0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gsm8kScorer {
    Strict,
    Flexible,
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Gsm8kScore {
    scorer: Gsm8kScorer,
    signature: Signature,
}

impl Gsm8kScore {
    pub fn new(scorer: Gsm8kScorer) -> Self {
        Self {
            scorer,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Gsm8kScore {
    fn name(&self) -> &str {
        match self.scorer {
            Gsm8kScorer::Strict => "gsm8k_score_strict",
            Gsm8kScorer::Flexible => "gsm8k_score_flexible",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        let texty = |t: &DataType| {
            matches!(
                t,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
            )
        };
        if args.len() != 2 || !args.iter().all(texty) {
            return plan_err!(
                "{}(response, answer) expects two strings, got ({})",
                self.name(),
                args.iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(vec![DataType::Utf8, DataType::Utf8])
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let (r, a) = (
            cast(&arrays[0], &DataType::Utf8)?,
            cast(&arrays[1], &DataType::Utf8)?,
        );
        let (r, a) = (
            r.as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap(),
            a.as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap(),
        );
        let score = match self.scorer {
            Gsm8kScorer::Strict => score_strict,
            Gsm8kScorer::Flexible => score_flexible,
        };
        let mut out = Float64Builder::with_capacity(r.len());
        for i in 0..r.len() {
            if r.is_null(i) || a.is_null(i) {
                out.append_null();
            } else {
                out.append_value(score(r.value(i), a.value(i)));
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\n#### 1,800";

    #[test]
    fn strict_reads_the_last_marked_answer_within_the_tail() {
        assert_eq!(gold_answer(ANSWER), "1800");
        assert_eq!(score_strict("so #### 1,800", ANSWER), 1.0);
        assert_eq!(score_strict("#### 5 then #### 1,800", ANSWER), 1.0);
        assert_eq!(score_strict("#### 1800 then #### 5", ANSWER), 0.0);
        assert_eq!(score_strict("the answer is 1800", ANSWER), 0.0);
        // A marked answer before the last 300 characters is not seen.
        let long = format!("#### 1800{}", "x".repeat(STRICT_CLIP_CHARS));
        assert_eq!(score_strict(&long, ANSWER), 0.0);
    }

    #[test]
    fn flexible_takes_the_last_number_anywhere() {
        assert_eq!(score_flexible("first 7, then 1,800.", ANSWER), 1.0);
        assert_eq!(score_flexible("1800 or maybe 12", ANSWER), 0.0);
        assert_eq!(score_flexible("1800.00001", ANSWER), 1.0);
        assert_eq!(score_flexible("no number", ANSWER), 0.0);
        assert_eq!(score_flexible("-3", "#### -3"), 1.0);
    }
}
