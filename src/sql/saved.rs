//! The SQL that ships inside the binary: built-in views and the saved queries of `queries/`.

/// Views created in every session, in dependency order.
pub const VIEWS: &[(&str, &str)] = &[
    ("sae_transitions", include_str!("../../queries/views/sae_transitions.sql")),
    ("feature_drift", include_str!("../../queries/views/feature_drift.sql")),
];

/// The saved questions, by file stem.
pub const QUERIES: &[(&str, &str)] = &[
    ("decoder_drift", include_str!("../../queries/decoder_drift.sql")),
    ("drift_by_step", include_str!("../../queries/drift_by_step.sql")),
    ("kl_ratio", include_str!("../../queries/kl_ratio.sql")),
    ("l18_quadrants", include_str!("../../queries/l18_quadrants.sql")),
];
