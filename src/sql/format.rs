//! Result printing: aligned table, CSV or JSON (one array of objects).

use std::io::Write;
use std::sync::Arc;

use anyhow::Result;
use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

impl std::str::FromStr for Format {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            _ => anyhow::bail!("unknown format {s:?}: use table, csv or json"),
        }
    }
}

/// Significant digits of floats in table output unless asked otherwise (CSV and JSON keep
/// full precision).
pub const DEFAULT_PRECISION: usize = 6;

/// Prints results in `format`, table floats at `DEFAULT_PRECISION` significant digits.
pub fn print_batches(batches: &[RecordBatch], format: Format, out: &mut dyn Write) -> Result<()> {
    print_batches_at(batches, format, DEFAULT_PRECISION, out)
}

/// Prints results in `format`; in a table, floats show `precision` significant digits.
pub fn print_batches_at(
    batches: &[RecordBatch],
    format: Format,
    precision: usize,
    out: &mut dyn Write,
) -> Result<()> {
    match format {
        Format::Table => {
            if batches.iter().all(|b| b.num_rows() == 0) {
                let cols = column_names(batches);
                writeln!(
                    out,
                    "(0 rows{})",
                    if cols.is_empty() {
                        String::new()
                    } else {
                        format!("; columns: {}", cols.join(", "))
                    }
                )?;
            } else {
                let rounded = batches
                    .iter()
                    .map(|b| round_floats(b, precision))
                    .collect::<Result<Vec<_>>>()?;
                writeln!(
                    out,
                    "{}",
                    arrow::util::pretty::pretty_format_batches(&rounded)?
                )?;
            }
        }
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            for b in batches {
                w.write(&flatten_nested(b)?)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::ArrayWriter::new(&mut *out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
            writeln!(out)?;
        }
    }
    Ok(())
}

/// The column names of a result (none for a result without batches).
pub fn column_names(batches: &[RecordBatch]) -> Vec<String> {
    batches
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default()
}

/// A table's float columns as text with `precision` significant digits (as a person reads
/// them; the other formats keep every digit).
fn round_floats(b: &RecordBatch, precision: usize) -> Result<RecordBatch> {
    use arrow::array::AsArray;
    use arrow::datatypes::{Float32Type, Float64Type};
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (f, c) in b.schema().fields().iter().zip(b.columns()) {
        let text: Option<StringArray> = match f.data_type() {
            DataType::Float64 => Some(
                c.as_primitive::<Float64Type>()
                    .iter()
                    .map(|v| v.map(|v| significant(v, precision)))
                    .collect(),
            ),
            DataType::Float32 => Some(
                c.as_primitive::<Float32Type>()
                    .iter()
                    .map(|v| v.map(|v| significant(v as f64, precision)))
                    .collect(),
            ),
            _ => None,
        };
        match text {
            Some(t) => {
                fields.push(Field::new(f.name(), DataType::Utf8, true));
                cols.push(Arc::new(t));
            }
            None => {
                fields.push(f.as_ref().clone());
                cols.push(c.clone());
            }
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// `v` with `digits` significant digits, like C's `%g`: fixed notation for moderate
/// magnitudes, scientific for very small or large ones, trailing zeros dropped.
pub fn significant(v: f64, digits: usize) -> String {
    let digits = digits.max(1);
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { "0".into() } else { v.to_string() };
    }
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    // The exponent after rounding to `digits` (999999.7 is 1e6 at six digits).
    let sci = format!("{:.*e}", digits - 1, v);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if exp < -5 || exp >= digits as i32 {
        format!("{}e{exp}", trim(mantissa))
    } else {
        let decimals = (digits as i32 - 1 - exp).max(0) as usize;
        trim(&format!("{v:.decimals$}"))
    }
}

/// CSV has no nested types: render lists and structs as their display text.
fn flatten_nested(b: &RecordBatch) -> Result<RecordBatch> {
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (f, c) in b.schema().fields().iter().zip(b.columns()) {
        if f.data_type().is_nested() {
            let fmt = ArrayFormatter::try_new(c.as_ref(), &FormatOptions::default())?;
            let text: StringArray = (0..c.len())
                .map(|i| c.is_valid(i).then(|| fmt.value(i).to_string()))
                .collect();
            fields.push(Field::new(f.name(), DataType::Utf8, true));
            cols.push(Arc::new(text));
        } else {
            fields.push(f.as_ref().clone());
            cols.push(c.clone());
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// The first line where two CSV outputs of one statement disagree, or `None`. Cells agree when
/// their text is equal or they are floats equal to 1e-12 relative: a distributed aggregate adds
/// its partial sums in another order, which moves the last bits.
pub fn first_csv_difference(a: &str, b: &str) -> Option<usize> {
    let cell = |x: &str, y: &str| {
        x == y
            || match (x.parse::<f64>(), y.parse::<f64>()) {
                (Ok(x), Ok(y)) => (x - y).abs() <= 1e-12 * x.abs().max(y.abs()).max(1e-300),
                _ => false,
            }
    };
    let row = |x: &str, y: &str| {
        let (xs, ys): (Vec<_>, Vec<_>) = (x.split(',').collect(), y.split(',').collect());
        xs.len() == ys.len() && xs.iter().zip(&ys).all(|(p, q)| cell(p, q))
    };
    let (a, b): (Vec<_>, Vec<_>) = (a.lines().collect(), b.lines().collect());
    (0..a.len().max(b.len())).find(|&i| match (a.get(i), b.get(i)) {
        (Some(x), Some(y)) => !row(x, y),
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::{first_csv_difference, significant};

    #[test]
    fn floats_show_significant_digits() {
        assert_eq!(significant(0.123456789, 6), "0.123457");
        assert_eq!(significant(1234.56789, 6), "1234.57");
        assert_eq!(significant(1e-7, 6), "1e-7");
        assert_eq!(significant(-2.5e9, 3), "-2.5e9");
        assert_eq!(significant(3.0, 6), "3");
        assert_eq!(significant(0.0, 6), "0");
        assert_eq!(significant(999999.7, 6), "1e6");
    }

    #[test]
    fn csv_outputs_agree_up_to_summation_order_and_no_further() {
        let a = "name,x\nq,0.30000000000000004\nr,1\n";
        assert_eq!(first_csv_difference(a, "name,x\nq,0.3\nr,1\n"), None);
        assert_eq!(first_csv_difference(a, "name,x\nq,0.3001\nr,1\n"), Some(1));
        assert_eq!(first_csv_difference(a, "name,x\nq,0.3\n"), Some(2));
        assert_eq!(first_csv_difference(a, "name,x\nq,0.3,1\nr,1\n"), Some(1));
        assert_eq!(first_csv_difference("a\nNaN\n", "a\nNaN\n"), None);
    }
}
