//! API keys as the configuration holds them: `client:sha256:<hex digest>` (or, for development,
//! `client:<key>` in plain text). The sender only ever keeps digests.

use sha2::{Digest, Sha256};

/// Prefix of a key given as its digest.
pub const DIGEST_PREFIX: &str = "sha256:";

/// Whether `client` may name a client: 1-64 characters of `[A-Za-z0-9_.-]`.
pub fn valid_client_id(client: &str) -> bool {
    !client.is_empty()
        && client.len() <= 64
        && client
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// SHA-256 of a key.
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Lower-case hex of a digest.
pub fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits.
pub fn parse_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A new random key: `acr_` and 64 hex digits (256 bits from the OS's generator).
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("acr_{}", hex(&bytes))
}

/// The configuration entry for `client` with `key`, holding only the key's digest.
pub fn config_entry(client: &str, key: &str) -> String {
    format!("{client}:{DIGEST_PREFIX}{}", hex(&digest(key)))
}

/// Whether two digests are equal, looking at every byte whatever the answer.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_round_trips_through_its_config_entry() {
        let key = generate();
        assert!(key.starts_with("acr_") && key.len() == 68);
        assert_ne!(key, generate());
        let entry = config_entry("crm", &key);
        let hex_digest = entry.strip_prefix("crm:sha256:").unwrap_or_default();
        assert_eq!(parse_hex(hex_digest), Some(digest(&key)));
        assert!(!entry.contains(&key));
    }

    #[test]
    fn digests_compare_equal_only_when_every_byte_matches() {
        let a = digest("one");
        let mut b = a;
        assert!(digests_equal(&a, &b));
        b[31] ^= 1;
        assert!(!digests_equal(&a, &b));
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex(&"g".repeat(64)), None);
    }
}
