//! Types that exist only to be documented in the OpenAPI contract: what a valid accrual item is
//! (the body is parsed leniently so that every item error can be reported), an item error, an
//! event of a job's stream. Handlers and `error` name them in their annotations; `openapi` lists
//! them, and so never has to be imported by a handler.

use utoipa::ToSchema;

/// One accrual item of a `POST /v1/accruals` body. (The body is parsed leniently so that every
/// item error can be reported; this schema states what a valid item is.)
#[derive(ToSchema)]
#[schema(as = AccrualItem)]
#[allow(dead_code)]
pub struct AccrualItemSchema {
    /// 1-64 characters of `[A-Za-z0-9_.-]`.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9_.-]{1,64}$",
        example = "emp-00042"
    )]
    member_id: String,
    /// 1-32 characters of `[A-Z0-9_]`.
    #[schema(
        min_length = 1,
        max_length = 32,
        pattern = "^[A-Z0-9_]{1,32}$",
        example = "WELFARE"
    )]
    point_type: String,
    /// A plain integer (digits only: `1e3` and `5.0` are refused).
    #[schema(minimum = 1, maximum = 1_000_000_000, example = 500)]
    amount: i64,
    /// At most 255 characters, none of them a C0 control (U+0000-U+001F) or U+FFFE/U+FFFF, which
    /// SQS cannot carry in a message.
    #[schema(max_length = 255, pattern = r"^[^\u0000-\u001F\uFFFE\uFFFF]*$")]
    reason: Option<String>,
    /// RFC 3339, in the future (after `reserve_at` for a reserved accrual), in the years
    /// 1000-9999 once converted to UTC, with at most 6 fractional digits and no leap second:
    /// exactly what the ledger's `DATETIME(6)` stores.
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The client's own id for the item (its transaction id): 1-128 visible ASCII characters,
    /// unique per client across all its jobs (see `on_duplicate`).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[!-~]{1,128}$",
        example = "crm-txn-2026-000042"
    )]
    external_id: Option<String>,
}

/// What is wrong with one field of one item.
#[derive(ToSchema)]
#[schema(as = ItemError)]
#[allow(dead_code)]
pub struct ItemErrorSchema {
    /// Position of the item in the request array, from 0.
    index: u64,
    /// The field at fault, or `item` when the item itself is not an object.
    field: String,
    message: String,
}

/// One Server-Sent Event of `GET /v1/jobs/{job_id}/events`.
#[derive(ToSchema)]
#[schema(as = JobEvent)]
#[allow(dead_code)]
pub struct JobEventSchema {
    /// `progress` on each change, then one `final`.
    #[schema(pattern = "^(progress|final)$")]
    event: String,
    /// The job as JSON (a `JobView`).
    data: String,
}
