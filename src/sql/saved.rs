//! The saved queries of `queries/`, shipped inside the binary.

/// The saved questions, by file stem.
pub const QUERIES: &[(&str, &str)] = &[
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
        "l18_quadrants",
        include_str!("../../queries/l18_quadrants.sql"),
    ),
];
