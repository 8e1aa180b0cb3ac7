//! `topk_encode(x, chain, stage, layer [, k])`: encodes a vector with one SAE of the lake.
//! The SAE lookup is abstracted by `SaeSource` so this crate does not know the lake layout;
//! the source caches SAEs per session.

use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float32Array, Int32Array, ListArray, StructArray};
use arrow::buffer::OffsetBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Int32Type};
use datafusion::common::{exec_err, plan_err, DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::float_lists::{check_float_list, FloatLists};

/// Which SAE to encode with; `k` may be omitted when the (chain, stage, layer) has one SAE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SaeKey {
    pub chain: String,
    pub stage: String,
    pub layer: i32,
    pub k: Option<i32>,
}

/// An SAE's encoder as `topk_encode` needs it.
pub trait Encoder: Send + Sync {
    fn d_model(&self) -> usize;
    /// The top-k latents of `x`, largest first, as (feature, value); an error (a device that
    /// failed, say) ends the statement with its message.
    fn encode(&self, x: &[f32]) -> std::result::Result<Vec<(u32, f32)>, String>;
    /// `encode` of each row of `x` (row-major, d_model wide); implementations may batch it.
    fn encode_rows(&self, x: &[f32]) -> std::result::Result<Vec<Vec<(u32, f32)>>, String> {
        x.chunks(self.d_model()).map(|r| self.encode(r)).collect()
    }
}

/// Resolves SAE keys to encoders (backed by the lake in the binary).
pub trait SaeSource: Send + Sync + Debug {
    fn encoder(&self, key: &SaeKey) -> std::result::Result<Arc<dyn Encoder>, String>;
}

#[derive(Debug)]
pub struct TopkEncode {
    signature: Signature,
    saes: Arc<dyn SaeSource>,
}

impl PartialEq for TopkEncode {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.saes, &other.saes)
    }
}
impl Eq for TopkEncode {}
impl Hash for TopkEncode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        "topk_encode".hash(state)
    }
}

impl TopkEncode {
    pub fn new(saes: Arc<dyn SaeSource>) -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
            saes,
        }
    }

    fn item_fields() -> Fields {
        Fields::from(vec![
            Field::new("feature", DataType::Int32, false),
            Field::new("value", DataType::Float32, false),
        ])
    }

    /// The output list's item: a nullable (feature, value) struct.
    fn list_item() -> FieldRef {
        Arc::new(Field::new(
            "item",
            DataType::Struct(Self::item_fields()),
            true,
        ))
    }

    /// One list of (feature, value) structs per row; a row not encoded is NULL.
    fn latents_array(encoded: &[Option<Vec<(u32, f32)>>]) -> ListArray {
        let mut offsets = vec![0i32];
        let (mut features, mut values) = (Vec::new(), Vec::new());
        let mut nulls = Vec::with_capacity(encoded.len());
        for lat in encoded {
            if let Some(lat) = lat {
                for &(f, v) in lat {
                    features.push(f as i32);
                    values.push(v);
                }
            }
            nulls.push(lat.is_some());
            offsets.push(features.len() as i32);
        }
        let items = StructArray::new(
            Self::item_fields(),
            vec![
                Arc::new(Int32Array::from(features)) as ArrayRef,
                Arc::new(Float32Array::from(values)) as ArrayRef,
            ],
            None,
        );
        ListArray::new(
            Self::list_item(),
            OffsetBuffer::new(offsets.into()),
            Arc::new(items),
            Some(nulls.into()),
        )
    }
}

const USAGE: &str = "topk_encode(x float list, chain string, stage string, layer int [, k int])";

