//! The saved queries of `queries/`, shipped inside the binary.

/// The saved questions, by file stem, in the order a report shows them.
pub const QUERIES: &[(&str, &str)] = &[
    ("quality", include_str!("../../queries/quality.sql")),
    (
        "decoder_drift",
        include_str!("../../queries/decoder_drift.sql"),
    ),
    (
        "drift_by_step",
        include_str!("../../queries/drift_by_step.sql"),
    ),
    ("kl_ratio", include_str!("../../queries/kl_ratio.sql")),
    (
        "effective_count",
        include_str!("../../queries/effective_count.sql"),
    ),
    ("lifecycle", include_str!("../../queries/lifecycle.sql")),
    (
        "l18_quadrants",
        include_str!("../../queries/l18_quadrants.sql"),
    ),
    ("best_match", include_str!("../../queries/best_match.sql")),
    ("matching", include_str!("../../queries/matching.sql")),
    ("top_drifted", include_str!("../../queries/top_drifted.sql")),
];
