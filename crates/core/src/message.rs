//! The SQS message body: one point per message (`"v":1`), or many (`"v":2`, packed).
//!
//! A packed body is `{"v":2,"points":[…]}` where each point is a v1 body without `"v"`. The
//! dispatcher packs the stored v1 bodies by splicing, so a packed point carries exactly the bytes
//! (and the `accrual_id`) that were accepted; the listener decodes each point on its own, so one
//! bad point is refused alone.

use std::borrow::Cow;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::accrual::Accrual;
use crate::domain::{Amount, ExternalId, FieldError, MemberId, PointType, Reason, check_datetime6};

use packed::decode_packed;
pub use packed::{PackError, pack, points_in, unpack};

mod packed;

/// The one-point body version.
pub const MESSAGE_VERSION: u8 = 1;
/// The packed body version: many points per message.
pub const PACKED_VERSION: u8 = 2;

/// How every v1 body this code writes begins.
const V1_PREFIX: &str = r#"{"v":1,"#;
/// How every v2 body this code writes begins, and ends.
const V2_OPEN: &str = r#"{"v":2,"points":["#;
const V2_CLOSE: &str = "]}";

/// One point on its way to the ledger: what the sender accepted plus the ids that make it unique.
#[derive(Debug, Clone, PartialEq)]
pub struct PointRecord {
    /// Idempotency key: assigned once at acceptance, unique in `point_accruals`.
    pub accrual_id: Uuid,
    pub job_id: Uuid,
    pub accrual: Accrual,
    pub accepted_at: DateTime<Utc>,
    /// Set on a compensating point of a reversal job: the `accrual_id` this point takes back. Its
    /// ledger amount (and its amount on the wire) is `-accrual.amount`.
    pub reverses: Option<Uuid>,
}

#[derive(Serialize)]
struct WireOut<'a> {
    v: u8,
    accrual_id: Uuid,
    job_id: Uuid,
    member_id: &'a str,
    point_type: &'a str,
    amount: i64,
    reason: Option<&'a str>,
    expires_at: Option<DateTime<Utc>>,
    accepted_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reverses: Option<Uuid>,
}

/// A v1 body, or one point of a v2 body (which has no `v`). Strings borrow from the body unless
/// they hold escapes.
#[derive(Deserialize)]
struct WireIn<'a> {
    #[serde(default)]
    v: Option<u8>,
    accrual_id: Uuid,
    job_id: Uuid,
    #[serde(borrow)]
    member_id: Cow<'a, str>,
    #[serde(borrow)]
    point_type: Cow<'a, str>,
    amount: i64,
    #[serde(default, borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "timestamp::optional")]
    expires_at: Option<DateTime<Utc>>,
    #[serde(deserialize_with = "timestamp::required")]
    accepted_at: DateTime<Utc>,
    #[serde(default, borrow)]
    external_id: Option<Cow<'a, str>>,
    #[serde(default)]
    reverses: Option<Uuid>,
}

/// RFC 3339 timestamps read with chrono's strict parser (several times faster than the relaxed
/// one behind chrono's own `Deserialize`), falling back to the relaxed one, so what is accepted is
/// unchanged.
mod timestamp {
    use std::fmt;

    use chrono::{DateTime, Utc};
    use serde::Deserializer;
    use serde::de::{self, Visitor};

    fn parse<E: de::Error>(s: &str) -> Result<DateTime<Utc>, E> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .or_else(|_| s.parse::<DateTime<Utc>>())
            .map_err(E::custom)
    }

    struct Timestamp;

    impl Visitor<'_> for Timestamp {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 timestamp")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            parse(s)
        }
    }

    struct OptionalTimestamp;

    impl<'de> Visitor<'de> for OptionalTimestamp {
        type Value = Option<DateTime<Utc>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an RFC 3339 timestamp or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            required(d).map(Some)
        }
    }

    pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        d.deserialize_str(Timestamp)
    }

    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        d.deserialize_option(OptionalTimestamp)
    }
}

