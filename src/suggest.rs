//! "Did you mean …?": the message for a name that matches nothing, listing what exists and the
//! nearest by edit distance.

/// `no {what} {name:?} in {place} ({what}s: a, b, c); did you mean "b"?`
pub fn unknown(what: &str, name: &str, place: &str, known: &[String]) -> String {
    let mut known: Vec<&str> = known.iter().map(String::as_str).collect();
    known.sort_unstable();
    known.dedup();
    let list = if known.is_empty() {
        format!("it has no {what}s yet")
    } else {
        format!("{what}s: {}", known.join(", "))
    };
    match nearest(name, &known) {
        Some(n) => format!("no {what} {name:?} in {place} ({list}); did you mean {n:?}?"),
        None => format!("no {what} {name:?} in {place} ({list})"),
    }
}

/// The known name closest to `name`, when it is close enough to be a typo.
pub fn nearest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(name, k), *k))
        .filter(|&(d, k)| d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_what_exists_and_the_nearest() {
        let known = vec!["flexible".to_string(), "strict".into(), "kl0p025".into()];
        let m = super::unknown("chain", "flexibel", "the lake", &known);
        assert!(m.contains("chains: flexible, kl0p025, strict"), "{m}");
        assert!(m.ends_with("did you mean \"flexible\"?"), "{m}");
        assert!(!super::unknown("chain", "zzzzzzzz", "x", &known).contains("did you mean"));
    }
}
