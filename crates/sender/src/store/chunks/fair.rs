//! The order in which due chunks are dispatched: shared fairly by client, then by job within a
//! client, by start-time fair queueing over points (migration 0011 says how the tags work).
//!
//! A claim reads the due chunks' jobs with their tags (a consistent read, no lock), orders them
//! here, and the caller locks the first job's next chunk it can; [`charge`] then moves the tags on
//! by that chunk's points, in the claim's transaction. Two claims at once may read the same tags
//! and pick alike: the updates take the larger value (`GREATEST`), so none is lost, and the order
//! stays fair over many chunks rather than exact for each.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use sqlx::{MySql, MySqlPool, Transaction};
use uuid::Uuid;

/// Each client's share of dispatch, relative to the others (1 unless configured).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientWeights(HashMap<String, f64>);

impl ClientWeights {
    /// Parses `client=weight` pairs separated by commas (e.g. `crm=3,service=1`); each weight is a
    /// number from 0.01 to 1000. Empty: every client weighs 1.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut weights = HashMap::new();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (client, weight) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not client=weight"))?;
            let client = client.trim();
            if client.is_empty() {
                return Err(format!("`{pair}` names no client"));
            }
            let weight: f64 = weight
                .trim()
                .parse()
                .map_err(|_| format!("the weight of {client} is not a number"))?;
            if !(0.01..=1000.0).contains(&weight) {
                return Err(format!("the weight of {client} must be 0.01-1000"));
            }
            if weights.insert(client.to_owned(), weight).is_some() {
                return Err(format!("{client} is weighed twice"));
            }
        }
        Ok(Self(weights))
    }

    /// The client's weight: its configured one, or 1.
    pub fn of(&self, client_id: &str) -> f64 {
        self.0.get(client_id).copied().unwrap_or(1.0)
    }
}

/// A job with due chunks nobody has dispatched, as the order sees it.
#[derive(Debug, Clone)]
pub struct DueJob {
    pub job_id: Uuid,
    pub client_id: String,
    /// The job's finish tag, in points.
    pub job_finish: f64,
    /// Its client's finish tag (points / weight) and the clock of the client's jobs; `None` for
    /// a client never dispatched (its row is made before the claim, at 0).
    pub client_finish: Option<f64>,
    pub client_clock: Option<f64>,
    /// Its oldest due chunk's `due_at`: first come, first served among equal tags.
    pub oldest_due: NaiveDateTime,
}

/// Where a chosen job stood when it was chosen: what [`charge`] moves on.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub job_id: Uuid,
    pub client_id: String,
    /// The client's start tag, and the job's within the client.
    pub client_start: f64,
    pub job_start: f64,
    /// The clients' clock when the job was chosen.
    pub clock: f64,
}

/// The jobs with a due, undispatched chunk (leased or not: the caller's lock skips those held),
/// in the order they should be served.
pub async fn due_jobs(pool: &MySqlPool) -> Result<Vec<Turn>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let clock: f64 = sqlx::query_scalar("SELECT tag FROM dispatch_clock WHERE id = 1")
        .fetch_optional(&mut *conn)
        .await?
        .unwrap_or(0.0);
    // Only the columns of the due index (and the primary key it carries) are read from the
    // chunks; MIN() over the job's and client's columns, which the job fixes, keeps the query
    // valid under ONLY_FULL_GROUP_BY.
    type Row = (Uuid, String, f64, Option<f64>, Option<f64>, NaiveDateTime);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.job_id, MIN(j.client_id) AS client_id, MIN(j.dispatch_finish) AS job_finish, \
                MIN(d.finish) AS client_finish, MIN(d.clock) AS client_clock, \
                MIN(c.due_at) AS oldest_due \
         FROM accrual_chunks c \
         JOIN accrual_jobs j ON j.job_id = c.job_id \
         LEFT JOIN dispatch_clients d ON d.client_id = j.client_id \
         WHERE c.dispatched_at IS NULL AND c.due_at <= NOW(6) \
         GROUP BY c.job_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let jobs: Vec<DueJob> = rows
        .into_iter()
        .map(
            |(job_id, client_id, job_finish, client_finish, client_clock, oldest_due)| DueJob {
                job_id,
                client_id,
                job_finish,
                client_finish,
                client_clock,
                oldest_due,
            },
        )
        .collect();
    // A new client's row exists before any claim's transaction updates it: inserted inside, two
    // claims for the same new client could deadlock on the insert.
    let mut new_clients: Vec<&str> = jobs
        .iter()
        .filter(|j| j.client_finish.is_none())
        .map(|j| j.client_id.as_str())
        .collect();
    new_clients.sort_unstable();
    new_clients.dedup();
    for client_id in new_clients {
        sqlx::query(
            "INSERT IGNORE INTO dispatch_clients (client_id, finish, clock) VALUES (?, 0, 0)",
        )
        .bind(client_id)
        .execute(&mut *conn)
        .await?;
    }
    Ok(order(jobs, clock))
}

