//! Where a waiting job stands: the points the fair order ([`super::fair`]) dispatches before the
//! job's next chunk and before its last, and from the listeners' measured drain rate an estimated
//! start and finish (`GET /v1/jobs/{job_id}` and its event stream show them while the job has due
//! chunks not yet dispatched).
//!
//! Start-time fair queueing serves each client from its start tag at its weight, and each job in a
//! client from its own start tag, a point at a time. So by the time a client has been served `p`
//! points, every other client `k` has been served `w_k × (S_c + p / w_c − S_k)` of its backlog
//! (none below zero, none above its backlog), and likewise for jobs within a client. The estimate
//! assumes that nothing new arrives: a job posted later by a client behind in its share goes ahead
//! of part of the wait, which the next reading shows.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use accrual_core::job_view::QueuePlace;
use chrono::Utc;
use sqlx::MySqlPool;
use tokio::time::Instant;
use uuid::Uuid;

use super::fair::ClientWeights;

/// How long one reading of the due jobs serves every view (the event streams poll twice a second).
const FRESH_FOR: Duration = Duration::from_secs(1);
/// How old a reading must be before a job missing from it makes a new one.
const RECHECK_AFTER: Duration = Duration::from_millis(100);

/// A job with due points not yet dispatched, with the tags the fair order serves it by.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub job_id: Uuid,
    pub client_id: String,
    /// The job's finish tag (points), its client's finish tag (points / weight) and the clock of
    /// the client's jobs, as in [`super::fair::DueJob`].
    pub job_finish: f64,
    pub client_finish: Option<f64>,
    pub client_clock: Option<f64>,
    /// Its due points not yet dispatched.
    pub points: u64,
}

/// The due jobs, read at most once per [`FRESH_FOR`] for all views of a replica; cheap to clone.
#[derive(Clone, Debug)]
pub struct QueuePlaces {
    weights: Arc<ClientWeights>,
    reading: Arc<tokio::sync::Mutex<Option<Reading>>>,
}

#[derive(Debug)]
struct Reading {
    at: Instant,
    clock: f64,
    jobs: Arc<Vec<Waiting>>,
}

/// What the queue ahead holds and how fast it drains, in points (from the dispatchers' gauges).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drain {
    /// Points already in SQS, ahead of every chunk not yet dispatched.
    pub queued_points: u64,
    pub points_per_second: Option<f64>,
}

impl QueuePlaces {
    /// `weights` are the dispatchers' (`DISPATCH_CLIENT_WEIGHTS`).
    pub fn new(weights: Arc<ClientWeights>) -> Self {
        Self {
            weights,
            reading: Arc::default(),
        }
    }

    /// The job's place, or `None` when it has no due chunk left to dispatch.
    pub async fn place(
        &self,
        pool: &MySqlPool,
        job_id: Uuid,
        drain: Drain,
    ) -> Result<Option<QueuePlace>, sqlx::Error> {
        let (clock, jobs) = {
            let mut reading = self.reading.lock().await;
            // A job missing from a reading may have been posted since: it is read again, unless
            // the reading is brand new.
            let stale = |r: &Reading| {
                r.at.elapsed() >= FRESH_FOR
                    || (r.at.elapsed() >= RECHECK_AFTER
                        && !r.jobs.iter().any(|j| j.job_id == job_id))
            };
            if reading.as_ref().is_none_or(stale) {
                let (clock, jobs) = waiting(pool).await?;
                *reading = Some(Reading {
                    at: Instant::now(),
                    clock,
                    jobs: Arc::new(jobs),
                });
            }
            let r = reading.as_ref().expect("just read");
            (r.clock, r.jobs.clone())
        };
        Ok(points_around(&jobs, clock, &self.weights, job_id)
            .map(|(ahead, through)| estimate(ahead, through, drain)))
    }
}

/// The jobs with due points not yet dispatched, and the clients' clock.
async fn waiting(pool: &MySqlPool) -> Result<(f64, Vec<Waiting>), sqlx::Error> {
    let clock: f64 = sqlx::query_scalar("SELECT tag FROM dispatch_clock WHERE id = 1")
        .fetch_optional(pool)
        .await?
        .unwrap_or(0.0);
    type Row = (Uuid, String, f64, Option<f64>, Option<f64>, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.job_id, MIN(j.client_id), MIN(j.dispatch_finish), MIN(d.finish), MIN(d.clock), \
                CAST(SUM(c.item_count) AS SIGNED) \
         FROM accrual_chunks c \
         JOIN accrual_jobs j ON j.job_id = c.job_id \
         LEFT JOIN dispatch_clients d ON d.client_id = j.client_id \
         WHERE c.dispatched_at IS NULL AND c.due_at <= NOW(6) \
         GROUP BY c.job_id",
    )
    .fetch_all(pool)
    .await?;
    let jobs = rows
        .into_iter()
        .map(
            |(job_id, client_id, job_finish, client_finish, client_clock, points)| Waiting {
                job_id,
                client_id,
                job_finish,
                client_finish,
                client_clock,
                points: points.max(0) as u64,
            },
        )
        .collect();
    Ok((clock, jobs))
}

