//! Property: whatever the validator accepts can travel the whole pipeline unchanged. Its v1 message
//! body holds only characters SQS accepts, every value fits its ledger column exactly, and the
//! listener's decoder (which applies the same rules) gives back the very record the sender made.

use accrual_core::accrual::validate;
use accrual_core::domain::{
    MEMBER_ID_MAX_LEN, POINT_TYPE_MAX_LEN, REASON_MAX_CHARS, check_datetime6, sqs_body_char,
};
use accrual_core::message::PointRecord;
use accrual_core::wire::{MAX_ITEMS_PER_REQUEST, parse_body};
use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use uuid::Uuid;

/// Any character at all, with the troublesome ones (controls, non-characters, the edges of the
/// SQS ranges) made frequent.
fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        any::<char>(),
        prop::sample::select(vec![
            '\0',
            '\t',
            '\n',
            '\r',
            '\u{1F}',
            ' ',
            '\u{7F}',
            '\u{D7FF}',
            '\u{E000}',
            '\u{FFFD}',
            '\u{FFFE}',
            '\u{FFFF}',
            '\u{10000}',
            '\u{10FFFF}',
            '"',
            '\\',
            'ポ',
        ]),
        prop::char::range('a', 'z'),
    ]
}

fn any_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any_char(), 0..max).prop_map(|c| c.into_iter().collect())
}

/// RFC 3339 texts around the edges of what `DATETIME(6)` holds: far years, extreme offsets, leap
/// seconds and up to nine fractional digits.
fn any_instant() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just(2999), Just(9999), Just(1000), 2000..10_000i32],
        1..=12u32,
        1..=28u32,
        0..=23u32,
        0..=59u32,
        prop_oneof![0..=59u32, Just(60)],
        prop_oneof![
            Just(String::new()),
            (0..1_000_000_000u32, 1..=9usize)
                .prop_map(|(n, digits)| format!(".{:09}", n)[..=digits].to_owned()),
        ],
        prop_oneof![
            Just("Z".to_owned()),
            (-23..=23i32, 0..=59u32).prop_map(|(h, m)| format!(
                "{}{:02}:{m:02}",
                if h < 0 { '-' } else { '+' },
                h.abs()
            )),
        ],
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, off)| {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{off}")
        })
}

fn any_amount() -> impl Strategy<Value = String> {
    prop_oneof![
        (-5i64..2_000_000_000).prop_map(|n| n.to_string()),
        Just("1e3".to_owned()),
        Just("5.0".to_owned()),
        Just("18446744073709551616".to_owned()),
    ]
}

fn any_item() -> impl Strategy<Value = String> {
    (
        prop_oneof![any_text(70), "[A-Za-z0-9_.-]{1,64}"],
        prop_oneof![any_text(34), "[A-Z0-9_]{1,32}"],
        any_amount(),
        prop::option::of(prop_oneof![any_text(300), "[ -~]{0,255}"]),
        prop::option::of(any_instant()),
    )
        .prop_map(|(member, point_type, amount, reason, expires_at)| {
            let mut item = serde_json::json!({"member_id": member, "point_type": point_type});
            let mut text = item.to_string();
            text.pop();
            text.push_str(&format!(r#","amount":{amount}"#));
            if let Some(reason) = reason {
                item = serde_json::json!(reason);
                text.push_str(&format!(r#","reason":{item}"#));
            }
            if let Some(at) = expires_at {
                text.push_str(&format!(r#","expires_at":"{at}""#));
            }
            text.push('}');
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn what_the_validator_accepts_reaches_sqs_and_the_ledger_unchanged(item in any_item()) {
        let body = format!("[{item}]");
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let items = parse_body(body.as_bytes(), MAX_ITEMS_PER_REQUEST).expect("the test builds JSON");
        let Ok(accruals) = validate(items, now) else {
            return Ok(());
        };
        for accrual in accruals {
            let record = PointRecord {
                accrual_id: Uuid::now_v7(),
                job_id: Uuid::now_v7(),
                accrual,
                accepted_at: now,
                reverses: None,
            };
            let message = record.encode();
            // SQS's character rule for message bodies.
            prop_assert!(message.chars().all(sqs_body_char), "{message:?}");
            // The ledger's columns.
            let a = &record.accrual;
            prop_assert!(a.member_id.as_str().is_ascii() && a.member_id.as_str().len() <= MEMBER_ID_MAX_LEN);
            prop_assert!(a.point_type.as_str().is_ascii() && a.point_type.as_str().len() <= POINT_TYPE_MAX_LEN);
            if let Some(reason) = &a.reason {
                prop_assert!(reason.as_str().chars().count() <= REASON_MAX_CHARS);
            }
            prop_assert!((1..=i64::from(i32::MAX) * 1_000).contains(&a.amount.get()));
            if let Some(at) = a.expires_at {
                prop_assert!(check_datetime6(at).is_ok(), "{at:?}");
            }
            // The listener reads back exactly what was accepted.
            let decoded = PointRecord::decode(&message);
            prop_assert!(decoded.is_ok(), "{message}: {decoded:?}");
            prop_assert_eq!(decoded.ok(), Some(record));
        }
    }
}
