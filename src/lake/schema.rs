//! The Arrow schema of every lake table (DESIGN.md, "The lake"), declared once.
//! Partition columns are not stored in the files; they are directory levels.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// Every table of the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Stages,
    Activations,
    Docs,
    Vocab,
    Saes,
    Features,
    TrainLog,
    Evals,
    FeatureStats,
    TopExamples,
    FeatureExamples,
    FeatureHistograms,
    LogitEffects,
    FeatureNeighbors,
    FeatureTransitions,
    FeaturePartners,
}

/// A hive partition level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartCol {
    Chain,
    Stage,
    Layer,
    K,
}

impl PartCol {
    pub fn name(self) -> &'static str {
        match self {
            PartCol::Chain => "chain",
            PartCol::Stage => "stage",
            PartCol::Layer => "layer",
            PartCol::K => "k",
        }
    }

    pub fn data_type(self) -> DataType {
        match self {
            PartCol::Chain | PartCol::Stage => DataType::Utf8,
            PartCol::Layer | PartCol::K => DataType::Int32,
        }
    }
}

use PartCol::*;

impl Table {
    pub const ALL: [Table; 16] = [
        Table::Stages,
        Table::Activations,
        Table::Docs,
        Table::Vocab,
        Table::Saes,
        Table::Features,
        Table::TrainLog,
        Table::Evals,
        Table::FeatureStats,
        Table::TopExamples,
        Table::FeatureExamples,
        Table::FeatureHistograms,
        Table::LogitEffects,
        Table::FeatureNeighbors,
        Table::FeatureTransitions,
        Table::FeaturePartners,
    ];

