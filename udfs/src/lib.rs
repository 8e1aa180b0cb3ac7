//! DataFusion functions for SAE analytics. Each function is one struct implementing
//! `ScalarUDFImpl` / `AggregateUDFImpl`; kernels work on whole Arrow arrays.
//! `register_all` adds every function to a session.

mod cosine;
mod effective_count;
mod float_lists;
mod gsm8k;
mod topk_encode;

use std::sync::Arc;

use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::SessionContext;

pub use cosine::{cosine, DecoderCosine};
pub use effective_count::EffectiveCount;
pub use float_lists::{FloatLists, FloatSlice};
pub use gsm8k::{gold_answer, score_flexible, score_strict, Gsm8kScore, Gsm8kScorer};
pub use topk_encode::{Encoder, SaeKey, SaeSource, TopkEncode};

/// Registers every saerl function. `saes` resolves `topk_encode`'s SAE arguments
/// (the binary backs it with the lake; tests may back it with anything).
pub fn register_all(ctx: &SessionContext, saes: Arc<dyn SaeSource>) {
    let scalars = [
        ScalarUDF::from(DecoderCosine::new()),
        ScalarUDF::from(TopkEncode::new(saes)),
        ScalarUDF::from(Gsm8kScore::new(Gsm8kScorer::Flexible)),
        ScalarUDF::from(Gsm8kScore::new(Gsm8kScorer::Strict)),
    ];
    for f in scalars {
        ctx.register_udf(f);
    }
    ctx.register_udaf(AggregateUDF::from(EffectiveCount::new()));
    debug_assert!(ctx.udf("decoder_cosine").is_ok());
}