/// The order of service: clients by start tag (the larger of their finish tag and the clock),
/// then by their oldest due chunk; each client's jobs likewise against the client's clock.
pub fn order(jobs: Vec<DueJob>, clock: f64) -> Vec<Turn> {
    let mut clients: HashMap<String, (f64, NaiveDateTime)> = HashMap::new();
    for job in &jobs {
        let start = job.client_finish.unwrap_or(0.0).max(clock);
        let entry = clients
            .entry(job.client_id.clone())
            .or_insert((start, job.oldest_due));
        entry.1 = entry.1.min(job.oldest_due);
    }
    let mut turns: Vec<(Turn, NaiveDateTime, NaiveDateTime)> = jobs
        .into_iter()
        .map(|job| {
            let (client_start, client_oldest) = clients[&job.client_id];
            let turn = Turn {
                job_start: job.job_finish.max(job.client_clock.unwrap_or(0.0)),
                job_id: job.job_id,
                client_id: job.client_id,
                client_start,
                clock,
            };
            (turn, client_oldest, job.oldest_due)
        })
        .collect();
    turns.sort_by(|(a, a_client_due, a_due), (b, b_client_due, b_due)| {
        a.client_start
            .total_cmp(&b.client_start)
            .then(a_client_due.cmp(b_client_due))
            .then_with(|| a.client_id.cmp(&b.client_id))
            .then(a.job_start.total_cmp(&b.job_start))
            .then(a_due.cmp(b_due))
            .then(a.job_id.cmp(&b.job_id))
    });
    turns.into_iter().map(|(turn, _, _)| turn).collect()
}

/// Moves the tags on by a claimed chunk of `points` points of `turn`'s job: the job's finish tag
/// by the points, its client's by the points over the client's weight, both from their start; the
/// client's clock to the job's start, the clients' clock to the client's start; and counts the
/// points among all the points ever claimed (`claimed_points`, which the drain rate is read from).
pub async fn charge(
    tx: &mut Transaction<'static, MySql>,
    turn: &Turn,
    points: u32,
    weights: &ClientWeights,
) -> Result<(), sqlx::Error> {
    let claimed = points;
    let points = f64::from(points);
    let share = points / weights.of(&turn.client_id);
    sqlx::query(
        "UPDATE accrual_jobs SET dispatch_finish = GREATEST(dispatch_finish, ?) + ? WHERE job_id = ?",
    )
    .bind(turn.job_start)
    .bind(points)
    .bind(turn.job_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE dispatch_clients SET finish = GREATEST(finish, ?) + ?, clock = GREATEST(clock, ?) \
         WHERE client_id = ?",
    )
    .bind(turn.clock)
    .bind(share)
    .bind(turn.job_start)
    .bind(&turn.client_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE dispatch_clock SET tag = GREATEST(tag, ?), claimed_points = claimed_points + ? \
         WHERE id = 1",
    )
    .bind(turn.client_start)
    .bind(claimed)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(client: &str, n: u8, job_finish: f64, client_finish: f64, due: i64) -> DueJob {
        DueJob {
            job_id: Uuid::from_bytes([n; 16]),
            client_id: client.into(),
            job_finish,
            client_finish: Some(client_finish),
            client_clock: Some(0.0),
            oldest_due: chrono::DateTime::from_timestamp(due, 0)
                .expect("a valid instant")
                .naive_utc(),
        }
    }

    fn ids(turns: &[Turn]) -> Vec<u8> {
        turns.iter().map(|t| t.job_id.as_bytes()[0]).collect()
    }

    #[test]
    fn weights_parse_and_default_to_one() {
        let w = ClientWeights::parse(" crm=3, service=0.5 ,").expect("valid");
        assert_eq!(
            (w.of("crm"), w.of("service"), w.of("other")),
            (3.0, 0.5, 1.0)
        );
        assert_eq!(ClientWeights::parse(""), Ok(ClientWeights::default()));
        for bad in ["crm", "=2", "crm=x", "crm=0", "crm=2,crm=3", "crm=1001"] {
            assert!(ClientWeights::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_behind_goes_first_whatever_its_jobs_due_time() {
        // Client a has had 10,000 points sent; b nothing since the clock reached 9,000.
        let jobs = vec![job("a", 1, 0.0, 10_000.0, 1), job("b", 2, 0.0, 0.0, 2)];
        assert_eq!(ids(&order(jobs, 9_000.0)), [2, 1]);
    }

    #[test]
    fn an_idle_client_starts_at_the_clock_and_ties_go_to_the_oldest() {
        // b's finish tag is old (500): it starts at the clock like a, and a's chunk is older.
        let jobs = vec![job("b", 2, 0.0, 500.0, 5), job("a", 1, 0.0, 9_000.0, 1)];
        assert_eq!(ids(&order(jobs, 9_000.0)), [1, 2]);
    }

    #[test]
    fn within_a_client_the_job_behind_goes_first() {
        let jobs = vec![
            job("a", 1, 4_000.0, 0.0, 1),
            job("a", 2, 2_000.0, 0.0, 2),
            job("b", 3, 0.0, 1.0, 0),
        ];
        assert_eq!(ids(&order(jobs, 0.0)), [2, 1, 3]);
    }
}
