//! The query parameters and headers of `POST /v1/accruals`, each checked into its value or a 400
//! (415 for the content type) naming it.

use accrual_core::accrual;
use accrual_core::domain::Label;
use axum::http::{HeaderMap, header};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::MAX_RESERVE_DAYS;
use crate::http::error::ApiError;
use crate::store::external_ids::OnDuplicate;

/// The query parameters `POST /v1/accruals` knows; any other is refused with a 400, so a typo
/// (`reserveAt`, `dryrun`) never turns into an immediate, real job.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostParams {
    /// RFC 3339 instant: makes the job a reserved accrual released at that time.
    pub reserve_at: Option<String>,
    /// `true`: check the request and say what it would do, storing and sending nothing.
    pub dry_run: Option<String>,
    /// The client's name for the job (a campaign).
    pub label: Option<String>,
    /// `reject` (default) or `skip`: what to do with items whose `external_id` was used before.
    pub on_duplicate: Option<String>,
}

/// `true` or `false`, nothing else: a `dry_run=1` or `dry_run=yes` that were taken for `false`
/// would store and send a real job.
pub fn flag(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::InvalidParameter(format!(
            "{name} must be true or false"
        ))),
    }
}

pub fn on_duplicate(value: Option<&str>) -> Result<OnDuplicate, ApiError> {
    OnDuplicate::parse(value)
        .ok_or_else(|| ApiError::InvalidParameter("on_duplicate must be reject or skip".into()))
}

pub fn label(value: Option<String>) -> Result<Option<Label>, ApiError> {
    value
        .map(|l| Label::try_from(l).map_err(|e| ApiError::InvalidParameter(format!("label {e}"))))
        .transpose()
}

pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default();
    if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::InvalidParameter(
            "Idempotency-Key must be 1 to 128 visible ASCII characters".into(),
        ));
    }
    Ok(Some(key.to_owned()))
}

pub fn reserve_at(value: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    let at = accrual::future_instant(value, now)
        .map_err(|e| ApiError::InvalidParameter(format!("reserve_at {e}")))?;
    if at > now + chrono::Duration::days(MAX_RESERVE_DAYS) {
        return Err(ApiError::InvalidParameter(format!(
            "reserve_at must be at most {MAX_RESERVE_DAYS} days ahead"
        )));
    }
    Ok(at)
}

pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use chrono::SubsecRound;

    #[test]
    fn json_content_types_are_recognised_with_parameters() {
        let mut h = HeaderMap::new();
        assert!(require_json(&h).is_err());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(require_json(&h).is_ok());
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(matches!(
            require_json(&h),
            Err(ApiError::UnsupportedMediaType)
        ));
    }

    #[test]
    fn reserve_at_must_be_future_and_within_ninety_days() {
        let now = Utc::now().trunc_subsecs(6);
        let at = |d: chrono::Duration| (now + d).to_rfc3339();
        assert!(reserve_at(&at(chrono::Duration::seconds(5)), now).is_ok());
        assert!(
            reserve_at(
                &at(chrono::Duration::days(90) - chrono::Duration::seconds(1)),
                now
            )
            .is_ok()
        );
        assert!(reserve_at(&at(chrono::Duration::days(91)), now).is_err());
        assert!(reserve_at(&at(-chrono::Duration::seconds(1)), now).is_err());
        assert!(reserve_at("tomorrow", now).is_err());
    }

    #[test]
    fn idempotency_keys_are_one_to_128_visible_characters() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h).ok(), Some(None));
        h.insert("idempotency-key", HeaderValue::from_static("order-42"));
        assert_eq!(idempotency_key(&h).ok(), Some(Some("order-42".into())));
        h.insert(
            "idempotency-key",
            HeaderValue::from_str(&"k".repeat(129)).expect("header"),
        );
        assert!(idempotency_key(&h).is_err());
        h.insert("idempotency-key", HeaderValue::from_static("a b"));
        assert!(idempotency_key(&h).is_err());
    }

    #[test]
    fn a_flag_is_true_or_false_and_nothing_else() {
        assert_eq!(flag("dry_run", None).ok(), Some(false));
        assert_eq!(flag("dry_run", Some("false")).ok(), Some(false));
        assert_eq!(flag("dry_run", Some("true")).ok(), Some(true));
        for bad in ["", "1", "0", "yes", "TRUE", "True", "true "] {
            let refused = flag("dry_run", Some(bad));
            assert!(
                matches!(&refused, Err(ApiError::InvalidParameter(m)) if m.contains("dry_run")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_bad_label_is_a_400_naming_label() {
        assert_eq!(
            label(Some("spring-2026".into()))
                .ok()
                .flatten()
                .map(|l| l.to_string()),
            Some("spring-2026".to_owned())
        );
        for bad in ["", "a b", "x\u{7}"] {
            let refused = label(Some(bad.to_owned()));
            assert!(
                matches!(&refused, Err(ApiError::InvalidParameter(m)) if m.starts_with("label ")),
                "{bad:?}"
            );
        }
    }
}
