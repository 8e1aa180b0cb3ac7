//! SQL over the lake: session setup, execution, output formats, the REPL and plots.

pub mod best_match;
pub mod blocking;
pub mod drift;
pub mod exec;
pub mod format;
pub mod header;
pub mod matching;
pub mod plot;
pub mod repl;
pub mod rules;
pub mod saved;
pub mod session;

pub use exec::{run_sql, run_sql_with};
pub use format::{first_csv_difference, print_batches, print_batches_at, Format};
pub use session::open_session;

/// saerl's own SQL functions, table functions and providers, with their signatures: what
/// `.help` lists and what error messages are recognised by (a test checks every one is
/// registered in a session, and that a session registers no other).
pub const FUNCTIONS: &[(&str, &str)] = &[
    ("decoder_cosine", "decoder_cosine(a, b): cosine of two float vectors"),
    ("effective_count", "effective_count(w): aggregate, exp of the entropy of w / sum(w)"),
    (
        "topk_encode",
        "topk_encode(x, chain, stage, layer [, k]): an SAE's top-k latents of x",
    ),
    (
        "gsm8k_score_flexible",
        "gsm8k_score_flexible(response, answer): 1 if the last number is the answer",
    ),
    (
        "gsm8k_score_strict",
        "gsm8k_score_strict(response, answer): verl's `#### N` scorer",
    ),
    (
        "best_match",
        "best_match([chain [, layer [, k]]]): table, each feature's best decoder match in the next stage",
    ),
    (
        "match_features",
        "match_features(chain_a, stage_a, chain_b, stage_b, layer [, k]): table, the one-to-one pairing",
    ),
    (
        "feature_drift",
        "feature_drift: table, per-feature decoder and encoder cosine across each transition",
    ),
    (
        "sae_transitions",
        "sae_transitions: table, consecutive SAEs of each chain, layer and k",
    ),
];

/// `bytes` of `pool` reserved for `what`: saerl's own large buffers (SAE weights, cost
/// matrices) count against a server's memory limit as DataFusion's operators' do. Fails with
/// DataFusion's "Resources exhausted" error when the pool has no room.
pub(crate) fn reserve(
    pool: &std::sync::Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
    what: &str,
    bytes: usize,
) -> datafusion::error::Result<datafusion::execution::memory_pool::MemoryReservation> {
    let r = datafusion::execution::memory_pool::MemoryConsumer::new(what).register(pool);
    r.try_grow(bytes)?;
    Ok(r)
}

/// Bytes an SAE's weights take in memory.
pub(crate) fn sae_bytes(s: &crate::sae::Sae) -> usize {
    4 * (s.b_pre.len() + s.w_enc.len() + s.b_enc.len() + s.w_dec.len() + s.b_dec.len())
}

/// Fails, naming what exists and the nearest name, when `chain` (or its `stage`) has no SAE in
/// the lake: a typo in a table function's argument must not read as an empty result.
pub(crate) fn check_sae_names(
    lake: &crate::lake::Lake,
    chain: &str,
    stage: Option<&str>,
) -> anyhow::Result<()> {
    let saes = lake.partitions(crate::lake::Table::Saes)?;
    if !saes.iter().any(|(p, _)| p.chain == chain) {
        let known: Vec<String> = saes.into_iter().map(|(p, _)| p.chain).collect();
        anyhow::bail!(crate::suggest::unknown(
            "chain",
            chain,
            "the lake's SAEs",
            &known
        ));
    }
    if let Some(stage) = stage {
        let stages: Vec<String> = saes
            .into_iter()
            .filter(|(p, _)| p.chain == chain)
            .filter_map(|(p, _)| p.stage)
            .collect();
        if !stages.iter().any(|s| s == stage) {
            anyhow::bail!(crate::suggest::unknown(
                "stage",
                stage,
                &format!("chain {chain}'s SAEs"),
                &stages
            ));
        }
    }
    Ok(())
}
