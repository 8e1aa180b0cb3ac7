//! Tokens as a person reads them (`vocab.text`, the feature browser). Byte-level BPE vocabularies (GPT-2, Qwen2) store each byte as
//! a printable stand-in (` ` is `Ġ`, a newline `Ċ`, `’` three symbols `âĢĻ`); this undoes that
//! mapping. Bytes that are only part of a UTF-8 character show as `\xNN`.

/// The byte a stand-in character encodes, by GPT-2's table: printable Latin-1 bytes stand for
/// themselves, the other 68 bytes take the characters from U+0100 on, in byte order.
fn byte_of(c: char) -> Option<u8> {
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    let u = c as u32;
    if u < 0x100 {
        return printable(u).then_some(u as u8);
    }
    let n = u - 0x100;
    (0u32..256)
        .filter(|&b| !printable(b))
        .nth(n as usize)
        .map(|b| b as u8)
}

/// The text of a vocabulary symbol; a symbol that is not byte-level BPE is its own text.
pub fn symbol_text(symbol: &str) -> String {
    let Some(bytes) = symbol.chars().map(byte_of).collect::<Option<Vec<u8>>>() else {
        return symbol.to_string();
    };
    let mut out = String::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                break;
            }
            Err(e) => {
                let (ok, bad) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(ok).unwrap_or_default());
                let n = e.error_len().unwrap_or(bad.len()).max(1);
                for b in &bad[..n] {
                    out.push_str(&format!("\\x{b:02X}"));
                }
                rest = &bad[n..];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::symbol_text;

    #[test]
    fn byte_level_symbols_read_as_text() {
        assert_eq!(symbol_text("Ġthe"), " the");
        assert_eq!(symbol_text("Ċ"), "\n");
        assert_eq!(symbol_text("âĢĻ"), "’");
        assert_eq!(symbol_text("plain"), "plain");
        // The first byte of a three-byte character alone.
        assert_eq!(symbol_text("â"), "\\xE2");
        // Not byte-level BPE (a character outside the table): shown as it is.
        assert_eq!(symbol_text("▁word"), "▁word");
    }
}
