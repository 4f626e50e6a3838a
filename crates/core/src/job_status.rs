//! A job's status: the one list of them, in the order a job goes through them, and which are final.
//!
//! The JSON, the SQL and the metrics name a status by [`JobStatus::as_str`] (`snake_case`), so the
//! API's strings stay what they were when statuses were bare strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted for a later time (`reserve_at`): nothing is sent before it.
    Reserved,
    /// Its chunks are being sent to SQS.
    Dispatching,
    /// Every point is on the queue; the listener is writing them.
    Enqueued,
    /// Every point is written.
    Completed,
    /// Every point is written or dead-lettered, and some were dead-lettered.
    CompletedWithErrors,
    /// A reserved job cancelled before its time: nothing of it was sent.
    Cancelled,
}

impl JobStatus {
    /// Every status, in the order a job goes through them.
    pub const ALL: [JobStatus; 6] = [
        Self::Reserved,
        Self::Dispatching,
        Self::Enqueued,
        Self::Completed,
        Self::CompletedWithErrors,
        Self::Cancelled,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Reserved => "reserved",
            Self::Dispatching => "dispatching",
            Self::Enqueued => "enqueued",
            Self::Completed => "completed",
            Self::CompletedWithErrors => "completed_with_errors",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether a job keeps this status once it has it (a `completed_with_errors` job may still
    /// become `completed` if its dead letters are redriven and written, but it stays final).
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::CompletedWithErrors | Self::Cancelled
        )
    }
}

/// The final statuses' strings (see [`JobStatus::is_final`]), for SQL and string comparisons.
pub const FINAL_STATUSES: [&str; 3] = [
    JobStatus::Completed.as_str(),
    JobStatus::CompletedWithErrors.as_str(),
    JobStatus::Cancelled.as_str(),
];

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// Stored as its string (`accrual_jobs.status`, `VARCHAR`): bound and read as a `JobStatus`, so a
/// query names a status through the enum; a row holding an unknown string fails to decode.
impl sqlx::Type<sqlx::MySql> for JobStatus {
    fn type_info() -> sqlx::mysql::MySqlTypeInfo {
        <str as sqlx::Type<sqlx::MySql>>::type_info()
    }

    fn compatible(ty: &sqlx::mysql::MySqlTypeInfo) -> bool {
        <str as sqlx::Type<sqlx::MySql>>::compatible(ty)
    }
}

impl sqlx::Encode<'_, sqlx::MySql> for JobStatus {
    fn encode_by_ref(
        &self,
        buf: &mut Vec<u8>,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<sqlx::MySql>>::encode(self.as_str(), buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::MySql> for JobStatus {
    fn decode(value: sqlx::mysql::MySqlValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let text = <&str as sqlx::Decode<sqlx::MySql>>::decode(value)?;
        Ok(text.parse()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_from_its_string_and_its_json() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(status));
            let json = serde_json::to_string(&status).expect("a status serializes");
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(
                serde_json::from_str::<JobStatus>(&json).expect("its JSON reads back"),
                status
            );
        }
        assert_eq!(
            "finished".parse::<JobStatus>(),
            Err(UnknownStatus("finished".to_owned()))
        );
    }

    #[test]
    fn the_final_statuses_are_the_last_three() {
        let finals: Vec<&str> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .map(JobStatus::as_str)
            .collect();
        assert_eq!(finals, FINAL_STATUSES);
    }
}
