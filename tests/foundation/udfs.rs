//! UDF semantics that the fixtures do not pin down: NULLs, zero norms, effective counts.

use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use saerl::sql::blocking::run_sql;

use crate::common::*;

fn one_f64(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Option<f64> {
    let b = run_sql(ctx, sql).unwrap_or_else(|e| panic!("{sql}: {e:#}"));
    let c = arrow::compute::cast(b[0].column(0), &arrow::datatypes::DataType::Float64).unwrap();
    let a = c.as_primitive::<Float64Type>();
    a.is_valid(0).then(|| a.value(0))
}

#[test]
fn decoder_cosine_and_effective_count_semantics() {
    let (_dir, lake) = imported_lake();
    let ctx = session(&lake);
    assert_close(
        "cos",
        one_f64(&ctx, "SELECT decoder_cosine([1.0, 0.0], [1.0, 1.0])").unwrap(),
        0.5f64.sqrt(),
        1e-12,
    );
    assert_eq!(
        one_f64(&ctx, "SELECT decoder_cosine([0.0, 0.0], [1.0, 1.0])"),
        None,
        "zero norm gives NULL"
    );
    assert_eq!(
        one_f64(&ctx, "SELECT decoder_cosine(NULL, [1.0, 1.0])"),
        None,
        "NULL gives NULL"
    );
    // A feature's decoder column against itself, through the FixedSizeList path.
    let c = one_f64(
        &ctx,
        "SELECT min(decoder_cosine(w_dec, w_dec)) FROM features",
    )
    .unwrap();
    assert_close("self cosine", c, 1.0, 1e-6);
    let err = run_sql(&ctx, "SELECT decoder_cosine([1.0, 2.0], [1.0, 2.0, 3.0])").unwrap_err();
    assert!(format!("{err:#}").contains("different lengths"), "{err:#}");

    let uniform = one_f64(
        &ctx,
        "SELECT effective_count(w) FROM (VALUES (0.25), (0.25), (0.25), (0.25), (0.0)) t(w)",
    )
    .unwrap();
    assert_close("uniform over 4 (zero dropped)", uniform, 4.0, 1e-12);
    let one_hot = one_f64(
        &ctx,
        "SELECT effective_count(w) FROM (VALUES (0.0), (3.0), (0.0)) t(w)",
    )
    .unwrap();
    assert_close("one-hot", one_hot, 1.0, 1e-12);
    // exp(H) of an uneven distribution, from first principles.
    let p = [0.5f64, 0.3, 0.2];
    let want = (-p.iter().map(|x| x * x.ln()).sum::<f64>()).exp();
    let got = one_f64(
        &ctx,
        "SELECT effective_count(w) FROM (VALUES (5.0), (3.0), (2.0)) t(w)",
    )
    .unwrap();
    assert_close("exp(H)", got, want, 1e-12);
    // Grouped, so partial states are merged.
    let n = one_f64(&ctx, "SELECT max(e) FROM (SELECT layer, effective_count(b_enc * b_enc + 1) AS e FROM features GROUP BY layer)").unwrap();
    assert!(n > 1.0);
    let err = run_sql(
        &ctx,
        "SELECT effective_count(w) FROM (VALUES (1.0), (-1.0)) t(w)",
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("≥ 0"), "{err:#}");
}
