//! Which items of a request a job stores: each gets its `accrual_id`, and an item whose
//! `external_id` the client used before (in an earlier job, or earlier in the request) is refused
//! (`on_duplicate=reject`) or left out and recorded as skipped (`skip`).
//!
//! The look-up is optimistic: a first attempt checks the request against itself only, and the
//! job's transaction finds an id of an earlier job by the claim's unique key
//! ([`super::jobs::claim`]); the request then comes back here with `look_up`, at most
//! [`CLAIM_ATTEMPTS`] times in all.

use std::collections::HashMap;

use accrual_core::accrual::Accrual;
use sqlx::MySqlPool;
use uuid::Uuid;

use super::external_ids::{self, DuplicateExternalId, FirstUse, Holder, OnDuplicate};
use super::jobs::SkippedItem;

/// How many times a request looks its external ids up again after a concurrent request took one.
pub const CLAIM_ATTEMPTS: u32 = 3;

/// Why a request's items cannot be admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// With `on_duplicate=reject`: every item whose id was used before, with where.
    #[error("external ids used before")]
    Duplicates(Vec<DuplicateExternalId>),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The items a request stores, after its external ids are checked.
pub struct Admission {
    pub kept: Vec<Accrual>,
    /// The `accrual_id` of each kept item.
    pub accrual_ids: Vec<Uuid>,
    pub skips: Vec<Skip>,
}

/// An item left out, and where its id was used first.
pub struct Skip {
    index: usize,
    accrual: Accrual,
    first: Holder,
    /// The id was used first earlier in this request (its holder is in this job).
    in_request: bool,
}

impl Skip {
    /// The row that records the skip in `accrual_job_skips`, for the job `job_id`.
    pub fn into_row(self, job_id: Uuid) -> SkippedItem {
        let a = self.accrual;
        SkippedItem {
            index: self.index,
            external_id: a
                .external_id
                .map(|e| e.as_str().to_owned())
                .unwrap_or_default(),
            member_id: a.member_id.as_str().to_owned(),
            point_type: a.point_type.as_str().to_owned(),
            amount: a.amount.get(),
            existing_accrual_id: self.first.accrual_id,
            existing_job_id: if self.in_request {
                job_id
            } else {
                self.first.job_id
            },
        }
    }
}

impl Admission {
    /// Every item, each with a new `accrual_id`.
    pub fn every(accruals: Vec<Accrual>) -> Self {
        Self {
            accrual_ids: fresh_ids(accruals.len()),
            kept: accruals,
            skips: Vec::new(),
        }
    }
}

fn fresh_ids(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::now_v7()).collect()
}

/// Checks the request's external ids against each other and, with `look_up` or when the request
/// repeats one of its own, against the client's earlier jobs: with repeats, `reject` refuses the
/// request (422 listing each) and `skip` leaves them out. Without `look_up`, an id of an earlier
/// job is found by the claim (its unique key), and the request comes back here to look.
pub async fn admit(
    pool: &MySqlPool,
    client_id: &str,
    accruals: &[Accrual],
    on_duplicate: OnDuplicate,
    look_up: bool,
) -> Result<Admission, AdmitError> {
    let mut repeats = external_ids::repeats(accruals, &HashMap::new());
    if look_up || !repeats.is_empty() {
        let stored = external_ids::lookup(pool, client_id, accruals).await?;
        repeats = external_ids::repeats(accruals, &stored);
    }
    if !repeats.is_empty() && on_duplicate == OnDuplicate::Reject {
        return Err(AdmitError::Duplicates(external_ids::describe(
            accruals, &repeats,
        )));
    }
    let ids = fresh_ids(accruals.len());
    let mut repeats = repeats.into_iter().peekable();
    let mut admission = Admission {
        kept: Vec::with_capacity(accruals.len()),
        accrual_ids: Vec::with_capacity(accruals.len()),
        skips: Vec::new(),
    };
    for (index, accrual) in accruals.iter().enumerate() {
        match repeats.next_if(|(i, _)| *i == index) {
            None => {
                admission.kept.push(accrual.clone());
                admission.accrual_ids.push(ids[index]);
            }
            Some((_, first)) => {
                let (first, in_request) = match first {
                    FirstUse::Stored(holder) => (holder, false),
                    FirstUse::InRequest(first) => (
                        Holder {
                            accrual_id: ids[first],
                            job_id: Uuid::nil(),
                        },
                        true,
                    ),
                };
                admission.skips.push(Skip {
                    index,
                    accrual: accrual.clone(),
                    first,
                    in_request,
                });
            }
        }
    }
    Ok(admission)
}

/// `(external_id, accrual_id)` of every kept item that has an id.
pub fn claims(kept: &[Accrual], accrual_ids: &[Uuid]) -> Vec<(String, Uuid)> {
    kept.iter()
        .zip(accrual_ids)
        .filter_map(|(a, id)| a.external_id.as_ref().map(|e| (e.as_str().to_owned(), *id)))
        .collect()
}
