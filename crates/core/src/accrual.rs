//! A validated accrual and the all-or-nothing validation of a request's items.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{Amount, FieldError, MemberId, PointType, Reason};
use crate::wire::{Loose, RawItem};

/// Most item errors one 422 response lists; the total is reported beside them.
pub const MAX_REPORTED_ERRORS: usize = 1_000;

/// One point to credit, valid in every field.
#[derive(Debug, Clone, PartialEq)]
pub struct Accrual {
    pub member_id: MemberId,
    pub point_type: PointType,
    pub amount: Amount,
    pub reason: Option<Reason>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// What is wrong with one field of one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemError {
    /// Position of the item in the request array, from 0.
    pub index: usize,
    /// The field at fault, or `"item"` when the item itself is not an object.
    pub field: String,
    pub message: String,
}

/// Every reason a request's items were refused: the first [`MAX_REPORTED_ERRORS`] and the count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{total} invalid field(s) in the accrual items")]
pub struct ValidationFailure {
    pub errors: Vec<ItemError>,
    pub total: usize,
}

/// Validates every item; returns all of them or none.
///
/// `now` is the instant `expires_at` must lie after.
pub fn validate(
    items: Vec<RawItem>,
    now: DateTime<Utc>,
) -> Result<Vec<Accrual>, ValidationFailure> {
    let mut validator = Validator::new(now);
    for item in items {
        validator.push(item);
    }
    validator.finish()
}

/// All-or-nothing validation of items handed over one at a time, in request order (as
/// [`crate::wire::parse_items`] reads them), so the raw items never all exist at once.
#[derive(Debug)]
pub struct Validator {
    now: DateTime<Utc>,
    next_index: usize,
    accruals: Vec<Accrual>,
    failure: ValidationFailure,
}

impl Validator {
    /// `now` is the instant `expires_at` must lie after.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            now,
            next_index: 0,
            accruals: Vec::new(),
            failure: ValidationFailure {
                errors: Vec::new(),
                total: 0,
            },
        }
    }

    /// Validates the next item.
    pub fn push(&mut self, item: RawItem) {
        let index = self.next_index;
        self.next_index += 1;
        let failure = &mut self.failure;
        match validate_item(item, self.now) {
            // Once anything failed, valid items are no longer kept: nothing will be stored.
            Ok(accrual) if failure.total == 0 => self.accruals.push(accrual),
            Ok(_) => {}
            Err(errors) => {
                if failure.total == 0 {
                    self.accruals = Vec::new();
                }
                for (field, message) in errors {
                    failure.total += 1;
                    if failure.errors.len() < MAX_REPORTED_ERRORS {
                        failure.errors.push(ItemError {
                            index,
                            field,
                            message,
                        });
                    }
                }
            }
        }
    }

    /// Every item as an accrual, or every error found.
    pub fn finish(self) -> Result<Vec<Accrual>, ValidationFailure> {
        if self.failure.total == 0 {
            Ok(self.accruals)
        } else {
            Err(self.failure)
        }
    }
}

type FieldErrors = Vec<(String, String)>;

fn validate_item(item: RawItem, now: DateTime<Utc>) -> Result<Accrual, FieldErrors> {
    if !item.is_object {
        return Err(vec![("item".into(), "must be a JSON object".into())]);
    }
    let mut errors: FieldErrors = Vec::new();
    let mut fail = |field: &str, e: FieldError| errors.push((field.to_owned(), e.0.to_owned()));

    let member_id = required_string(item.member_id)
        .and_then(MemberId::try_from)
        .map_err(|e| fail("member_id", e));
    let point_type = required_string(item.point_type)
        .and_then(PointType::try_from)
        .map_err(|e| fail("point_type", e));
    let amount = integer(item.amount)
        .and_then(Amount::try_from)
        .map_err(|e| fail("amount", e));
    let reason = optional_string(item.reason)
        .and_then(|r| r.map(Reason::try_from).transpose())
        .map_err(|e| fail("reason", e));
    let expires_at = optional_string(item.expires_at)
        .and_then(|s| s.map(|s| future_instant(&s, now)).transpose())
        .map_err(|e| fail("expires_at", e));
    for name in item.unknown_fields {
        fail(&name, FieldError("is not a known field"));
    }
    for name in item.duplicate_fields {
        fail(name, FieldError("is given more than once"));
    }

    match (member_id, point_type, amount, reason, expires_at) {
        (Ok(member_id), Ok(point_type), Ok(amount), Ok(reason), Ok(expires_at))
            if errors.is_empty() =>
        {
            Ok(Accrual {
                member_id,
                point_type,
                amount,
                reason,
                expires_at,
            })
        }
        _ => Err(errors),
    }
}

