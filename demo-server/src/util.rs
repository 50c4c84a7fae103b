//! Small helpers shared by the modules: wall-clock time and random identifiers.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (UTC), as used on the wire for instants.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh stream epoch: 8 random characters from `[a-z0-9]` (36^8 ≈ 2.8·10^12 values, so two generations of
/// the same stream practically never share an epoch).
pub(crate) fn new_epoch() -> String {
    (0..8).map(|_| LOWER_ALNUM[fastrand::usize(..LOWER_ALNUM.len())] as char).collect()
}

/// A fresh session id: `s-` and 16 hex digits.
pub(crate) fn new_session_id() -> String {
    format!("s-{:016x}", fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_eight_lowercase_alphanumerics_and_differ() {
        let a = new_epoch();
        let b = new_epoch();
        assert_eq!(a.len(), 8);
        assert!(a.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn session_ids_have_the_documented_shape() {
        let s = new_session_id();
        assert!(s.starts_with("s-") && s.len() == 18, "{s}");
    }
}