/// The points the fair order dispatches before `job_id`'s next point and through its last
/// (its own included), or `None` when the job is not among `jobs`.
pub fn points_around(
    jobs: &[Waiting],
    clock: f64,
    weights: &ClientWeights,
    job_id: Uuid,
) -> Option<(u64, u64)> {
    let target = jobs.iter().find(|j| j.job_id == job_id)?;
    let job_start = |j: &Waiting| j.job_finish.max(j.client_clock.unwrap_or(0.0));
    let client_start = |j: &Waiting| j.client_finish.unwrap_or(0.0).max(clock);

    // Within the client: each job from its start tag, a point at a time.
    let start = job_start(target);
    let own_by = |tag: f64| -> f64 {
        jobs.iter()
            .filter(|j| j.client_id == target.client_id && j.job_id != job_id)
            .map(|j| (tag - job_start(j)).clamp(0.0, j.points as f64))
            .sum()
    };
    let own_ahead = own_by(start);
    let own_through = own_by(start + target.points as f64) + target.points as f64;

    // The other clients: each from its start tag, at its weight.
    let mut others: HashMap<&str, (f64, f64)> = HashMap::new();
    for j in jobs.iter().filter(|j| j.client_id != target.client_id) {
        let entry = others.entry(&j.client_id).or_insert((client_start(j), 0.0));
        entry.1 += j.points as f64;
    }
    let weight = weights.of(&target.client_id);
    let from = client_start(target);
    let others_by = |own: f64| -> f64 {
        let tag = from + own / weight;
        others
            .iter()
            .map(|(client, (start, points))| {
                let w = weights.of(client);
                w * (tag - start).clamp(0.0, points / w)
            })
            .sum()
    };
    let ahead = own_ahead + others_by(own_ahead);
    let through = own_through + others_by(own_through);
    Some((ahead.round() as u64, through.round() as u64))
}

/// The place from the points around the job, what is queued and the drain rate; the times to the
/// second, so that an event stream shows a change when the estimate moves, not its jitter.
pub fn estimate(ahead: u64, through: u64, drain: Drain) -> QueuePlace {
    let at = |points: u64| {
        let rate = drain.points_per_second.filter(|r| *r > 0.0)?;
        let secs = ((drain.queued_points + points) as f64 / rate).ceil();
        let secs = i64::try_from(secs as u64).ok()?;
        let now = Utc::now().timestamp();
        chrono::DateTime::from_timestamp(now.checked_add(secs)?, 0)
    };
    QueuePlace {
        points_ahead: drain.queued_points + ahead,
        points_to_finish: drain.queued_points + through,
        estimated_start: at(ahead),
        estimated_finish: at(through),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(client: &str, n: u8, job_finish: f64, client_finish: f64, points: u64) -> Waiting {
        Waiting {
            job_id: Uuid::from_bytes([n; 16]),
            client_id: client.into(),
            job_finish,
            client_finish: Some(client_finish),
            client_clock: Some(0.0),
            points,
        }
    }

    fn id(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    #[test]
    fn a_small_job_of_another_client_waits_for_its_share_not_for_the_campaign() {
        // Client a's campaign has 1,000,000 points left; b posts 50 at the same tags.
        let jobs = vec![
            waiting("a", 1, 0.0, 0.0, 1_000_000),
            waiting("b", 2, 0.0, 0.0, 50),
        ];
        let w = ClientWeights::default();
        // b's points go out in turn with a's: 50 of a's go with them.
        assert_eq!(points_around(&jobs, 0.0, &w, id(2)), Some((0, 100)));
        // a's campaign finishes after all of b's.
        assert_eq!(points_around(&jobs, 0.0, &w, id(1)), Some((0, 1_000_050)));
        assert_eq!(points_around(&jobs, 0.0, &w, id(9)), None);
    }

    #[test]
    fn a_client_ahead_in_its_share_waits_for_the_others_to_catch_up() {
        // a was sent 10,000 points more than b (weights 1): b's 4,000 go first.
        let jobs = vec![
            waiting("a", 1, 0.0, 10_000.0, 500),
            waiting("b", 2, 0.0, 0.0, 4_000),
        ];
        let w = ClientWeights::default();
        assert_eq!(points_around(&jobs, 0.0, &w, id(1)), Some((4_000, 4_500)));
        // With weight 4, b is served four points for each of a's.
        let weighted = ClientWeights::parse("b=4").expect("valid");
        let jobs = vec![
            waiting("a", 1, 0.0, 0.0, 1_000),
            waiting("b", 2, 0.0, 0.0, 10_000),
        ];
        assert_eq!(
            points_around(&jobs, 0.0, &weighted, id(1)),
            Some((0, 5_000))
        );
    }

    #[test]
    fn within_a_client_its_jobs_share_and_the_one_behind_goes_first() {
        let jobs = vec![
            waiting("a", 1, 3_000.0, 0.0, 2_000),
            waiting("a", 2, 0.0, 0.0, 1_000),
        ];
        let w = ClientWeights::default();
        // Job 2 is 3,000 points behind: all of its 1,000 go before job 1's first.
        assert_eq!(points_around(&jobs, 0.0, &w, id(1)), Some((1_000, 3_000)));
        assert_eq!(points_around(&jobs, 0.0, &w, id(2)), Some((0, 1_000)));
    }

    #[test]
    fn the_estimates_count_the_queue_ahead_and_need_a_rate() {
        let drain = Drain {
            queued_points: 1_000,
            points_per_second: Some(1_000.0),
        };
        let place = estimate(2_000, 5_000, drain);
        assert_eq!((place.points_ahead, place.points_to_finish), (3_000, 6_000));
        let now = Utc::now().timestamp();
        let start = place.estimated_start.expect("a rate").timestamp() - now;
        let finish = place.estimated_finish.expect("a rate").timestamp() - now;
        assert!((2..=4).contains(&start), "{start}");
        assert!((5..=7).contains(&finish), "{finish}");
        let unknown = estimate(
            2_000,
            5_000,
            Drain {
                queued_points: 0,
                points_per_second: None,
            },
        );
        assert_eq!(
            (unknown.estimated_start, unknown.estimated_finish),
            (None, None)
        );
    }
}
