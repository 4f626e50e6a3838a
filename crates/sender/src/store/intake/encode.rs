//! A job's points as stored chunks: each point with its `accrual_id`, `chunk_items` to a chunk,
//! compressed (`accrual_core::chunk`). A 500,000-item request is 250 chunks of JSON and LZ4: the
//! largest CPU cost of acceptance after parsing, so the chunks are encoded in as many parts as the
//! machine has cores, each part on a blocking thread, and put back in order.

use accrual_core::accrual::Accrual;
use accrual_core::chunk;
use accrual_core::message::PointRecord;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The chunks of `kept` (whose `accrual_id`s are `ids`, one each), in order, each with its item
/// count; encoded off the async workers, one part per core.
pub(super) async fn encode_in_parallel(
    job_id: Uuid,
    accepted_at: DateTime<Utc>,
    ids: Vec<Uuid>,
    kept: Vec<Accrual>,
    chunk_items: usize,
) -> Result<Vec<(Vec<u8>, usize)>, tokio::task::JoinError> {
    let chunk_items = chunk_items.max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Whole chunks per part, so the parts' chunks are the ones a single pass would make.
    let part_items = kept.len().div_ceil(chunk_items).div_ceil(cores).max(1) * chunk_items;
    let (mut kept, mut ids) = (kept, ids);
    let mut parts = Vec::with_capacity(cores);
    // From the back, so each split copies only the part it takes off.
    while !kept.is_empty() {
        let start = (kept.len() - 1) / part_items * part_items;
        let (points, part_ids) = (kept.split_off(start), ids.split_off(start));
        parts.push(tokio::task::spawn_blocking(move || {
            let points = part_ids.into_iter().zip(points).collect();
            encode_chunks(job_id, accepted_at, points, chunk_items)
        }));
    }
    parts.reverse();
    let parts = futures_util::future::try_join_all(parts).await?;
    Ok(parts.concat())
}

/// Stores the points, each with its `accrual_id` (UUID v7), in compressed chunks of
/// `chunk_items`, each with its item count.
pub(super) fn encode_chunks(
    job_id: Uuid,
    accepted_at: DateTime<Utc>,
    points: Vec<(Uuid, Accrual)>,
    chunk_items: usize,
) -> Vec<(Vec<u8>, usize)> {
    let mut chunks = Vec::with_capacity(points.len().div_ceil(chunk_items.max(1)));
    let mut records = Vec::with_capacity(chunk_items.min(points.len()));
    let mut points = points.into_iter().peekable();
    while let Some((accrual_id, accrual)) = points.next() {
        records.push(PointRecord {
            accrual_id,
            job_id,
            accrual,
            accepted_at,
            reverses: None,
        });
        if records.len() == chunk_items.max(1) || points.peek().is_none() {
            chunks.push((chunk::encode(&records), records.len()));
            records.clear();
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use accrual_core::{accrual, wire};

    fn accruals(n: usize) -> Vec<Accrual> {
        let items: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"member_id":"m{i}","point_type":"P","amount":1}}"#))
            .collect();
        let body = format!("[{}]", items.join(","));
        let mut validator = accrual::Validator::new(Utc::now(), None);
        wire::parse_items(body.as_bytes(), n, |item| validator.push(item)).expect("parses");
        validator.finish().expect("valid")
    }

    fn ids_in(chunks: &[(Vec<u8>, usize)]) -> Vec<Uuid> {
        chunks
            .iter()
            .flat_map(|(blob, _)| chunk::decode(blob).expect("decodes"))
            .map(|b| PointRecord::decode(&b).expect("body").accrual_id)
            .collect()
    }

    #[test]
    fn every_point_gets_its_own_accrual_id_and_chunks_hold_all_points() {
        let points = accruals(25)
            .into_iter()
            .map(|a| (Uuid::now_v7(), a))
            .collect();
        let chunks = encode_chunks(Uuid::now_v7(), Utc::now(), points, 10);
        assert_eq!(
            chunks.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        let ids: std::collections::HashSet<Uuid> = ids_in(&chunks).into_iter().collect();
        assert_eq!(ids.len(), 25);
    }

    #[tokio::test]
    async fn parts_encoded_side_by_side_make_the_chunks_of_one_pass_in_order() {
        for (n, chunk_items) in [(1, 10), (25, 10), (30, 10), (2_001, 7), (9, 100)] {
            let kept = accruals(n);
            let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
            let (job_id, at) = (Uuid::now_v7(), Utc::now());
            let one_pass = encode_chunks(
                job_id,
                at,
                ids.iter().copied().zip(kept.clone()).collect(),
                chunk_items,
            );
            let parallel = encode_in_parallel(job_id, at, ids.clone(), kept, chunk_items)
                .await
                .expect("encodes");
            assert_eq!(parallel, one_pass, "{n} items, {chunk_items} a chunk");
            assert_eq!(ids_in(&parallel), ids);
        }
    }
}
