//! Domain newtypes. Each can only be built through `TryFrom`, so a value that exists is valid.
//!
//! The strings are `CompactString`s: a value of up to 24 bytes (most member ids, point types and
//! reasons) lives inside the struct, so a 500,000-item request does not make 1.5 million small heap
//! allocations.

use std::fmt;

use compact_str::CompactString;

/// Why a single field value was refused. The message is meant for the API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FieldError(pub &'static str);

/// Longest `member_id` the schema stores (`VARCHAR(64)`).
pub const MEMBER_ID_MAX_LEN: usize = 64;
/// Longest `point_type` the schema stores (`VARCHAR(32)`).
pub const POINT_TYPE_MAX_LEN: usize = 32;
/// Longest `reason`, in characters (`VARCHAR(255)` counts characters, not bytes).
pub const REASON_MAX_CHARS: usize = 255;
/// Largest amount one point may carry; keeps sums of many points far from `BIGINT` overflow.
pub const AMOUNT_MAX: i64 = 1_000_000_000;
/// Longest job label, in characters (`accrual_jobs.label` is `VARCHAR(128)`, which counts
/// characters, not bytes).
pub const LABEL_MAX_CHARS: usize = 128;
/// Longest `external_id` (`VARCHAR(128)`, ASCII).
pub const EXTERNAL_ID_MAX_LEN: usize = 128;

/// A CRM member's identifier: 1–64 characters of `[A-Za-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(CompactString);

