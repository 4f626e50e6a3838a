//! Generated accrual requests: `points` items over `members` members, each member getting points of
//! several types, cut into request bodies.

use accrual_core::message::PointRecord;
use accrual_core::wire::MAX_ITEMS_PER_REQUEST;
use chrono::Utc;
use rand::Rng;
use serde::Serialize;
use uuid::Uuid;

const POINT_TYPES: [&str; 2] = ["WELFARE", "BONUS"];

#[derive(Serialize)]
struct Item {
    member_id: String,
    point_type: &'static str,
    amount: i64,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_id: Option<String>,
}

/// Request bodies ready to post, and what the ledger must hold once they are all written.
pub struct Workload {
    /// JSON arrays of at most `items_per_request` items each.
    pub bodies: Vec<Vec<u8>>,
    pub points: usize,
    pub members: usize,
    /// The sum of every amount.
    pub amount_sum: i64,
}

impl Workload {
    /// Generates `points` items with random amounts (1–1,000) over `members` members.
    pub fn generate(points: usize, members: usize, items_per_request: usize) -> Self {
        Self::generate_with_ids(points, members, items_per_request, None)
    }

    /// As [`Workload::generate`]; with `id_prefix`, item `i` carries the `external_id`
    /// `<prefix>-<i>`.
    pub fn generate_with_ids(
        points: usize,
        members: usize,
        items_per_request: usize,
        id_prefix: Option<&str>,
    ) -> Self {
        let members = members.clamp(1, points.max(1));
        let per_request = items_per_request.clamp(1, MAX_ITEMS_PER_REQUEST);
        let mut rng = rand::rng();
        let mut amount_sum = 0;
        let mut bodies = Vec::with_capacity(points.div_ceil(per_request));
        let mut start = 0;
        while start < points {
            let end = (start + per_request).min(points);
            let items: Vec<Item> = (start..end)
                .map(|i| {
                    let amount = rng.random_range(1..=1_000);
                    amount_sum += amount;
                    Item {
                        member_id: format!("member-{:07}", i % members),
                        point_type: POINT_TYPES[(i / members) % POINT_TYPES.len()],
                        amount,
                        reason: "benchmark campaign",
                        external_id: id_prefix.map(|p| format!("{p}-{i}")),
                    }
                })
                .collect();
            // A Vec of plain structs always serialises.
            bodies.push(serde_json::to_vec(&items).unwrap_or_default());
            start = end;
        }
        Self {
            bodies,
            points,
            members,
            amount_sum,
        }
    }

    /// The bytes of the largest request body.
    pub fn largest_body(&self) -> usize {
        self.bodies.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// The points as the sender would store them: parsed and validated like the API does, each
    /// with an `accrual_id`, under one job id per request.
    pub fn records(&self) -> anyhow::Result<Vec<PointRecord>> {
        let accepted_at = Utc::now();
        let mut records = Vec::with_capacity(self.points);
        for body in &self.bodies {
            let items = accrual_core::wire::parse_body(body, MAX_ITEMS_PER_REQUEST)?;
            let accruals = accrual_core::accrual::validate(items, accepted_at).map_err(|f| {
                anyhow::anyhow!("generated items failed validation: {:?}", f.errors)
            })?;
            let job_id = Uuid::now_v7();
            records.extend(accruals.into_iter().map(|accrual| PointRecord {
                accrual_id: Uuid::now_v7(),
                job_id,
                accrual,
                accepted_at,
                reverses: None,
            }));
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_hold_every_point_and_the_sum_adds_up() {
        let w = Workload::generate(2_501, 100, 1_000);
        assert_eq!(w.bodies.len(), 3);
        let records = w.records().expect("generated items are valid");
        assert_eq!(records.len(), 2_501);
        let sum: i64 = records.iter().map(|r| r.accrual.amount.get()).sum();
        assert_eq!(sum, w.amount_sum);
        let members: std::collections::HashSet<_> = records
            .iter()
            .map(|r| r.accrual.member_id.as_str())
            .collect();
        assert_eq!(members.len(), 100);
    }
}
