//! The request body as it arrives: a JSON array of objects whose fields may have any JSON type.
//!
//! Parsing is lenient on purpose. A field of the wrong type, an unknown field or an item that is not
//! an object must become a precise 422 entry for that item, not a 400 for the whole body, so fields
//! are read into [`Loose`] and judged later by [`crate::accrual::validate`]. Only broken JSON
//! syntax, a top level that is not an array, or too many items stop the parse.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Most items one request may carry.
pub const MAX_ITEMS_PER_REQUEST: usize = 500_000;

/// A JSON value reduced to what validation needs; nested values are skipped without allocating.
#[derive(Debug, Clone, PartialEq)]
pub enum Loose {
    Str(String),
    Int(i64),
    /// A whole number that does not fit in `i64`.
    BigInt,
    Float(f64),
    Bool,
    Null,
    Array,
    Object,
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LooseVisitor;
        impl<'de> Visitor<'de> for LooseVisitor {
            type Value = Loose;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Loose, E> {
                Ok(Loose::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Loose, E> {
                Ok(Loose::Str(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Loose, E> {
                Ok(Loose::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Loose, E> {
                Ok(i64::try_from(v).map_or(Loose::BigInt, Loose::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Loose, E> {
                Ok(Loose::Float(v))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Loose, E> {
                Ok(Loose::Bool)
            }
            fn visit_unit<E>(self) -> Result<Loose, E> {
                Ok(Loose::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Loose, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Loose::Array)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Loose, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Loose::Object)
            }
        }
        deserializer.deserialize_any(LooseVisitor)
    }
}

/// One element of the request array, before validation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawItem {
    /// False when the element was not a JSON object at all.
    pub is_object: bool,
    pub member_id: Option<Loose>,
    pub point_type: Option<Loose>,
    pub amount: Option<Loose>,
    pub reason: Option<Loose>,
    pub expires_at: Option<Loose>,
    pub external_id: Option<Loose>,
    /// Names of fields the API does not know, in order of appearance.
    pub unknown_fields: Vec<String>,
    /// Names of known fields given more than once.
    pub duplicate_fields: Vec<&'static str>,
}

impl<'de> Deserialize<'de> for RawItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = RawItem;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an accrual object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawItem, A::Error> {
                let mut item = RawItem {
                    is_object: true,
                    ..RawItem::default()
                };
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let (name, slot) = match key.as_ref() {
                        "member_id" => ("member_id", &mut item.member_id),
                        "point_type" => ("point_type", &mut item.point_type),
                        "amount" => ("amount", &mut item.amount),
                        "reason" => ("reason", &mut item.reason),
                        "expires_at" => ("expires_at", &mut item.expires_at),
                        "external_id" => ("external_id", &mut item.external_id),
                        other => {
                            item.unknown_fields.push(other.to_owned());
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if slot.is_some() {
                        item.duplicate_fields.push(name);
                    }
                    *slot = Some(map.next_value::<Loose>()?);
                }
                Ok(item)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawItem, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(RawItem::default())
            }
            fn visit_str<E>(self, _: &str) -> Result<RawItem, E> {
                Ok(RawItem::default())
            }
            fn visit_i64<E>(self, _: i64) -> Result<RawItem, E> {
                Ok(RawItem::default())
            }
            fn visit_u64<E>(self, _: u64) -> Result<RawItem, E> {
                Ok(RawItem::default())
            }
            fn visit_f64<E>(self, _: f64) -> Result<RawItem, E> {
                Ok(RawItem::default())
            }
            fn visit_bool<E>(self, _: bool) -> Result<RawItem, E> {
                Ok(RawItem::default())
            }
            fn visit_unit<E>(self) -> Result<RawItem, E> {
                Ok(RawItem::default())
            }
        }
        deserializer.deserialize_any(ItemVisitor)
    }
}

/// Why a request body could not be read as an array of items.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is not valid JSON: {message} at line {line}, column {column}")]
    Malformed {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("the body holds more than {max} items", max = MAX_ITEMS_PER_REQUEST)]
    TooManyItems,
}

/// Parses a request body into raw items, stopping as soon as it holds more than `max_items`.
pub fn parse_body(body: &[u8], max_items: usize) -> Result<Vec<RawItem>, BodyError> {
    let mut items = Vec::new();
    parse_items(body, max_items, |item| items.push(item))?;
    Ok(items)
}

/// Parses a request body and hands each raw item to `each` as soon as it is read, so a caller that
/// validates as it goes never holds every raw item at once. Returns how many items there were.
pub fn parse_items(
    body: &[u8],
    max_items: usize,
    mut each: impl FnMut(RawItem),
) -> Result<usize, BodyError> {
    let mut too_many = false;
    let seed = ItemsSeed {
        max_items,
        too_many: &mut too_many,
        each: &mut each,
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = seed
        .deserialize(&mut de)
        .and_then(|count| de.end().map(|()| count));
    parsed.map_err(|e| {
        if too_many {
            BodyError::TooManyItems
        } else {
            BodyError::Malformed {
                message: strip_position(&e.to_string()),
                line: e.line(),
                column: e.column(),
            }
        }
    })
}

/// serde_json appends " at line L column C" to its messages; we report those as fields instead.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

struct ItemsSeed<'a, F> {
    max_items: usize,
    /// Set when the parse stopped because of the item limit, so the caller can answer 413.
    too_many: &'a mut bool,
    each: &'a mut F,
}

impl<'de, F: FnMut(RawItem)> DeserializeSeed<'de> for ItemsSeed<'_, F> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(RawItem)> Visitor<'de> for ItemsSeed<'_, F> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of accrual items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut count = 0;
        while let Some(item) = seq.next_element::<RawItem>()? {
            if count == self.max_items {
                *self.too_many = true;
                return Err(de::Error::custom("too many items"));
            }
            count += 1;
            (self.each)(item);
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_any_type_are_kept_for_validation() {
        let body = br#"[{"member_id": 7, "amount": "5", "reason": null, "x": [1]}, 3]"#;
        let items = parse_body(body, 10).expect("parses");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].member_id, Some(Loose::Int(7)));
        assert_eq!(items[0].amount, Some(Loose::Str("5".into())));
        assert_eq!(items[0].reason, Some(Loose::Null));
        assert_eq!(items[0].point_type, None);
        assert_eq!(items[0].unknown_fields, vec!["x".to_owned()]);
        assert!(!items[1].is_object);
    }

    #[test]
    fn duplicate_keys_are_recorded() {
        let items = parse_body(br#"[{"amount": 1, "amount": 2}]"#, 10).expect("parses");
        assert_eq!(items[0].duplicate_fields, vec!["amount"]);
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let err = parse_body(b"[\n  {\"amount\": 1,}\n]", 10).expect_err("malformed");
        match err {
            BodyError::Malformed { line, column, .. } => assert_eq!((line, column), (2, 16)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_top_level_object_is_malformed() {
        assert!(matches!(
            parse_body(b"{}", 10),
            Err(BodyError::Malformed { .. })
        ));
    }

    #[test]
    fn trailing_garbage_is_malformed() {
        assert!(matches!(
            parse_body(b"[] []", 10),
            Err(BodyError::Malformed { .. })
        ));
    }

    #[test]
    fn the_item_limit_is_exact() {
        assert_eq!(parse_body(b"[{},{}]", 2).expect("at limit").len(), 2);
        assert!(matches!(
            parse_body(b"[{},{},{}]", 2),
            Err(BodyError::TooManyItems)
        ));
    }

    #[test]
    fn deeply_nested_values_are_skipped_without_recursing() {
        let nest = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let body = format!("[{{\"x\": {0}, \"amount\": {0}}}, {0}]", nest(100_000));
        let items = parse_body(body.as_bytes(), 10).expect("parses");
        assert_eq!(items[0].unknown_fields, vec!["x".to_owned()]);
        assert_eq!(items[0].amount, Some(Loose::Array));
        assert!(!items[1].is_object);
    }
}