impl MemberId {
    fn check(value: &str) -> Result<(), FieldError> {
        if value.is_empty() || value.len() > MEMBER_ID_MAX_LEN {
            return Err(FieldError("must be 1 to 64 characters long"));
        }
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
        if !value.bytes().all(allowed) {
            return Err(FieldError(
                "may only contain A-Z, a-z, 0-9, '_', '.' and '-'",
            ));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A kind of point (`WELFARE`, `BONUS_2026`): 1–32 characters of `[A-Z0-9_]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PointType(CompactString);

impl PointType {
    fn check(value: &str) -> Result<(), FieldError> {
        if value.is_empty() || value.len() > POINT_TYPE_MAX_LEN {
            return Err(FieldError("must be 1 to 32 characters long"));
        }
        let allowed = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_';
        if !value.bytes().all(allowed) {
            return Err(FieldError("may only contain A-Z, 0-9 and '_'"));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How many points one accrual credits: `1..=1_000_000_000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Amount(i64);

impl TryFrom<i64> for Amount {
    type Error = FieldError;

    fn try_from(value: i64) -> Result<Self, Self::Error> {
        if (1..=AMOUNT_MAX).contains(&value) {
            Ok(Self(value))
        } else {
            Err(FieldError("must be an integer from 1 to 1000000000"))
        }
    }
}

impl Amount {
    pub fn get(self) -> i64 {
        self.0
    }
}

/// Free text shown to the member: at most 255 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reason(CompactString);

impl Reason {
    fn check(value: &str) -> Result<(), FieldError> {
        // Cheap byte test first: a string of at most 255 bytes has at most 255 characters.
        if value.len() > REASON_MAX_CHARS && value.chars().count() > REASON_MAX_CHARS {
            return Err(FieldError("must be at most 255 characters long"));
        }
        if !value.chars().all(reason_char) {
            return Err(FieldError(
                "must not contain control characters (U+0000 to U+001F) or the non-characters U+FFFE and U+FFFF",
            ));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether SQS accepts `c` in a message body: `#x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD |
/// #x10000-#x10FFFF` (a Rust `char` is never a surrogate, so `#xD800-#xDFFF` cannot occur).
/// serde_json escapes C0 controls but writes U+FFFE and U+FFFF raw, which SQS then refuses.
pub fn sqs_body_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

/// Whether a reason may hold `c`: what SQS carries, less the C0 controls it allows (a tab or a
/// line break in a reason shown to a member is a mistake, and a NUL always is).
fn reason_char(c: char) -> bool {
    c >= ' ' && sqs_body_char(c)
}

/// A client's name for a job (a campaign): 1–128 visible characters, stored and matched exactly.
///
/// Visible means no control character (Unicode `Cc`), no whitespace (Unicode `White_Space`) and
/// not U+FFFE/U+FFFF. Without whitespace, a label cannot differ from another only by trailing
/// spaces, which `utf8mb4_bin` (a PAD SPACE collation in MariaDB) would compare as equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label(CompactString);

impl Label {
    fn check(value: &str) -> Result<(), FieldError> {
        // Cheap byte test first: a string of at most 128 bytes has at most 128 characters.
        let too_long = value.len() > LABEL_MAX_CHARS && value.chars().count() > LABEL_MAX_CHARS;
        if value.is_empty() || too_long {
            return Err(FieldError("must be 1 to 128 characters long"));
        }
        if !value.chars().all(label_char) {
            return Err(FieldError(
                "must be visible characters: no control characters, no whitespace, not U+FFFE or U+FFFF",
            ));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether a label may hold `c` (see [`Label`]).
fn label_char(c: char) -> bool {
    !c.is_control() && !c.is_whitespace() && c != '\u{FFFE}' && c != '\u{FFFF}'
}

/// The client's own id for one item (its transaction id): 1–128 visible ASCII characters
/// (`!` to `~`), unique per client across all its jobs.
///
/// ASCII only, compared byte for byte (`ascii_bin`): without spaces, two ids cannot differ only by
/// trailing spaces, which MariaDB's PAD SPACE collations would compare as equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExternalId(CompactString);

impl ExternalId {
    fn check(value: &str) -> Result<(), FieldError> {
        if value.is_empty() || value.len() > EXTERNAL_ID_MAX_LEN {
            return Err(FieldError("must be 1 to 128 characters long"));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(FieldError(
                "may only contain visible ASCII characters ('!' to '~'), no spaces",
            ));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Earliest instant a `DATETIME(6)` column holds.
pub const DATETIME_MIN_YEAR: i32 = 1000;
/// Latest year a `DATETIME(6)` column holds.
pub const DATETIME_MAX_YEAR: i32 = 9999;

/// Whether `at` is exactly what a `DATETIME(6)` column stores: years 1000-9999 (UTC), whole
/// microseconds, and no leap second. Over the binary protocol MariaDB stores anything else as
/// `0000-00-00 00:00:00` without an error, even in strict mode, so it must be refused before.
pub fn check_datetime6(at: chrono::DateTime<chrono::Utc>) -> Result<(), FieldError> {
    use chrono::{Datelike, Timelike};
    if !(DATETIME_MIN_YEAR..=DATETIME_MAX_YEAR).contains(&at.year()) {
        return Err(FieldError(
            "must lie in the years 1000 to 9999 once converted to UTC",
        ));
    }
    let nanos = at.nanosecond();
    if nanos >= 1_000_000_000 {
        return Err(FieldError("must not be a leap second (:60)"));
    }
    if !nanos.is_multiple_of(1_000) {
        return Err(FieldError(
            "must have at most 6 fractional digits (microseconds)",
        ));
    }
    Ok(())
}

/// `TryFrom<String>` (keeps the buffer of a long value) and `TryFrom<&str>` (a message body being
/// decoded: no allocation for up to 24 bytes), both through the type's `check`.
macro_rules! try_from_strings {
    ($($t:ty),*) => {$(
        impl TryFrom<String> for $t {
            type Error = FieldError;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::check(&value)?;
                Ok(Self(value.into()))
            }
        }

        impl TryFrom<&str> for $t {
            type Error = FieldError;

            fn try_from(value: &str) -> Result<Self, Self::Error> {
                Self::check(value)?;
                Ok(Self(CompactString::new(value)))
            }
        }
    )*};
}
try_from_strings!(MemberId, PointType, Reason, Label, ExternalId);

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(MemberId, PointType, Reason, Label, ExternalId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_id_accepts_the_documented_alphabet_up_to_64_characters() {
        assert!(MemberId::try_from("Ab-0_9.x".to_owned()).is_ok());
        assert!(MemberId::try_from("m".repeat(64)).is_ok());
    }

    #[test]
    fn member_id_rejects_empty_too_long_and_foreign_characters() {
        for bad in ["", "a b", "ü", "a/b", "a@b"] {
            assert!(MemberId::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
        assert!(MemberId::try_from("m".repeat(65)).is_err());
    }

    #[test]
    fn point_type_is_upper_case_digits_and_underscore() {
        assert!(PointType::try_from("WELFARE_2026".to_owned()).is_ok());
        for bad in ["", "welfare", "WEL-FARE", "WELFARE "] {
            assert!(PointType::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
        assert!(PointType::try_from("P".repeat(33)).is_err());
    }

    #[test]
    fn external_id_is_one_to_128_visible_ascii_characters() {
        assert!(ExternalId::try_from("txn:2026/11/24#42".to_owned()).is_ok());
        assert!(ExternalId::try_from("x".repeat(128)).is_ok());
        for bad in ["", "a b", "tab\t", "ü", "x\u{7f}"] {
            assert!(ExternalId::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
        assert!(ExternalId::try_from("x".repeat(129)).is_err());
    }

    #[test]
    fn amount_bounds_are_inclusive() {
        assert!(Amount::try_from(1).is_ok());
        assert!(Amount::try_from(AMOUNT_MAX).is_ok());
        for bad in [0, -5, AMOUNT_MAX + 1, i64::MAX, i64::MIN] {
            assert!(Amount::try_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reason_refuses_what_sqs_cannot_carry_and_c0_controls() {
        for bad in [
            "a\u{FFFF}",
            "\u{FFFE}",
            "nul\0",
            "tab\there",
            "line\nbreak",
            "\u{1F}",
        ] {
            assert!(Reason::try_from(bad).is_err(), "{bad:?}");
        }
        for good in [
            "\u{FFFD}",
            "\u{10FFFF}",
            "\u{E000}",
            "\u{7F}",
            "ポイント 🎉",
        ] {
            assert!(Reason::try_from(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn sqs_body_characters_follow_the_sqs_rule() {
        let allowed = |c: u32| {
            matches!(c, 0x9 | 0xA | 0xD)
                || (0x20..=0xD7FF).contains(&c)
                || (0xE000..=0xFFFD).contains(&c)
                || (0x10000..=0x10FFFF).contains(&c)
        };
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(sqs_body_char(c), allowed(c as u32), "{:#x}", c as u32);
        }
    }

    #[test]
    fn datetime6_holds_years_1000_to_9999_in_whole_microseconds() {
        use chrono::{DateTime, Utc};
        let at = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .expect(s)
                .with_timezone(&Utc)
        };
        assert!(check_datetime6(at("9999-12-31T23:59:59.999999Z")).is_ok());
        assert!(check_datetime6(at("1000-01-01T00:00:00Z")).is_ok());
        // Year 10000 once converted to UTC.
        assert!(check_datetime6(at("9999-12-31T23:59:59-23:59")).is_err());
        assert!(check_datetime6(at("0999-12-31T23:59:59Z")).is_err());
        assert!(check_datetime6(at("2030-06-30T23:59:60Z")).is_err());
        assert!(check_datetime6(at("2030-01-01T00:00:00.0000001Z")).is_err());
    }

    #[test]
    fn reason_counts_characters_not_bytes() {
        assert!(Reason::try_from("ポ".repeat(255)).is_ok());
        assert!(Reason::try_from("ポ".repeat(256)).is_err());
        assert!(Reason::try_from("a".repeat(256)).is_err());
    }

    #[test]
    fn label_is_one_to_128_characters_stored_exactly() {
        for good in ["spring-2026", "春のキャンペーン/第2弾", "a=b&c", "🎉", "x"] {
            let label = Label::try_from(good).expect(good);
            assert_eq!(label.as_str(), good);
        }
        assert!(Label::try_from("ポ".repeat(128)).is_ok());
        assert!(Label::try_from("ポ".repeat(129)).is_err());
        assert!(Label::try_from("a".repeat(129)).is_err());
        assert!(Label::try_from("").is_err());
    }

    #[test]
    fn label_refuses_controls_whitespace_and_non_characters() {
        for bad in [
            "a b",
            "tab\t",
            "nul\0",
            "\u{7F}",
            "\u{85}",
            "no\u{A0}break",
            "\u{3000}",
            "\u{2028}",
            "\u{FFFE}",
            "\u{FFFF}",
            "trailing ",
        ] {
            assert!(Label::try_from(bad).is_err(), "{bad:?}");
        }
    }

    /// The rule the sender's OpenAPI contract states as a pattern for `label` (a character class
    /// of these ranges): they are exactly the Unicode `Cc` and `White_Space` characters, plus
    /// U+FFFE and U+FFFF.
    #[test]
    fn label_characters_are_all_but_the_listed_ranges() {
        let refused = |c: u32| {
            matches!(c, 0x00..=0x20 | 0x7F..=0xA0 | 0x1680 | 0x2000..=0x200A | 0x2028 | 0x2029)
                || matches!(c, 0x202F | 0x205F | 0x3000 | 0xFFFE | 0xFFFF)
        };
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(label_char(c), !refused(c as u32), "{:#x}", c as u32);
        }
    }
}