/// Why a message body cannot become a ledger row. Each is final: retrying cannot fix it.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("body is not a valid accrual message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported message version {0}")]
    UnsupportedVersion(u8),
    #[error("packed message holds no points")]
    NoPoints,
    #[error("field `{field}` {source}")]
    Invalid {
        field: &'static str,
        #[source]
        source: FieldError,
    },
}

impl PointRecord {
    /// Serialises the record as a v1 message body.
    pub fn encode(&self) -> String {
        let a = &self.accrual;
        let out = WireOut {
            v: MESSAGE_VERSION,
            accrual_id: self.accrual_id,
            job_id: self.job_id,
            member_id: a.member_id.as_str(),
            point_type: a.point_type.as_str(),
            amount: self.ledger_amount(),
            reason: a.reason.as_ref().map(Reason::as_str),
            expires_at: a.expires_at,
            accepted_at: self.accepted_at,
            external_id: a.external_id.as_ref().map(ExternalId::as_str),
            reverses: self.reverses,
        };
        // Serialising a struct of strings, numbers and timestamps into a String cannot fail.
        serde_json::to_string(&out).unwrap_or_default()
    }

    /// The amount the ledger row holds: negative on a compensating point.
    pub fn ledger_amount(&self) -> i64 {
        let amount = self.accrual.amount.get();
        if self.reverses.is_some() {
            -amount
        } else {
            amount
        }
    }

    /// Reads a message body, validating every field as the API does (but for `expires_at`,
    /// which may have passed while the point waited in the queue).
    pub fn decode(body: &str) -> Result<Self, DecodeError> {
        let w: WireIn = serde_json::from_str(body)?;
        match w.v {
            Some(MESSAGE_VERSION) => Self::from_wire(w),
            Some(v) => Err(DecodeError::UnsupportedVersion(v)),
            None => Err(DecodeError::Json(serde::de::Error::missing_field("v"))),
        }
    }

    fn from_wire(w: WireIn<'_>) -> Result<Self, DecodeError> {
        let invalid = |field| move |source| DecodeError::Invalid { field, source };
        // The ledger's DATETIME(6) columns must store exactly these instants (MariaDB turns what
        // they cannot hold into a zero date without an error).
        if let Some(at) = w.expires_at {
            check_datetime6(at).map_err(invalid("expires_at"))?;
        }
        // `accepted_at` is the sender's own clock, not a client's value: whole microseconds
        // since this version, finer before, so it is cut to what the column holds.
        let accepted_at = w.accepted_at.trunc_subsecs(6);
        check_datetime6(accepted_at).map_err(invalid("accepted_at"))?;
        Ok(Self {
            accrual_id: w.accrual_id,
            job_id: w.job_id,
            accrual: Accrual {
                member_id: MemberId::try_from(w.member_id.as_ref())
                    .map_err(invalid("member_id"))?,
                point_type: PointType::try_from(w.point_type.as_ref())
                    .map_err(invalid("point_type"))?,
                amount: ledger_amount(w.amount, w.reverses).map_err(invalid("amount"))?,
                reason: w
                    .reason
                    .as_deref()
                    .map(Reason::try_from)
                    .transpose()
                    .map_err(invalid("reason"))?,
                expires_at: w.expires_at,
                external_id: w
                    .external_id
                    .as_deref()
                    .map(ExternalId::try_from)
                    .transpose()
                    .map_err(invalid("external_id"))?,
            },
            accepted_at,
            reverses: w.reverses,
        })
    }
}

/// A wire amount as the point's magnitude: positive for a credit, negative for a compensating
/// point (one that `reverses` another), never anything else.
fn ledger_amount(amount: i64, reverses: Option<Uuid>) -> Result<Amount, FieldError> {
    match reverses {
        None => Amount::try_from(amount),
        Some(_) if amount < 0 => Amount::try_from(amount.saturating_neg())
            .map_err(|_| FieldError("of a reversing point must be from -1000000000 to -1")),
        Some(_) => Err(FieldError(
            "of a reversing point must be negative (from -1000000000 to -1)",
        )),
    }
}