    /// The tables `stats` writes for the feature pages (beside `feature_stats`, `top_examples`).
    pub const PAGES: [Table; 6] = [
        Table::FeatureExamples,
        Table::FeatureHistograms,
        Table::LogitEffects,
        Table::FeatureNeighbors,
        Table::FeatureTransitions,
        Table::FeaturePartners,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Stages => "stages",
            Table::Activations => "activations",
            Table::Docs => "docs",
            Table::Vocab => "vocab",
            Table::Saes => "saes",
            Table::Features => "features",
            Table::TrainLog => "train_log",
            Table::Evals => "evals",
            Table::FeatureStats => "feature_stats",
            Table::TopExamples => "top_examples",
            Table::FeatureExamples => "feature_examples",
            Table::FeatureHistograms => "feature_histograms",
            Table::LogitEffects => "logit_effects",
            Table::FeatureNeighbors => "feature_neighbors",
            Table::FeatureTransitions => "feature_transitions",
            Table::FeaturePartners => "feature_partners",
        }
    }

    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Directory levels, outermost first. `stages` is one partition per chain so that a chain's
    /// stage order (and so `parent_stage`) is rewritten as one unit.
    pub fn partition_cols(self) -> &'static [PartCol] {
        match self {
            Table::Stages => &[Chain],
            Table::Docs | Table::Vocab => &[Chain, Stage],
            Table::Activations => &[Chain, Stage, Layer],
            _ => &[Chain, Stage, Layer, K],
        }
    }

    /// Columns stored in the files. `d_model` sizes the vector columns; `None` gives the
    /// variable-length `List<Float32>` used when partitions of different widths are read together.
    pub fn file_schema(self, d_model: Option<i32>) -> SchemaRef {
        let vector = |name: &str| Field::new(name, vector_type(d_model), false);
        let f = |name: &str, t: DataType| Field::new(name, t, false);
        let n = |name: &str, t: DataType| Field::new(name, t, true);
        use DataType::*;
        let fields = match self {
            Table::Stages => vec![
                f("stage", Utf8),
                f("step", Int64),
                n("reward", Utf8),
                n("kl_coef", Float64),
                n("model_path", Utf8),
                n("parent_stage", Utf8),
            ],
            Table::Activations => vec![
                f("doc_id", Int64),
                f("pos", Int32),
                f("token_id", Int32),
                f("split", Utf8),
                vector("x"),
            ],
            Table::Docs => vec![
                f("doc_id", Int64),
                f("dataset_split", Utf8),
                f("question", Utf8),
                n("answer", Utf8),
            ],
            // `text`: what a person reads (` the` for `Ġthe`); NULL in lakes written before it.
            Table::Vocab => vec![f("token_id", Int32), f("token", Utf8), n("text", Utf8)],
            Table::Saes => vec![
                f("d_model", Int32),
                f("d_sae", Int32),
                f("activation", Utf8),
                n("init_from_stage", Utf8),
                n("best_epoch", Int32),
                n("best_val_mse", Float64),
                f("b_pre", float_list()),
                f("b_dec", float_list()),
                n("source", Utf8),
            ],
            Table::Features => vec![
                f("feature", Int32),
                vector("w_enc"),
                f("b_enc", Float32),
                vector("w_dec"),
            ],
            Table::TrainLog => vec![
                f("epoch", Int32),
                f("train_mse", Float64),
                n("val_mse", Float64),
                n("aux_loss", Float64),
                f("n_dead", Int64),
                f("lr", Float64),
                f("seconds", Float64),
            ],
            Table::Evals => vec![
                n("nmse", Float64),
                n("mean_l0", Float64),
                n("l_base", Float64),
                n("l_sae", Float64),
                n("l_mean", Float64),
                n("frac_rec", Float64),
                n("n_val_rows", Int64),
                n("n_prompts", Int32),
                // The conventions used (the study's: "var" and "mean"), and the KL-divergence
                // score: mean KL(base ‖ spliced) over real next-token positions.
                f("nmse_denom", Utf8),
                f("ablation", Utf8),
                n("kl_sae", Float64),
                n("kl_ablation", Float64),
                n("kl_rec", Float64),
                // SAEBench's core metrics over the same val rows (NULL in lakes evaluated before).
                n("explained_variance", Float64),
                n("explained_variance_legacy", Float64),
                n("cossim", Float64),
                n("l2_ratio", Float64),
                n("relative_reconstruction_bias", Float64),
                n("frac_alive", Float64),
                n("freq_over_1_percent", Float64),
                n("freq_over_10_percent", Float64),
            ],
            Table::FeatureStats => vec![
                f("feature", Int32),
                f("split", Utf8),
                f("n_tokens", Int64),
                f("fire_count", Int64),
                f("topk_count", Int64),
                f("density", Float64),
                n("mean_act", Float64),
                n("max_act", Float32),
            ],
            Table::TopExamples => vec![
                f("feature", Int32),
                // Nullable: lakes written before the column read it as NULL.
                n("split", Utf8),
                f("rank", Int32),
                f("doc_id", Int64),
                f("pos", Int32),
                f("token_id", Int32),
                f("value", Float32),
            ],
            // Top (`kind` 'top', `bin` NULL) and quantile examples ('quantile', `bin` 0..9 of
            // (0, max]) with their contexts: tokens from `context_start` on and this feature's
            // activation at each.
            Table::FeatureExamples => vec![
                f("feature", Int32),
                f("split", Utf8),
                f("kind", Utf8),
                n("bin", Int32),
                f("rank", Int32),
                f("doc_id", Int64),
                f("pos", Int32),
                f("value", Float32),
                f("context_start", Int32),
                f("context_tokens", int_list()),
                f("context_acts", float_list()),
            ],
            // Non-zero activations in equal bins of (0, hi]; features that never fired have no row.
            Table::FeatureHistograms => vec![
                f("feature", Int32),
                f("split", Utf8),
                f("n_nonzero", Int64),
                f("hi", Float32),
                f("counts", long_list()),
            ],
            // unembedding · (final norm weight ⊙ decoder direction): 'top' raised, 'bottom' lowered.
            Table::LogitEffects => vec![
                f("feature", Int32),
                f("direction", Utf8),
                f("rank", Int32),
                f("token_id", Int32),
                f("value", Float32),
                f("norm_folded", Boolean),
            ],
            Table::FeatureNeighbors => vec![
                f("feature", Int32),
                f("rank", Int32),
                f("neighbor", Int32),
                f("dec_cos", Float32),
            ],
            // The transition into this stage (NULL at a chain's first stage): index-aligned
            // cosines, the previous stage's feature's best decoder match here, and the cosines
            // to the chain's first stage.
            Table::FeatureTransitions => vec![
                f("feature", Int32),
                n("stage_from", Utf8),
                n("dec_cos", Float64),
                n("enc_cos", Float64),
                n("best_match", Int32),
                n("best_cos", Float64),
                f("first_stage", Utf8),
                n("dec_cos_first", Float64),
                n("enc_cos_first", Float64),
            ],
            // The one-to-one partner (match_features) in each other chain at this layer and k.
            Table::FeaturePartners => vec![
                f("feature", Int32),
                f("other_chain", Utf8),
                f("other_stage", Utf8),
                f("partner", Int32),
                f("dec_cos", Float64),
            ],
        };
        Arc::new(Schema::new(fields))
    }

    /// The d_model-wide vector columns.
    pub fn vector_columns(self) -> &'static [&'static str] {
        match self {
            Table::Activations => &["x"],
            Table::Features => &["w_enc", "w_dec"],
            _ => &[],
        }
    }
}

fn list_of(t: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", t, false)))
}

fn float_list() -> DataType {
    list_of(DataType::Float32)
}

fn int_list() -> DataType {
    list_of(DataType::Int32)
}

fn long_list() -> DataType {
    list_of(DataType::Int64)
}

/// `FixedSizeList<Float32, d>` for a known width, `List<Float32>` otherwise.
pub fn vector_type(d_model: Option<i32>) -> DataType {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    match d_model {
        Some(d) => DataType::FixedSizeList(item, d),
        None => DataType::List(item),
    }
}

/// The width of a vector column type, if fixed.
pub fn vector_width(t: &DataType) -> Option<i32> {
    match t {
        DataType::FixedSizeList(_, d) => Some(*d),
        _ => None,
    }
}
