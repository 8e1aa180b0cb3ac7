//! How an error reaches the user: each message once, saerl's own words first.
//!
//! anyhow's `{:#}` prints every cause, but DataFusion and Arrow errors repeat their source in
//! their own text (`External error: …` then the same `…` as the next cause), so a column typo
//! printed "No field named …" three times; and a UDF's message came last, after DataFusion's
//! planning wrappers.

/// The text of `e` for the user: the chain of causes without repeats, with the message of a
/// saerl function (`topk_encode: …`, `best_match: …`) moved to the front.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || parts.iter().any(|p| p.contains(text)) {
            continue;
        }
        // A wrapper that repeats what an earlier part said adds only its own words.
        let mut own = text.to_string();
        for p in &parts {
            own = own.replace(p.as_str(), "");
        }
        let own = own.trim().trim_end_matches(':').trim().to_string();
        if !own.is_empty() {
            parts.push(own);
        }
    }
    // Drop earlier parts that a later, fuller one contains (wrappers quoting their cause).
    let mut kept: Vec<String> = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if !parts[i + 1..].iter().any(|q| q.contains(p.as_str())) {
            kept.push(p.clone());
        }
    }
    let text = kept.join(": ");
    // DataFusion often formats its cause into its own message; find saerl's words by name.
    match function_message_at(&text) {
        Some(0) | None => text,
        Some(i) => format!(
            "{} (in: {})",
            &text[i..],
            text[..i].trim_end_matches([':', ' '])
        ),
    }
}

/// Where the first message of a saerl SQL function starts in `text` (they start with their
/// name, then a colon or their signature, after DataFusion's ": " separators).
fn function_message_at(text: &str) -> Option<usize> {
    crate::sql::FUNCTIONS
        .iter()
        .flat_map(|(f, _)| [format!("{f}: "), format!("{f}(")])
        .filter_map(|needle| {
            text.match_indices(&needle)
                .map(|(i, _)| i)
                .find(|&i| i == 0 || text[..i].ends_with(": "))
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::error_text;

    #[derive(Debug)]
    struct Wrap(&'static str, Option<Box<Wrap>>);
    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Wrap {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|w| w as _)
        }
    }

    #[test]
    fn each_message_once_and_ours_first() {
        let inner = Wrap("Schema error: No field named x.", None);
        let mid = Wrap(
            "External error: Schema error: No field named x.",
            Some(Box::new(inner)),
        );
        let e = anyhow::Error::new(mid).context("-c line 1");
        let text = error_text(&e);
        assert_eq!(text.matches("No field named x").count(), 1, "{text}");
        assert!(text.starts_with("-c line 1"), "{text}");

        let udf = Wrap(
            "topk_encode: the vector has 3 values, the SAE's d_model is 16",
            None,
        );
        let plan = Wrap(
            "Error during planning: Failed to coerce arguments",
            Some(Box::new(udf)),
        );
        let text = error_text(&anyhow::Error::new(plan));
        assert!(text.starts_with("topk_encode: the vector"), "{text}");
        assert!(text.contains("Failed to coerce"), "{text}");
        // Also when DataFusion formatted the cause into its own text.
        let flat = Wrap(
            "Error during planning: Execution error: topk_encode: bad k",
            None,
        );
        assert_eq!(
            error_text(&anyhow::Error::new(flat)),
            "topk_encode: bad k (in: Error during planning: Execution error)"
        );
    }
}