impl ScalarUDFImpl for TopkEncode {
    fn name(&self) -> &str {
        "topk_encode"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        if !(4..=5).contains(&args.len()) {
            return plan_err!("{USAGE}: expected 4 or 5 arguments, got {}", args.len());
        }
        check_float_list("topk_encode", "x", &args[0])?;
        let stringy = |t: &DataType| {
            matches!(
                t,
                DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Dictionary(_, _)
            )
        };
        for (i, name) in [(1, "chain"), (2, "stage")] {
            if !stringy(&args[i]) {
                return plan_err!("{USAGE}: `{name}` must be a string, got {}", args[i]);
            }
        }
        for (i, t) in args.iter().enumerate().skip(3) {
            if !t.is_integer() {
                let name = if i == 3 { "layer" } else { "k" };
                return plan_err!("{USAGE}: `{name}` must be an integer, got {t}");
            }
        }
        let mut out = vec![args[0].clone(), DataType::Utf8, DataType::Utf8];
        out.extend(std::iter::repeat_n(DataType::Int32, args.len() - 3));
        Ok(out)
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Self::list_item()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let x = FloatLists::new("topk_encode", &arrays[0])?;
        let chain = cast(&arrays[1], &DataType::Utf8)?;
        let stage = cast(&arrays[2], &DataType::Utf8)?;
        let (chain, stage) = (chain.as_string::<i32>(), stage.as_string::<i32>());
        let layer = arrays[3].as_primitive::<Int32Type>();
        let k = arrays.get(4).map(|a| a.as_primitive::<Int32Type>());

        // Rows are encoded a run of equal keys at a time (consecutive rows almost always name
        // the same SAE), so an encoder can batch them.
        let mut encoded: Vec<Option<Vec<(u32, f32)>>> = vec![None; args.number_rows];
        let (mut run, mut buf, mut row_buf) = (Vec::new(), Vec::new(), Vec::new());
        let mut current: Option<(SaeKey, Arc<dyn Encoder>)> = None;
        let flush = |enc: &Option<(SaeKey, Arc<dyn Encoder>)>,
                     run: &mut Vec<usize>,
                     buf: &mut Vec<f32>,
                     encoded: &mut Vec<Option<Vec<(u32, f32)>>>|
         -> Result<()> {
            if let Some((_, enc)) = enc {
                let rows = enc
                    .encode_rows(buf)
                    .map_err(|e| DataFusionError::Execution(format!("topk_encode: {e}")))?;
                for (&i, lat) in run.iter().zip(rows) {
                    encoded[i] = Some(lat);
                }
            }
            run.clear();
            buf.clear();
            Ok(())
        };
        for i in 0..args.number_rows {
            let xi = x.row(i);
            let key_null = chain.is_null(i) || stage.is_null(i) || layer.is_null(i);
            let (Some(xi), false) = (xi, key_null) else {
                continue;
            };
            let key = SaeKey {
                chain: chain.value(i).to_string(),
                stage: stage.value(i).to_string(),
                layer: layer.value(i),
                k: k.and_then(|k| (!k.is_null(i)).then(|| k.value(i))),
            };
            if current.as_ref().is_none_or(|(c, _)| *c != key) {
                flush(&current, &mut run, &mut buf, &mut encoded)?;
                let enc = self
                    .saes
                    .encoder(&key)
                    .map_err(|e| DataFusionError::Execution(format!("topk_encode: {e}")))?;
                current = Some((key, enc));
            }
            let enc = &current.as_ref().unwrap().1;
            if xi.len() != enc.d_model() {
                return exec_err!(
                    "topk_encode: x has {} values but the SAE expects d_model = {} (row {i})",
                    xi.len(),
                    enc.d_model()
                );
            }
            xi.to_f32(&mut row_buf);
            buf.extend_from_slice(&row_buf);
            run.push(i);
        }
        flush(&current, &mut run, &mut buf, &mut encoded)?;
        Ok(ColumnarValue::Array(Arc::new(Self::latents_array(
            &encoded,
        ))))
    }
}

#[cfg(test)]
mod tests {
    //! The function is called as DataFusion's executor calls it, after `coerce_types`: no
    //! session, so this harness compiles none of DataFusion's async query path (SQL-level
    //! use of `topk_encode` is tested by saerl's foundation tests).
    use std::sync::atomic::{AtomicUsize, Ordering};

    use arrow::array::StringArray;
    use arrow::datatypes::Float32Type;
    use datafusion::config::ConfigOptions;

    use super::*;

    /// The two largest entries of a row of width 3, largest first.
    struct TopTwo;

    impl Encoder for TopTwo {
        fn d_model(&self) -> usize {
            3
        }
        fn encode(&self, x: &[f32]) -> std::result::Result<Vec<(u32, f32)>, String> {
            let mut lat: Vec<(u32, f32)> =
                x.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
            lat.sort_by(|a, b| b.1.total_cmp(&a.1));
            lat.truncate(2);
            Ok(lat)
        }
    }

    /// Counts lookups; chain `missing` has no SAE.
    #[derive(Debug, Default)]
    struct Source {
        lookups: AtomicUsize,
    }

    impl SaeSource for Source {
        fn encoder(&self, key: &SaeKey) -> std::result::Result<Arc<dyn Encoder>, String> {
            self.lookups.fetch_add(1, Ordering::Relaxed);
            match key.chain.as_str() {
                "missing" => Err(format!("no SAE for chain {}", key.chain)),
                _ => Ok(Arc::new(TopTwo)),
            }
        }
    }

    type Latents = Vec<Option<Vec<(i32, f32)>>>;

