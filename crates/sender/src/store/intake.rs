//! An accepted request stored as a job. Its items were parsed and validated above; here they are
//! admitted (their external ids checked, [`super::admission`]), their members made sure of, their
//! chunks encoded, and the job committed with its ids' claim, so no point can be dispatched
//! before its member exists. The rules of a race live here too: when a concurrent request takes
//! one of the ids in between, the items are admitted again, looking the ids up, at most
//! [`CLAIM_ATTEMPTS`] times in all; when a concurrent request with the same `Idempotency-Key`
//! stores its job first, that job is the answer.
//!
//! Two steps, so that the caller can charge the client's points allowance between them:
//! [`Intake::admit`] says which items the job would hold, [`Intake::store`] stores it.

use std::time::Instant;

use accrual_core::accrual::Accrual;
use accrual_core::job_status::JobStatus;
use chrono::{DateTime, Utc};
use sqlx::MySqlPool;
use uuid::Uuid;

use super::admission::{self, Admission, AdmitError, CLAIM_ATTEMPTS};
use super::external_ids::{DuplicateExternalId, OnDuplicate};
use super::jobs::{self, JobRow, NewJob, StoreError};
use super::member_ledger;
use super::members::{self, KnownMembers, MembersError, RequestMembers};
pub use took::Took;
use took::timed;

mod encode;
mod took;

/// What a job is stored with, besides its items.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub client_id: String,
    pub idempotency_key: Option<String>,
    /// The body's SHA-256: a retry with the same key must carry the same body.
    pub body_sha256: [u8; 32],
    pub reserve_at: Option<DateTime<Utc>>,
    /// The job's `created_at` and every point's `accepted_at`, in whole microseconds (what
    /// `DATETIME(6)` stores, so the ledger holds the very instant each message carries).
    pub accepted_at: DateTime<Utc>,
    pub label: Option<String>,
    pub on_duplicate: OnDuplicate,
}

/// Why a request was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// With `on_duplicate=reject`: every item whose id was used before, with where.
    #[error("external ids used before")]
    Duplicates(Vec<DuplicateExternalId>),
    /// Concurrent requests took one of the request's ids at each of its [`CLAIM_ATTEMPTS`].
    #[error("concurrent requests kept taking this request's external ids")]
    Contended,
    /// A concurrent request with the same key stored its job, and the job could not be read.
    #[error("the job of this Idempotency-Key vanished after a concurrent request stored it")]
    KeyVanished,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// Work run off the async workers (sorting members out, encoding chunks) panicked.
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<AdmitError> for IntakeError {
    fn from(e: AdmitError) -> Self {
        match e {
            AdmitError::Duplicates(duplicates) => Self::Duplicates(duplicates),
            AdmitError::Db(e) => Self::Db(e),
        }
    }
}

impl From<MembersError> for IntakeError {
    fn from(e: MembersError) -> Self {
        match e {
            MembersError::Db(e) => Self::Db(e),
            MembersError::Task(e) => Self::Task(e),
        }
    }
}

/// What storing a request came to.
#[derive(Debug)]
pub enum Stored {
    /// The job this request made.
    New(StoredJob),
    /// A concurrent request with the same `Idempotency-Key` stored its job first: that one.
    Existing(JobRow),
}

/// A job as it was stored.
#[derive(Debug)]
pub struct StoredJob {
    pub job_id: Uuid,
    /// Points stored: the items less the skipped ones.
    pub total: usize,
    /// Distinct members of the stored points.
    pub members: usize,
    pub skipped: usize,
    pub status: JobStatus,
}

/// What one attempt to store came to.
enum Attempt {
    Stored(StoredJob),
    /// Another request stored a job with the same key first.
    KeyTaken,
    /// Another request took one of the job's external ids since they were looked up.
    IdTaken,
}

/// A request between its admission and its job.
pub struct Intake {
    pool: MySqlPool,
    known: KnownMembers,
    chunk_items: usize,
    request: JobRequest,
    /// The items, kept for another look should a concurrent request take one of their ids (only
    /// when some item has one: without ids there is nothing to look up, claim or race for).
    items: Option<Vec<Accrual>>,
    /// The members of every item, sorted out with the parse: those of the stored items unless
    /// some are skipped.
    members: Option<RequestMembers>,
    admitted_from: Instant,
    took: Took,
}

impl Intake {
    /// A request to store, with where its time went so far.
    pub fn new(
        pool: MySqlPool,
        known: KnownMembers,
        chunk_items: usize,
        request: JobRequest,
        took: Took,
    ) -> Self {
        Self {
            pool,
            known,
            chunk_items: chunk_items.max(1),
            request,
            items: None,
            members: None,
            admitted_from: Instant::now(),
            took,
        }
    }

    /// The items the job would hold: optimistic at first, the claim itself finds an id used in
    /// an earlier job. `members` are those of every item.
    pub async fn admit(
        &mut self,
        items: Vec<Accrual>,
        members: RequestMembers,
    ) -> Result<Admission, IntakeError> {
        self.admitted_from = Instant::now();
        self.members = Some(members);
        if !items.iter().any(|a| a.external_id.is_some()) {
            return Ok(Admission::every(items));
        }
        self.items = Some(items);
        self.admit_kept(false).await
    }

