//! A validated accrual and the all-or-nothing validation of a request's items.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::{Amount, ExternalId, FieldError, MemberId, PointType, Reason, check_datetime6};
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
    /// The client's own id for the item, unique per client across all its jobs.
    pub external_id: Option<ExternalId>,
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
    let mut validator = Validator::new(now, None);
    for item in items {
        validator.push(item);
    }
    validator.finish()
}

/// All-or-nothing validation of items handed over one at a time, in request order (as
/// [`crate::wire::parse_items`] reads them), so the raw items never all exist at once.
#[derive(Debug)]
pub struct Validator {
    /// `expires_at` must lie after this: the request's time, or its `reserve_at` (a point must not
    /// expire before it is credited).
    not_before: DateTime<Utc>,
    /// Set when `not_before` is a `reserve_at`, for the error message.
    reserved: bool,
    next_index: usize,
    accruals: Vec<Accrual>,
    failure: ValidationFailure,
}

impl Validator {
    /// `expires_at` must lie after `now` and, for a reserved accrual, after `reserve_at`.
    pub fn new(now: DateTime<Utc>, reserve_at: Option<DateTime<Utc>>) -> Self {
        Self {
            not_before: reserve_at.map_or(now, |r| r.max(now)),
            reserved: reserve_at.is_some(),
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
        match validate_item(item, self.not_before, self.reserved) {
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

fn validate_item(
    item: RawItem,
    not_before: DateTime<Utc>,
    reserved: bool,
) -> Result<Accrual, FieldErrors> {
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
        .and_then(|s| s.map(|s| expiry(&s, not_before, reserved)).transpose())
        .map_err(|e| fail("expires_at", e));
    let external_id = optional_string(item.external_id)
        .and_then(|r| r.map(ExternalId::try_from).transpose())
        .map_err(|e| fail("external_id", e));
    for name in item.unknown_fields {
        fail(&name, FieldError("is not a known field"));
    }
    for name in item.duplicate_fields {
        fail(name, FieldError("is given more than once"));
    }

    match (
        member_id,
        point_type,
        amount,
        reason,
        expires_at,
        external_id,
    ) {
        (
            Ok(member_id),
            Ok(point_type),
            Ok(amount),
            Ok(reason),
            Ok(expires_at),
            Ok(external_id),
        ) if errors.is_empty() => Ok(Accrual {
            member_id,
            point_type,
            amount,
            reason,
            expires_at,
            external_id,
        }),
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
        // `1e3` and `5.0` are whole numbers to JSON but not to a ledger that stores what was sent:
        // say what to write instead of calling 1000 out of range.
        Some(Loose::Float(f)) if f.fract() == 0.0 => Err(FieldError(
            "must be written as a plain integer (digits only, no decimal point or exponent such as 1e3), from 1 to 1000000000",
        )),
        Some(Loose::Float(_)) => Err(FieldError("must be a whole number, not a fraction")),
        None | Some(Loose::Null) => Err(FieldError("is required")),
        Some(_) => Err(FieldError("must be an integer")),
    }
}

/// An `expires_at`: an instant after `not_before` (the request's time or its `reserve_at`).
fn expiry(
    value: &str,
    not_before: DateTime<Utc>,
    reserved: bool,
) -> Result<DateTime<Utc>, FieldError> {
    let at = future_instant(value, not_before).map_err(|e| {
        if reserved && e.0 == FUTURE {
            FieldError("must be after reserve_at")
        } else {
            e
        }
    })?;
    Ok(at)
}

const FUTURE: &str = "must be in the future";

/// Parses an RFC 3339 instant that must lie after `now` and fit a `DATETIME(6)` column exactly.
pub fn future_instant(value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, FieldError> {
    let at = DateTime::parse_from_rfc3339(value)
        .map_err(|_| FieldError("must be an RFC 3339 date-time, e.g. 2030-01-31T00:00:00Z"))?
        .with_timezone(&Utc);
    check_datetime6(at)?;
    if at <= now {
        return Err(FieldError(FUTURE));
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
    fn an_exponent_is_refused_with_a_message_that_says_so() {
        let failure =
            check(r#"[{"member_id":"a","point_type":"P","amount":1e3}]"#).expect_err("invalid");
        assert!(
            failure.errors[0]
                .message
                .contains("no decimal point or exponent"),
            "{:?}",
            failure.errors
        );
    }

    #[test]
    fn expires_at_must_fit_datetime6_exactly() {
        for bad in [
            "9999-12-31T23:59:59-23:59",
            "2999-06-30T23:59:60Z",
            "2999-01-01T00:00:00.1234567Z",
        ] {
            let body = format!(
                r#"[{{"member_id":"a","point_type":"P","amount":1,"expires_at":"{bad}"}}]"#
            );
            let failure = check(&body).expect_err(bad);
            assert_eq!(failure.errors[0].field, "expires_at", "{bad}");
        }
    }

    #[test]
    fn expires_at_must_come_after_reserve_at() {
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let reserve_at = now + chrono::Duration::days(2);
        let body = |at: DateTime<Utc>| {
            format!(
                r#"[{{"member_id":"a","point_type":"P","amount":1,"expires_at":"{}"}}]"#,
                at.to_rfc3339()
            )
        };
        let run = |body: String| {
            let mut v = Validator::new(now, Some(reserve_at));
            for item in parse_body(body.as_bytes(), 10).expect("json") {
                v.push(item);
            }
            v.finish()
        };
        let failure = run(body(now + chrono::Duration::days(1))).expect_err("before reserve_at");
        assert_eq!(failure.errors[0].message, "must be after reserve_at");
        assert!(run(body(now + chrono::Duration::days(3))).is_ok());
    }

    #[test]
    fn a_reason_with_u_ffff_or_a_nul_is_refused() {
        let failure = check(
            r#"[{"member_id":"a","point_type":"P","amount":1,"reason":"\uFFFF"},
                {"member_id":"a","point_type":"P","amount":1,"reason":"a\u0000b"}]"#,
        )
        .expect_err("invalid");
        assert_eq!(
            fields(failure),
            vec![(0, "reason".into()), (1, "reason".into())]
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
