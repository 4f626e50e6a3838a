//! The stored form of a chunk of points: their SQS message bodies, newline-separated, LZ4-compressed.
//!
//! Storing the finished bodies means the dispatcher sends exactly the bytes accepted, with no
//! re-encoding, and a re-sent chunk carries the same `accrual_id`s.

use crate::message::PointRecord;

/// First byte of a stored chunk: the format, so it can change without a migration.
const FORMAT_LZ4_NEWLINE_BODIES: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk is empty")]
    Empty,
    #[error("unknown chunk format {0}")]
    UnknownFormat(u8),
    #[error("chunk does not decompress")]
    Corrupt(#[from] lz4_flex::block::DecompressError),
    #[error("chunk is not UTF-8")]
    NotUtf8(#[from] std::string::FromUtf8Error),
}

/// Encodes points into a stored chunk.
pub fn encode(records: &[PointRecord]) -> Vec<u8> {
    let mut text = String::with_capacity(records.len() * 320);
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        // JSON bodies never contain a raw newline: serde_json escapes it inside strings.
        text.push_str(&record.encode());
    }
    compress(&text)
}

/// Encodes message bodies as they are into a stored chunk. For tests and tools that must store
/// what the API would refuse; a body must not contain a raw newline.
pub fn encode_bodies(bodies: &[String]) -> Vec<u8> {
    compress(&bodies.join("\n"))
}

fn compress(text: &str) -> Vec<u8> {
    let mut out = vec![FORMAT_LZ4_NEWLINE_BODIES];
    out.extend_from_slice(&lz4_flex::compress_prepend_size(text.as_bytes()));
    out
}

/// Decodes a stored chunk into its message bodies.
pub fn decode(blob: &[u8]) -> Result<Vec<String>, ChunkError> {
    let (&format, rest) = blob.split_first().ok_or(ChunkError::Empty)?;
    if format != FORMAT_LZ4_NEWLINE_BODIES {
        return Err(ChunkError::UnknownFormat(format));
    }
    let text = String::from_utf8(lz4_flex::decompress_size_prepended(rest)?)?;
    Ok(text.split('\n').map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accrual::Accrual;
    use crate::domain::{Amount, MemberId, PointType, Reason};
    use chrono::Utc;
    use uuid::Uuid;

    fn record(i: i64) -> PointRecord {
        PointRecord {
            accrual_id: Uuid::now_v7(),
            job_id: Uuid::now_v7(),
            accrual: Accrual {
                member_id: MemberId::try_from(format!("m{i}")).expect("valid"),
                point_type: PointType::try_from("WELFARE".to_owned()).expect("valid"),
                amount: Amount::try_from(i + 1).expect("valid"),
                reason: Some(Reason::try_from("said \"hi\" ✓".to_owned()).expect("valid")),
                expires_at: None,
                external_id: None,
            },
            accepted_at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
            reverses: None,
        }
    }

    #[test]
    fn a_chunk_gives_back_each_body_unchanged() {
        let records: Vec<PointRecord> = (0..100).map(record).collect();
        let bodies = decode(&encode(&records)).expect("decodes");
        assert_eq!(bodies.len(), 100);
        for (body, record) in bodies.iter().zip(&records) {
            assert_eq!(&PointRecord::decode(body).expect("body"), record);
        }
    }

    #[test]
    fn chunks_are_compressed() {
        let records: Vec<PointRecord> = (0..1_000).map(record).collect();
        let raw: usize = records.iter().map(|r| r.encode().len()).sum();
        assert!(encode(&records).len() < raw / 2);
    }

    #[test]
    fn foreign_bytes_are_refused() {
        assert!(matches!(decode(&[]), Err(ChunkError::Empty)));
        assert!(matches!(
            decode(&[9, 1, 2]),
            Err(ChunkError::UnknownFormat(9))
        ));
        assert!(matches!(decode(&[1, 5, 0]), Err(ChunkError::Corrupt(_))));
    }
}
