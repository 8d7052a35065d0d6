//! Small helpers every layer may use: time, hex, text, and the one bound
//! on receivers tracked by name.

/// Receivers tracked by name, at most, wherever they are (the activity
/// log's failures, the metrics' labels): hooks choose URLs, so past this
/// the rest are forgotten or counted together.
pub const MAX_RECEIVERS: usize = 1024;

/// Now, in Unix ms.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// `bytes` as lower-case hex digits.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random id: 128 bits as 32 hex digits.
pub(crate) fn random_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// At most the first `max` bytes of `s`, cut at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_cuts_at_a_character_boundary() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(hex(&[0, 255, 16]), "00ff10");
        assert_eq!(random_id().len(), 32);
    }
}
