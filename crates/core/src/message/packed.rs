//! The packed body (`{"v":2,"points":[…]}`): read point by point, so one bad point is refused
//! alone, and made by splicing stored v1 bodies, so a packed point carries exactly the bytes that
//! were accepted.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    DecodeError, Decoded, PointRecord, RefusedPoint, V1_PREFIX, V2_CLOSE, V2_OPEN, WireIn,
};

/// A packed body read in one pass, when every point in it is sound.
#[derive(Deserialize)]
struct PackedWhole<'a> {
    #[serde(borrow)]
    points: Vec<WireIn<'a>>,
}

#[derive(Deserialize)]
struct PackedIn<'a> {
    #[serde(borrow)]
    points: Vec<&'a RawValue>,
}

pub(super) fn decode_packed(body: &str) -> Result<Decoded, DecodeError> {
    // The common case in one pass; any doubt (a point that does not parse or validate) falls
    // through to decoding each point on its own, which finds the bad ones.
    if let Ok(whole) = serde_json::from_str::<PackedWhole>(body)
        && !whole.points.is_empty()
        && let Ok(points) = whole
            .points
            .into_iter()
            .map(PointRecord::from_wire)
            .collect::<Result<Vec<_>, _>>()
    {
        return Ok(Decoded {
            points,
            refused: Vec::new(),
        });
    }
    let packed: PackedIn<'_> = serde_json::from_str(body)?;
    if packed.points.is_empty() {
        return Err(DecodeError::NoPoints);
    }
    let mut decoded = Decoded {
        points: Vec::with_capacity(packed.points.len()),
        refused: Vec::new(),
    };
    for raw in packed.points {
        let point = serde_json::from_str::<WireIn>(raw.get())
            .map_err(DecodeError::from)
            .and_then(PointRecord::from_wire);
        match point {
            Ok(point) => decoded.points.push(point),
            Err(reason) => decoded.refused.push(RefusedPoint {
                body: as_v1_body(raw.get()),
                reason: reason.to_string(),
            }),
        }
    }
    Ok(decoded)
}

/// A packed point's JSON as a v1 body: `"v":1` put in front of its fields. Anything but an object
/// is kept as it is.
fn as_v1_body(point: &str) -> String {
    let point = point.trim();
    match point.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => r#"{"v":1}"#.to_owned(),
        Some(rest) if !rest.contains(r#""v":"#) => format!("{V1_PREFIX}{rest}"),
        _ => point.to_owned(),
    }
}

/// The points of a packed body, each as a v1 body (its bytes as received, with `"v":1` put in
/// front); `None` for a body that is not a readable packed body.
pub fn unpack(body: &str) -> Option<Vec<String>> {
    if !body.starts_with(V2_OPEN) {
        return None;
    }
    let packed: PackedIn<'_> = serde_json::from_str(body).ok()?;
    Some(packed.points.iter().map(|p| as_v1_body(p.get())).collect())
}

/// How many points a body carries: the length of a packed body's `points`, otherwise 1 (a v1
/// body, or one that cannot be read).
pub fn points_in(body: &str) -> usize {
    if !body.starts_with(V2_OPEN) && !body.contains(r#""points""#) {
        return 1;
    }
    match serde_json::from_str::<PackedIn<'_>>(body) {
        Ok(packed) if !packed.points.is_empty() => packed.points.len(),
        _ => 1,
    }
}

/// A stored body that is not a v1 body of this code, so it cannot be packed.
#[derive(Debug, thiserror::Error)]
#[error("stored body {index} is not a v1 accrual message")]
pub struct PackError {
    pub index: usize,
}

/// Packs v1 bodies, in order, into v2 bodies of at most `max_points` points and `max_bytes` bytes
/// each (a single point over `max_bytes` still gets a body of its own). With `max_points` ≤ 1 the
/// v1 bodies are returned unchanged.
pub fn pack(
    bodies: Vec<String>,
    max_points: usize,
    max_bytes: usize,
) -> Result<Vec<String>, PackError> {
    if max_points <= 1 {
        return Ok(bodies);
    }
    let mut out = Vec::with_capacity(bodies.len().div_ceil(max_points));
    let mut current = String::new();
    let mut in_current = 0;
    for (index, body) in bodies.iter().enumerate() {
        let fields = body
            .strip_prefix(V1_PREFIX)
            .filter(|f| f.ends_with('}'))
            .ok_or(PackError { index })?;
        // `{` + fields, a comma before it, and the closing `]}`.
        let adds = 1 + fields.len() + 1;
        if in_current > 0
            && (in_current == max_points || current.len() + adds + V2_CLOSE.len() > max_bytes)
        {
            current.push_str(V2_CLOSE);
            out.push(std::mem::take(&mut current));
            in_current = 0;
        }
        if in_current == 0 {
            current.reserve(V2_OPEN.len() + adds * max_points.min(bodies.len() - index));
            current.push_str(V2_OPEN);
        } else {
            current.push(',');
        }
        current.push('{');
        current.push_str(fields);
        in_current += 1;
    }
    if in_current > 0 {
        current.push_str(V2_CLOSE);
        out.push(current);
    }
    Ok(out)
}
