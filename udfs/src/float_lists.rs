//! Uniform read access to float vectors stored as any Arrow list type
//! (List, LargeList, FixedSizeList) of Float32 or Float64, without copying.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::common::{exec_err, plan_err, Result};

/// One row's values, borrowed from the Arrow buffer.
#[derive(Clone, Copy)]
pub enum FloatSlice<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl FloatSlice<'_> {
    pub fn len(&self) -> usize {
        match self {
            FloatSlice::F32(v) => v.len(),
            FloatSlice::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the row into `out` as f32 (the SAE's working precision).
    pub fn to_f32(self, out: &mut Vec<f32>) {
        out.clear();
        match self {
            FloatSlice::F32(v) => out.extend_from_slice(v),
            FloatSlice::F64(v) => out.extend(v.iter().map(|&x| x as f32)),
        }
    }
}

/// A column of float vectors.
pub struct FloatLists<'a> {
    array: &'a dyn Array,
    values: FloatSlice<'a>,
    offsets: Offsets<'a>,
}

enum Offsets<'a> {
    I32(&'a [i32]),
    I64(&'a [i64]),
    Fixed(usize),
}

/// True when `t` is a list type whose items are Float32 or Float64.
pub fn is_float_list(t: &DataType) -> bool {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            matches!(f.data_type(), DataType::Float32 | DataType::Float64)
        }
        _ => false,
    }
}

/// Planning-time check shared by the functions that take vectors.
pub fn check_float_list(func: &str, arg: &str, t: &DataType) -> Result<()> {
    if is_float_list(t) || t.is_null() {
        Ok(())
    } else {
        plan_err!("{func}: argument `{arg}` must be a list of Float32 or Float64 (List, LargeList or FixedSizeList), got {t}")
    }
}

impl<'a> FloatLists<'a> {
    pub fn new(func: &str, array: &'a ArrayRef) -> Result<Self> {
        let (values, offsets) = match array.data_type() {
            DataType::List(_) => {
                let l = array.as_list::<i32>();
                (l.values(), Offsets::I32(l.value_offsets()))
            }
            DataType::LargeList(_) => {
                let l = array.as_list::<i64>();
                (l.values(), Offsets::I64(l.value_offsets()))
            }
            DataType::FixedSizeList(_, n) => {
                let l = array.as_fixed_size_list();
                (l.values(), Offsets::Fixed(*n as usize))
            }
            other => return exec_err!("{func}: expected a float list, got {other}"),
        };
        let values = match values.data_type() {
            DataType::Float32 => FloatSlice::F32(values.as_primitive::<Float32Type>().values()),
            DataType::Float64 => FloatSlice::F64(values.as_primitive::<Float64Type>().values()),
            other => {
                return exec_err!("{func}: list items must be Float32 or Float64, got {other}")
            }
        };
        Ok(Self {
            array: array.as_ref(),
            values,
            offsets,
        })
    }

    /// The vector of row `i`, or None when the row is NULL.
    pub fn row(&self, i: usize) -> Option<FloatSlice<'a>> {
        if self.array.is_null(i) {
            return None;
        }
        let (start, end) = match self.offsets {
            Offsets::I32(o) => (o[i] as usize, o[i + 1] as usize),
            Offsets::I64(o) => (o[i] as usize, o[i + 1] as usize),
            // FixedSizeList slices its values with itself, so row i starts at i * n.
            Offsets::Fixed(n) => (i * n, (i + 1) * n),
        };
        Some(match self.values {
            FloatSlice::F32(v) => FloatSlice::F32(&v[start..end]),
            FloatSlice::F64(v) => FloatSlice::F64(&v[start..end]),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{FixedSizeListArray, LargeListArray, ListArray};
    use arrow::datatypes::{Float32Type, Float64Type, Int32Type};

    use super::*;

    fn read(a: &ArrayRef) -> Vec<Option<Vec<f32>>> {
        let lists = FloatLists::new("test", a).unwrap();
        (0..a.len())
            .map(|i| {
                lists.row(i).map(|r| {
                    let mut v = Vec::new();
                    r.to_f32(&mut v);
                    v
                })
            })
            .collect()
    }

    #[test]
    fn every_list_type_reads_the_same_rows_sliced_or_not() {
        let rows = [Some([1.0, 2.0]), None, Some([3.0, -4.5]), Some([0.25, 8.0])];
        let f32s = rows.map(|r| r.map(|v| v.map(|x| Some(x as f32))));
        let f64s = rows.map(|r| r.map(|v| v.map(Some)));
        let arrays: [ArrayRef; 3] = [
            Arc::new(ListArray::from_iter_primitive::<Float32Type, _, _>(f32s)),
            Arc::new(LargeListArray::from_iter_primitive::<Float64Type, _, _>(
                f64s,
            )),
            Arc::new(FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(f32s, 2)),
        ];
        let want: Vec<Option<Vec<f32>>> = rows
            .iter()
            .map(|r| r.map(|v| v.iter().map(|&x| x as f32).collect()))
            .collect();
        for a in &arrays {
            assert!(is_float_list(a.data_type()));
            assert_eq!(read(a), want, "{}", a.data_type());
            // A slice starts at its own first row, whatever the list type keeps of its offsets.
            assert_eq!(read(&a.slice(1, 3)), want[1..], "{} sliced", a.data_type());
        }
    }

    #[test]
    fn lists_of_other_types_are_refused_with_the_argument_named() {
        let err = check_float_list("f", "x", &DataType::Utf8)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("f: argument `x` must be a list of Float32"),
            "{err}"
        );
        assert!(check_float_list("f", "x", &DataType::Null).is_ok());
        let ints: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>([Some([
            Some(1),
        ])]));
        assert!(!is_float_list(ints.data_type()));
        let err = FloatLists::new("f", &ints).err().unwrap().to_string();
        assert!(
            err.contains("list items must be Float32 or Float64"),
            "{err}"
        );
    }
}
