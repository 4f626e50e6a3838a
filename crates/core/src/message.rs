//! The SQS message body: one point per message (`"v":1`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::accrual::Accrual;
use crate::domain::{Amount, FieldError, MemberId, PointType, Reason};

/// The body version this code writes.
pub const MESSAGE_VERSION: u8 = 1;

/// One point on its way to the ledger: what the sender accepted plus the ids that make it unique.
#[derive(Debug, Clone, PartialEq)]
pub struct PointRecord {
    /// Idempotency key: assigned once at acceptance, unique in `point_accruals`.
    pub accrual_id: Uuid,
    pub job_id: Uuid,
    pub accrual: Accrual,
    pub accepted_at: DateTime<Utc>,
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
}

#[derive(Deserialize)]
struct WireIn {
    v: u8,
    accrual_id: Uuid,
    job_id: Uuid,
    member_id: String,
    point_type: String,
    amount: i64,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    accepted_at: DateTime<Utc>,
}

/// Why a message body cannot become a ledger row. Each is final: retrying cannot fix it.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("body is not a valid accrual message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported message version {0}")]
    UnsupportedVersion(u8),
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
            amount: a.amount.get(),
            reason: a.reason.as_ref().map(Reason::as_str),
            expires_at: a.expires_at,
            accepted_at: self.accepted_at,
        };
        // Serialising a struct of strings, numbers and timestamps into a String cannot fail.
        serde_json::to_string(&out).unwrap_or_default()
    }

    /// Reads a message body, validating every field as the API does (but for `expires_at`,
    /// which may have passed while the point waited in the queue).
    pub fn decode(body: &str) -> Result<Self, DecodeError> {
        let w: WireIn = serde_json::from_str(body)?;
        if w.v != MESSAGE_VERSION {
            return Err(DecodeError::UnsupportedVersion(w.v));
        }
        let invalid = |field| move |source| DecodeError::Invalid { field, source };
        Ok(Self {
            accrual_id: w.accrual_id,
            job_id: w.job_id,
            accrual: Accrual {
                member_id: MemberId::try_from(w.member_id).map_err(invalid("member_id"))?,
                point_type: PointType::try_from(w.point_type).map_err(invalid("point_type"))?,
                amount: Amount::try_from(w.amount).map_err(invalid("amount"))?,
                reason: w
                    .reason
                    .map(Reason::try_from)
                    .transpose()
                    .map_err(invalid("reason"))?,
                expires_at: w.expires_at,
            },
            accepted_at: w.accepted_at,
        })
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
            },
            accepted_at: Utc::now(),
        }
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
}