/// A received body, decoded: the points to write and the points that can never be written.
#[derive(Debug, Default)]
pub struct Decoded {
    pub points: Vec<PointRecord>,
    /// Points of a packed body that are refused alone, each as a v1 body with the reason.
    pub refused: Vec<RefusedPoint>,
}

/// A point that goes to the dead-letter queue on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct RefusedPoint {
    /// The point as a v1 body (its bytes as received, with `"v":1` put in front).
    pub body: String,
    pub reason: String,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u8,
}

/// Decodes a v1 or v2 body. `Err` means the body as a whole cannot be read (it goes to the
/// dead-letter queue as it is); a v2 body whose envelope is sound decodes each point on its own.
pub fn decode_message(body: &str) -> Result<Decoded, DecodeError> {
    let version = if body.starts_with(V1_PREFIX) {
        MESSAGE_VERSION
    } else if body.starts_with(V2_OPEN) {
        PACKED_VERSION
    } else {
        serde_json::from_str::<VersionOnly>(body)?.v
    };
    match version {
        MESSAGE_VERSION => Ok(Decoded {
            points: vec![PointRecord::decode(body)?],
            refused: Vec::new(),
        }),
        PACKED_VERSION => decode_packed(body),
        v => Err(DecodeError::UnsupportedVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PointRecord {
        PointRecord {
            accrual_id: Uuid::now_v7(),
            job_id: Uuid::now_v7(),
            accrual: Accrual {
                member_id: MemberId::try_from("m-1".to_owned()).expect("valid"),
                point_type: PointType::try_from("WELFARE".to_owned()).expect("valid"),
                amount: Amount::try_from(42).expect("valid"),
                reason: Some(Reason::try_from("\"quoted\" ✓".to_owned()).expect("valid")),
                expires_at: None,
                external_id: None,
            },
            accepted_at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
            reverses: None,
        }
    }

    #[test]
    fn a_reversing_point_carries_a_negative_amount_and_its_original() {
        let mut record = sample();
        record.reverses = Some(Uuid::now_v7());
        record.accrual.external_id = None;
        let body = record.encode();
        assert!(body.contains(r#""amount":-42"#), "{body}");
        assert_eq!(record.ledger_amount(), -42);
        assert_eq!(PointRecord::decode(&body).expect("decodes"), record);
        // A positive amount on a reversing point, or a negative one on a credit, is refused.
        let positive = body.replace(r#""amount":-42"#, r#""amount":42"#);
        assert!(matches!(
            PointRecord::decode(&positive),
            Err(DecodeError::Invalid {
                field: "amount",
                ..
            })
        ));
        let mut credit = sample();
        credit.accrual.external_id = None;
        let negative = credit.encode().replace(r#""amount":42"#, r#""amount":-42"#);
        assert!(matches!(
            PointRecord::decode(&negative),
            Err(DecodeError::Invalid {
                field: "amount",
                ..
            })
        ));
    }

    #[test]
    fn an_external_id_travels_with_the_point_and_is_checked() {
        let mut record = sample();
        record.accrual.external_id = Some(ExternalId::try_from("crm-txn-77").expect("valid"));
        let body = record.encode();
        assert!(body.contains(r#""external_id":"crm-txn-77""#), "{body}");
        assert_eq!(PointRecord::decode(&body).expect("decodes"), record);
        let spaced = body.replace("crm-txn-77", "crm txn");
        assert!(matches!(
            PointRecord::decode(&spaced),
            Err(DecodeError::Invalid {
                field: "external_id",
                ..
            })
        ));
        // Without one, the body has no external_id field at all (old listeners read it unchanged).
        record.accrual.external_id = None;
        assert!(!record.encode().contains("external_id"));
    }

    #[test]
    fn a_record_survives_encode_and_decode() {
        let record = sample();
        let body = record.encode();
        assert!(body.starts_with(r#"{"v":1,"accrual_id":""#), "{body}");
        assert_eq!(PointRecord::decode(&body).expect("decodes"), record);
    }

    #[test]
    fn poison_bodies_are_refused_with_the_field_at_fault() {
        let body = sample().encode();
        let negative = body.replace(r#""amount":42"#, r#""amount":-5"#);
        let err = PointRecord::decode(&negative).expect_err("negative amount");
        assert_eq!(
            err.to_string(),
            "field `amount` must be an integer from 1 to 1000000000"
        );

        let long_member = body.replace(r#""m-1""#, &format!("\"{}\"", "m".repeat(300)));
        assert!(matches!(
            PointRecord::decode(&long_member),
            Err(DecodeError::Invalid {
                field: "member_id",
                ..
            })
        ));
        assert!(matches!(
            PointRecord::decode("not json"),
            Err(DecodeError::Json(_))
        ));
        let no_id = body.replace(r#""accrual_id""#, r#""other""#);
        assert!(PointRecord::decode(&no_id).is_err());
        let v9 = body.replace(r#""v":1"#, r#""v":9"#);
        assert!(matches!(
            PointRecord::decode(&v9),
            Err(DecodeError::UnsupportedVersion(9))
        ));
    }

    fn records(n: usize) -> Vec<PointRecord> {
        (0..n).map(|_| sample()).collect()
    }

    #[test]
    fn packing_one_point_per_message_keeps_the_v1_bodies() {
        let bodies: Vec<String> = records(3).iter().map(PointRecord::encode).collect();
        assert_eq!(pack(bodies.clone(), 1, 256 * 1024).expect("ok"), bodies);
    }

    #[test]
    fn packed_bodies_hold_every_point_once_in_order() {
        let records = records(23);
        let bodies = records.iter().map(PointRecord::encode).collect();
        let packed = pack(bodies, 7, 256 * 1024).expect("ok");
        assert_eq!(packed.len(), 4);
        assert!(
            packed[0].starts_with(r#"{"v":2,"points":[{"accrual_id":"#),
            "{}",
            packed[0]
        );
        let mut points = Vec::new();
        for body in &packed {
            serde_json::from_str::<serde_json::Value>(body).expect("valid JSON");
            let decoded = decode_message(body).expect("decodes");
            assert!(decoded.refused.is_empty());
            points.extend(decoded.points);
        }
        assert_eq!(points, records);
    }

    #[test]
    fn packed_bodies_stay_under_the_byte_limit() {
        let records = records(100);
        let bodies: Vec<String> = records.iter().map(PointRecord::encode).collect();
        let one = bodies[0].len();
        let limit = one * 10;
        let packed = pack(bodies, 100, limit).expect("ok");
        assert!(packed.len() > 1);
        assert!(
            packed.iter().all(|b| b.len() <= limit),
            "a body is over {limit}"
        );
        let total: usize = packed
            .iter()
            .map(|b| decode_message(b).expect("ok").points.len())
            .sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn only_v1_bodies_can_be_packed() {
        let mut bodies: Vec<String> = records(2).iter().map(PointRecord::encode).collect();
        bodies.push("{\"v\":2}".into());
        assert_eq!(pack(bodies, 10, 1 << 20).expect_err("not v1").index, 2);
    }

    #[test]
    fn a_bad_point_in_a_packed_body_is_refused_alone_as_a_v1_body() {
        let records = records(3);
        let bodies = records.iter().map(PointRecord::encode).collect();
        let packed = pack(bodies, 3, 1 << 20).expect("ok").remove(0);
        let bad = packed
            .replacen(r#""amount":42"#, r#""amount":-5"#, 2)
            .replacen(r#""amount":-5"#, r#""amount":42"#, 1);
        let decoded = decode_message(&bad).expect("the envelope is sound");
        assert_eq!(decoded.points, vec![records[0].clone(), records[2].clone()]);
        assert_eq!(decoded.refused.len(), 1);
        let refused = &decoded.refused[0];
        assert_eq!(
            refused.reason,
            "field `amount` must be an integer from 1 to 1000000000"
        );
        let expected = records[1]
            .encode()
            .replace(r#""amount":42"#, r#""amount":-5"#);
        assert_eq!(refused.body, expected);
    }

    #[test]
    fn a_packed_body_that_cannot_be_read_is_refused_whole() {
        assert!(matches!(
            decode_message(r#"{"v":2,"points":[]}"#),
            Err(DecodeError::NoPoints)
        ));
        assert!(matches!(
            decode_message(r#"{"v":2,"points":7}"#),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            decode_message(r#"{"v":3}"#),
            Err(DecodeError::UnsupportedVersion(3))
        ));
        let odd = decode_message(r#"{"v":2,"points":[7, {}]}"#).expect("envelope");
        assert!(odd.points.is_empty());
        let bodies: Vec<&str> = odd.refused.iter().map(|r| r.body.as_str()).collect();
        assert_eq!(bodies, ["7", r#"{"v":1}"#]);
    }

    #[test]
    fn unpack_gives_back_the_v1_bodies_that_were_packed() {
        let bodies: Vec<String> = records(5).iter().map(PointRecord::encode).collect();
        let packed = pack(bodies.clone(), 5, MAX_TEST_BYTES).expect("v1 bodies");
        assert_eq!(unpack(&packed[0]), Some(bodies.clone()));
        assert_eq!(unpack(&bodies[0]), None);
    }

    const MAX_TEST_BYTES: usize = 256 * 1024;

    #[test]
    fn points_in_counts_the_points_a_body_carries() {
        let bodies: Vec<String> = records(9).iter().map(PointRecord::encode).collect();
        assert_eq!(points_in(&bodies[0]), 1);
        let packed = pack(bodies, 9, 1 << 20).expect("ok");
        assert_eq!(points_in(&packed[0]), 9);
        assert_eq!(points_in("not json"), 1);
        assert_eq!(points_in(r#"{"v":2,"points":[]}"#), 1);
    }

    #[test]
    fn timestamps_read_strictly_and_relaxed_alike() {
        let record = sample();
        let body = record.encode();
        let at = record
            .accepted_at
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        assert!(body.contains(&at), "{body}");
        for (from, to) in [("Z\"}", "+00:00\"}"), ("Z\"}", "+09:00\"}"), ("T", " ")] {
            let changed = body.replacen(from, to, 1).replace(
                r#""expires_at":null"#,
                r#""expires_at":"2030-01-02T03:04:05Z""#,
            );
            let decoded = PointRecord::decode(&changed).expect(&changed);
            assert!(decoded.accrual.expires_at.is_some());
            if to.starts_with("+09") {
                assert_eq!(
                    decoded.accepted_at,
                    record.accepted_at - chrono::Duration::hours(9)
                );
            } else {
                assert_eq!(decoded.accepted_at, record.accepted_at);
            }
        }
        let bad = body.replacen(r#""accepted_at":""#, r#""accepted_at":"yesterday"#, 1);
        assert!(matches!(
            PointRecord::decode(&bad),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn v1_bodies_decode_through_decode_message() {
        let record = sample();
        let decoded = decode_message(&record.encode()).expect("ok");
        assert_eq!(decoded.points, vec![record]);
        // Whitespace before the version still reads.
        let spaced = sample().encode().replacen(r#"{"v":1,"#, r#"{ "v": 1, "#, 1);
        assert_eq!(decode_message(&spaced).expect("ok").points.len(), 1);
    }
}
