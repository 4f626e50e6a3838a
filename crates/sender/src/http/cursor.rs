//! The cursors of paged lists (the job list, a member's ledger): a position the client hands
//! back, bound to what it was given for. A cursor is lower-case hex of a version byte, the
//! position, and 8 bytes of SHA-256 over the list's name, those bytes and the scope (the client and
//! the filters, as the list spells them): one given for another client or other filters is refused,
//! not read. The tag is not a secret; it stops mistakes, and a position is checked after it.

use sha2::{Digest, Sha256};

const VERSION: u8 = 1;
const TAG_BYTES: usize = 8;

/// The cursor of `position` in the list named `list`, for `scope`.
pub(crate) fn seal(list: &str, position: &[u8], scope: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(1 + position.len() + TAG_BYTES);
    bytes.push(VERSION);
    bytes.extend_from_slice(position);
    let tag = tag(list, &bytes, scope);
    bytes.extend_from_slice(&tag);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The position of `cursor` if the list named `list` gave it for `scope` and it is
/// `position_len` bytes long.
pub(crate) fn open(list: &str, cursor: &str, position_len: usize, scope: &[u8]) -> Option<Vec<u8>> {
    let bytes = from_hex(cursor)?;
    if bytes.len() != 1 + position_len + TAG_BYTES || bytes[0] != VERSION {
        return None;
    }
    let (sealed, tag_bytes) = bytes.split_at(1 + position_len);
    (tag(list, sealed, scope) == tag_bytes).then(|| sealed[1..].to_vec())
}

/// The scope of a cursor: each part followed by a NUL (which none may contain), so parts cannot
/// run into each other.
pub(crate) fn scope_of(parts: &[&str]) -> Vec<u8> {
    let mut scope = Vec::new();
    for part in parts {
        scope.extend_from_slice(part.as_bytes());
        scope.push(0);
    }
    scope
}

fn tag(list: &str, sealed: &[u8], scope: &[u8]) -> [u8; TAG_BYTES] {
    let mut hash = Sha256::new();
    hash.update(list.as_bytes());
    hash.update(b"\0");
    hash.update(sealed);
    hash.update(scope);
    let digest = hash.finalize();
    let mut out = [0; TAG_BYTES];
    out.copy_from_slice(&digest[..TAG_BYTES]);
    out
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    // Lower-case digits only, so one position has one spelling (`u8::from_str_radix` would also
    // take `+f` and `F`).
    let digit = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if !text.len().is_multiple_of(2) || !text.bytes().all(digit) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Percent-encodes everything but RFC 3986's unreserved characters (a cursor's list's `next`
/// link carries the filters).
pub(crate) fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_opens_only_in_its_list_for_its_scope() {
        let scope = scope_of(&["a", "m1"]);
        let cursor = seal("some list", &[1, 2, 3], &scope);
        assert_eq!(open("some list", &cursor, 3, &scope), Some(vec![1, 2, 3]));
        assert_eq!(open("other list", &cursor, 3, &scope), None);
        assert_eq!(open("some list", &cursor, 3, &scope_of(&["a", "m2"])), None);
        assert_eq!(open("some list", &cursor, 4, &scope), None);
        assert_eq!(open("some list", &cursor.to_uppercase(), 3, &scope), None);
    }

    #[test]
    fn parts_cannot_run_into_each_other() {
        assert_ne!(scope_of(&["ab", "c"]), scope_of(&["a", "bc"]));
    }
}