    /// `topk_encode(x, chain, 's', 0, 6)` over the rows, and the number of SAE lookups.
    fn encode(rows: Vec<Option<Vec<f32>>>, chains: Vec<&str>) -> (Result<Latents>, usize) {
        let source = Arc::new(Source::default());
        let f = TopkEncode::new(source.clone());
        let n = rows.len();
        let x = ListArray::from_iter_primitive::<Float32Type, _, _>(
            rows.into_iter().map(|r| r.map(|v| v.into_iter().map(Some))),
        );
        let arrays: [ArrayRef; 5] = [
            Arc::new(x),
            Arc::new(StringArray::from(chains)),
            Arc::new(StringArray::from(vec!["s"; n])),
            Arc::new(Int32Array::from(vec![0; n])),
            Arc::new(Int32Array::from(vec![6; n])),
        ];
        let types: Vec<DataType> = arrays.iter().map(|a| a.data_type().clone()).collect();
        assert_eq!(f.coerce_types(&types).unwrap(), types, "already coerced");
        let args = ScalarFunctionArgs {
            arg_fields: arrays
                .iter()
                .map(|a| Arc::new(Field::new("a", a.data_type().clone(), true)))
                .collect(),
            args: arrays.into_iter().map(ColumnarValue::Array).collect(),
            number_rows: n,
            return_field: Arc::new(Field::new("z", f.return_type(&types).unwrap(), true)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        let out = f.invoke_with_args(args).and_then(|out| {
            let out = out.into_array(n)?;
            let lists = out.as_list::<i32>();
            Ok((0..lists.len())
                .map(|i| {
                    (!lists.is_null(i)).then(|| {
                        let items = lists.value(i);
                        let items = items.as_struct();
                        let (f, v) = (
                            items.column(0).as_primitive::<Int32Type>(),
                            items.column(1).as_primitive::<Float32Type>(),
                        );
                        (0..items.len()).map(|j| (f.value(j), v.value(j))).collect()
                    })
                })
                .collect())
        });
        (out, source.lookups.load(Ordering::Relaxed))
    }

    #[test]
    fn rows_are_encoded_per_run_of_one_sae_and_null_rows_stay_null() {
        let rows = vec![
            Some(vec![1.0, 3.0, 2.0]),
            None,
            Some(vec![0.5, -1.0, 4.0]),
            Some(vec![-3.0, -2.0, -1.0]),
        ];
        let (out, lookups) = encode(rows, vec!["a", "a", "a", "b"]);
        assert_eq!(
            out.unwrap(),
            vec![
                Some(vec![(1, 3.0), (2, 2.0)]),
                None,
                Some(vec![(2, 4.0), (0, 0.5)]),
                Some(vec![(2, -1.0), (1, -2.0)]),
            ]
        );
        assert_eq!(lookups, 2, "one lookup per run of equal keys");
    }

    #[test]
    fn a_wrong_width_or_a_missing_sae_fails_the_statement_with_its_reason() {
        let (out, _) = encode(vec![Some(vec![1.0, 2.0])], vec!["a"]);
        let err = out.unwrap_err().to_string();
        assert!(
            err.contains("x has 2 values but the SAE expects d_model = 3 (row 0)"),
            "{err}"
        );
        let (out, _) = encode(vec![Some(vec![1.0, 2.0, 3.0])], vec!["missing"]);
        let err = out.unwrap_err().to_string();
        assert!(
            err.contains("topk_encode: no SAE for chain missing"),
            "{err}"
        );
    }

    #[test]
    fn arguments_of_the_wrong_type_are_refused_when_planning() {
        let f = TopkEncode::new(Arc::new(Source::default()));
        let floats = DataType::new_list(DataType::Float64, true);
        let (utf8, int) = (DataType::Utf8, DataType::Int64);
        for (types, want) in [
            (
                vec![floats.clone(), int.clone(), utf8.clone(), int.clone()],
                "`chain` must be a string",
            ),
            (
                vec![utf8.clone(), utf8.clone(), utf8.clone(), int.clone()],
                "argument `x` must be a list",
            ),
            (
                vec![floats.clone(), utf8.clone(), utf8.clone()],
                "expected 4 or 5 arguments",
            ),
            (
                vec![
                    floats.clone(),
                    utf8.clone(),
                    utf8.clone(),
                    int,
                    utf8.clone(),
                ],
                "`k` must be an integer",
            ),
        ] {
            let err = f.coerce_types(&types).unwrap_err().to_string();
            assert!(err.contains(want), "{types:?}: {err}");
        }
        let coerced = f
            .coerce_types(&[floats.clone(), DataType::Utf8View, utf8, DataType::Int64])
            .unwrap();
        assert_eq!(
            coerced,
            [floats, DataType::Utf8, DataType::Utf8, DataType::Int32]
        );
    }
}