fn required_string(value: Option<Loose>) -> Result<String, FieldError> {
    match value {
        Some(Loose::Str(s)) => Ok(s),
        None | Some(Loose::Null) => Err(FieldError("is required")),
        Some(_) => Err(FieldError("must be a string")),
    }
}

fn optional_string(value: Option<Loose>) -> Result<Option<String>, FieldError> {
    match value {
        None | Some(Loose::Null) => Ok(None),
        Some(Loose::Str(s)) => Ok(Some(s)),
        Some(_) => Err(FieldError("must be a string or null")),
    }
}

fn integer(value: Option<Loose>) -> Result<i64, FieldError> {
    match value {
        Some(Loose::Int(n)) => Ok(n),
        Some(Loose::BigInt) => Err(FieldError("must be an integer from 1 to 1000000000")),
        Some(Loose::Float(f)) if f.fract() == 0.0 => {
            Err(FieldError("must be an integer from 1 to 1000000000"))
        }
        None | Some(Loose::Null) => Err(FieldError("is required")),
        Some(_) => Err(FieldError("must be an integer")),
    }
}

/// Parses an RFC 3339 instant that must lie after `now`.
pub fn future_instant(value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, FieldError> {
    let at = DateTime::parse_from_rfc3339(value)
        .map_err(|_| FieldError("must be an RFC 3339 date-time, e.g. 2030-01-31T00:00:00Z"))?
        .with_timezone(&Utc);
    if at <= now {
        return Err(FieldError("must be in the future"));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{MAX_ITEMS_PER_REQUEST, parse_body};

    fn check(body: &str) -> Result<Vec<Accrual>, ValidationFailure> {
        validate(
            parse_body(body.as_bytes(), MAX_ITEMS_PER_REQUEST).expect("json"),
            Utc::now(),
        )
    }

    fn fields(failure: ValidationFailure) -> Vec<(usize, String)> {
        failure
            .errors
            .into_iter()
            .map(|e| (e.index, e.field))
            .collect()
    }

    #[test]
    fn a_valid_item_becomes_an_accrual() {
        let accruals = check(
            r#"[{"member_id":"m-1","point_type":"WELFARE","amount":500,
                 "reason":"ポイント","expires_at":"2999-01-01T00:00:00+09:00"}]"#,
        )
        .expect("valid");
        assert_eq!(accruals[0].member_id.as_str(), "m-1");
        assert_eq!(accruals[0].amount.get(), 500);
        assert_eq!(
            accruals[0].reason.as_ref().map(Reason::as_str),
            Some("ポイント")
        );
        assert_eq!(
            accruals[0].expires_at.map(|t| t.to_rfc3339()),
            Some("2998-12-31T15:00:00+00:00".to_owned())
        );
    }

    #[test]
    fn every_bad_field_of_every_item_is_reported() {
        let failure = check(
            r#"[{"member_id":"ok","point_type":"P","amount":1},
                {"member_id":"","point_type":"p","amount":1.5,"reason":3,"extra":1},
                {"point_type":"P","amount":"1","expires_at":"2000-01-01T00:00:00Z"},
                7]"#,
        )
        .expect_err("invalid");
        assert_eq!(failure.total, 9);
        assert_eq!(
            fields(failure),
            vec![
                (1, "member_id".into()),
                (1, "point_type".into()),
                (1, "amount".into()),
                (1, "reason".into()),
                (1, "extra".into()),
                (2, "member_id".into()),
                (2, "amount".into()),
                (2, "expires_at".into()),
                (3, "item".into()),
            ]
        );
    }

    #[test]
    fn whole_floats_and_huge_numbers_are_out_of_range() {
        let failure = check(
            r#"[{"member_id":"a","point_type":"P","amount":5.0},
                {"member_id":"a","point_type":"P","amount":99999999999999999999},
                {"member_id":"a","point_type":"P","amount":1e300}]"#,
        )
        .expect_err("invalid");
        assert_eq!(failure.total, 3);
        assert!(
            failure
                .errors
                .iter()
                .all(|e| e.message.contains("from 1 to"))
        );
    }

    #[test]
    fn null_optional_fields_are_absent_and_null_required_fields_are_missing() {
        let ok = check(
            r#"[{"member_id":"a","point_type":"P","amount":1,"reason":null,"expires_at":null}]"#,
        )
        .expect("valid");
        assert_eq!(ok[0].reason, None);
        let failure =
            check(r#"[{"member_id":null,"point_type":"P","amount":null}]"#).expect_err("invalid");
        assert!(failure.errors.iter().all(|e| e.message == "is required"));
    }

    #[test]
    fn only_the_first_thousand_errors_are_listed_but_all_are_counted() {
        let body = format!("[{}]", vec!["{}"; 600].join(","));
        let failure = check(&body).expect_err("invalid");
        assert_eq!(failure.total, 1_800);
        assert_eq!(failure.errors.len(), MAX_REPORTED_ERRORS);
    }
}