    /// Stores the job of `admission` (from [`Intake::admit`]), admitting the items again when a
    /// concurrent request takes one of their ids; with where the request's time went.
    pub async fn store(mut self, admission: Admission) -> Result<(Stored, Took), IntakeError> {
        let mut next = Some(admission);
        for attempt in 1..=CLAIM_ATTEMPTS {
            let admission = match next.take() {
                Some(first) => first,
                None => self.admit_kept(true).await?,
            };
            match self.try_store(admission).await? {
                Attempt::Stored(job) => return Ok((Stored::New(job), self.took)),
                Attempt::KeyTaken => {
                    let key = self.request.idempotency_key.as_deref().unwrap_or_default();
                    let existing = jobs::find_by_key(&self.pool, &self.request.client_id, key)
                        .await?
                        .ok_or(IntakeError::KeyVanished)?;
                    return Ok((Stored::Existing(existing), self.took));
                }
                Attempt::IdTaken if self.items.is_some() => {
                    tracing::info!(
                        client_id = %self.request.client_id, attempt,
                        "An external_id was taken meanwhile; looking again"
                    );
                }
                // Without ids no claim can be taken; should it be, there is nothing to look at.
                Attempt::IdTaken => break,
            }
        }
        Err(IntakeError::Contended)
    }

    /// The kept items admitted again, looking their ids up in earlier jobs with `look_up`.
    async fn admit_kept(&mut self, look_up: bool) -> Result<Admission, IntakeError> {
        let items = self.items.as_deref().unwrap_or_default();
        let admitted = admission::admit(
            &self.pool,
            &self.request.client_id,
            items,
            self.request.on_duplicate,
            look_up,
        )
        .await?;
        self.took.lookup = self.admitted_from.elapsed();
        Ok(admitted)
    }

    /// One attempt: the chunks are encoded beside the members' upsert and, after it, the ids'
    /// claim (in the job's own transaction); the job commits only after all three.
    async fn try_store(&mut self, admission: Admission) -> Result<Attempt, IntakeError> {
        let job_id = Uuid::now_v7();
        let Admission {
            kept,
            accrual_ids,
            skips,
        } = admission;
        let external_ids = admission::claims(&kept, &accrual_ids);
        let (kept, member_ids) = match self.members.take() {
            Some(all) if skips.is_empty() => (kept, all),
            _ => {
                let known = self.known.clone();
                tokio::task::spawn_blocking(move || {
                    let members = members::sort_out(&kept, &known);
                    (kept, members)
                })
                .await?
            }
        };
        let parallel_started = Instant::now();
        // A reserved job's sums per member and point type, for members' balances.
        let reserved_amounts = if self.request.reserve_at.is_some() {
            member_ledger::reserved_amounts(&kept)
        } else {
            Vec::new()
        };
        let accepted_at = self.request.accepted_at;
        let encode =
            encode::encode_in_parallel(job_id, accepted_at, accrual_ids, kept, self.chunk_items);
        // The job's transaction is opened only once the members are sorted out: it keeps its
        // connection until the job commits, so opened beside the look-ups and upserts it could
        // leave them waiting for the last connections of the same pool (with one connection, for
        // ever: a 503 after DATABASE_ACQUIRE_TIMEOUT).
        let (pool, known, client_id) = (&self.pool, &self.known, &self.request.client_id);
        let members_then_claim = async {
            let (ensured, members_took) = timed(members::ensure(pool, known, member_ids)).await;
            let ensured = ensured?;
            let claim = jobs::claim(pool, client_id, job_id, &external_ids);
            let (claimed, claim_took) = timed(claim).await;
            Ok::<_, IntakeError>((ensured, claimed, members_took, claim_took))
        };
        let ((chunks, encode_took), admitted) = tokio::join!(timed(encode), members_then_claim);
        self.took.encode = encode_took;
        let chunks = chunks?;
        let (ensured, claimed, members_took, claim_took) = admitted?;
        (self.took.members, self.took.claim) = (members_took, claim_took);
        self.took.new_members = ensured.inserted;
        self.took.parallel = parallel_started.elapsed();
        let request = &self.request;
        let job = NewJob {
            job_id,
            client_id: request.client_id.clone(),
            idempotency_key: request.idempotency_key.clone(),
            body_sha256: request.body_sha256,
            total: chunks.iter().map(|(_, n)| n).sum(),
            members: ensured.total,
            reserve_at: request.reserve_at,
            created_at: request.accepted_at,
            label: request.label.clone(),
            chunks,
            external_ids,
            skips: skips.into_iter().map(|s| s.into_row(job_id)).collect(),
            reserved_amounts,
        };
        let store_started = Instant::now();
        let stored = match claimed {
            Ok(tx) => jobs::insert_claimed(tx, &job).await,
            Err(e) => Err(e),
        };
        self.took.store = store_started.elapsed();
        match stored {
            Ok(()) => Ok(Attempt::Stored(StoredJob {
                job_id,
                total: job.total,
                members: job.members,
                skipped: job.skips.len(),
                status: jobs::initial_status(&job),
            })),
            Err(StoreError::DuplicateKey) => Ok(Attempt::KeyTaken),
            Err(StoreError::ExternalIdTaken) => Ok(Attempt::IdTaken),
            Err(StoreError::Db(e)) => Err(e.into()),
        }
    }
}
