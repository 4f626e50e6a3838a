//! Dead letters the listener records outside a write: a point sent to the dead-letter queue, and
//! dead letters recorded ahead of time for points on their last receive (which count only from a
//! later instant, and never once their point is in the ledger).

use accrual_core::db::statement_sizes;
use accrual_core::message::PointRecord;
use sqlx::AssertSqlSafe;
use tokio::time::Instant;
use uuid::Uuid;

use super::Ledger;

impl Ledger {
    /// Records that a point of a job went to the dead-letter queue, so the job can complete.
    pub async fn record_dead_letter(
        &self,
        ids: accrual_core::dead_letter::PointIds,
        reason: &str,
    ) -> Result<(), sqlx::Error> {
        accrual_core::dead_letter::record(&self.pool, ids, reason).await
    }

    /// Records dead letters ahead of time for points on their last receive: each counts only from
    /// `counts_in` after MySQL's `NOW(6)`, and never once its point is in the ledger. An existing
    /// dead letter stays. The instant is MySQL's, like the `NOW(6)` that settlement compares it
    /// with, so a listener whose clock is off neither counts its points early nor late.
    /// `Ok(None)` when `give_up_at` passed first (the attempt abandoned, as for [`Self::write`]).
    pub async fn record_dead_letters_ahead(
        &self,
        records: &[PointRecord],
        reason: &str,
        counts_in: std::time::Duration,
        give_up_at: Instant,
    ) -> Result<Option<()>, sqlx::Error> {
        let micros = u64::try_from(counts_in.as_micros()).unwrap_or(u64::MAX);
        let Some((mut conn, session)) = self.connection_before(give_up_at).await? else {
            return Ok(None);
        };
        let insert = async {
            let mut rest = records;
            for size in statement_sizes(records.len(), self.max_rows) {
                let (chunk, tail) = rest.split_at(size);
                rest = tail;
                let rows = vec!["(?, ?, ?, NOW(6) + INTERVAL ? MICROSECOND)"; size].join(",");
                let sql = format!(
                    "INSERT INTO accrual_dead_letters (accrual_id, job_id, reason, counts_from) VALUES {rows} \
                     ON DUPLICATE KEY UPDATE accrual_id = accrual_id"
                );
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for r in chunk {
                    query = query
                        .bind(r.accrual_id)
                        .bind(r.job_id)
                        .bind(reason)
                        .bind(micros);
                }
                query.execute(&mut *conn).await?;
            }
            Ok::<_, sqlx::Error>(())
        };
        match tokio::time::timeout_at(give_up_at, insert).await {
            Ok(recorded) => recorded.map(Some),
            Err(_) => {
                self.give_up(conn, session).await;
                Ok(None)
            }
        }
    }

    /// Moves the `counts_from` of dead letters recorded ahead for these points to `counts_in`
    /// after MySQL's `NOW(6)` if that is later: their message is kept hidden that long. Dead
    /// letters that count at once (no `counts_from`) are left alone.
    pub async fn defer_dead_letters_ahead(
        &self,
        accrual_ids: &[Uuid],
        counts_in: std::time::Duration,
    ) -> Result<(), sqlx::Error> {
        let micros = u64::try_from(counts_in.as_micros()).unwrap_or(u64::MAX);
        let mut rest = accrual_ids;
        for size in statement_sizes(accrual_ids.len(), self.max_rows) {
            let (chunk, tail) = rest.split_at(size);
            rest = tail;
            let sql = format!(
                "UPDATE accrual_dead_letters SET counts_from = NOW(6) + INTERVAL ? MICROSECOND \
                 WHERE counts_from < NOW(6) + INTERVAL ? MICROSECOND AND accrual_id IN ({})",
                vec!["?"; size].join(",")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(micros).bind(micros);
            for id in chunk {
                query = query.bind(id);
            }
            query.execute(&self.pool).await?;
        }
        Ok(())
    }
}
