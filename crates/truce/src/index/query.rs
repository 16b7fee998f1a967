//! Queries: equality on an index prefix, a range on the next field, ascending or
//! descending, a limit, and opaque cursors; or, without an index, id order.
//!
//! A query is turned into one key range `[start, end)` of the index (or document)
//! space; a cursor is the order and the last key returned, so the next page
//! continues exactly after it however the documents changed in between. A
//! cursor passed with another query (another order, index, collection or
//! bounds) is refused rather than read as a position in it.

use serde_json::Value;

use super::IndexDef;
use super::keys::{bracket, encode_value, prefix_end};
use crate::doc::Document;
use crate::error::{Error, Result};
use crate::limits::QUERY_LIMIT_MAX;

/// Result order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// Ascending key order.
    #[default]
    Asc,
    /// Descending key order.
    Desc,
}

impl Order {
    /// The wire name: `asc` or `desc`.
    pub fn name(self) -> &'static str {
        match self {
            Order::Asc => "asc",
            Order::Desc => "desc",
        }
    }

    /// The order a wire name names.
    pub fn from_name(name: &str) -> Option<Order> {
        [Order::Asc, Order::Desc].into_iter().find(|o| o.name() == name)
    }
}

/// A query of one collection.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// The index to read; `None` reads the collection in id order.
    pub index: Option<String>,
    /// Equality on the first fields of the index, in order.
    pub eq: Vec<Value>,
    /// Lower bound (exclusive) on the next field (or the id).
    pub gt: Option<Value>,
    /// Lower bound (inclusive).
    pub gte: Option<Value>,
    /// Upper bound (exclusive).
    pub lt: Option<Value>,
    /// Upper bound (inclusive).
    pub lte: Option<Value>,
    /// Ascending or descending.
    pub order: Order,
    /// Most documents per page; 0 means the default of 100. At most [`QUERY_LIMIT_MAX`].
    pub limit: usize,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
}

/// One page of results.
#[derive(Clone, Debug)]
pub struct QueryPage {
    /// The documents, in the query's order.
    pub docs: Vec<Document>,
    /// A cursor for the next page, or `None` when this page reached the end.
    pub next: Option<String>,
    /// What its documents hold of the memory of the pages being read, until
    /// the page is dropped ([`Options::page_memory_bytes`](crate::Options::page_memory_bytes)).
    pub memory: crate::budget::Holding,
}

/// A key range `[start, end)`; `end == None` means unbounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    /// Inclusive start.
    pub start: Vec<u8>,
    /// Exclusive end.
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_ref().is_none_or(|end| key < end.as_slice())
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidQuery(message)
}

/// The smallest key strictly greater than `key`.
pub fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

impl Query {
    /// The effective page size.
    pub fn page_size(&self) -> Result<usize> {
        match self.limit {
            0 => Ok(100),
            n if n <= QUERY_LIMIT_MAX => Ok(n),
            n => Err(invalid(format!("limit {n} exceeds {QUERY_LIMIT_MAX}"))),
        }
    }

    /// The key range of the whole query (before the cursor), for `index` of `collection`.
    pub fn range(&self, collection: &str, index: Option<&IndexDef>) -> Result<KeyRange> {
        if self.gt.is_some() && self.gte.is_some() || self.lt.is_some() && self.lte.is_some() {
            return Err(invalid(
                "give at most one lower (gt/gte) and one upper (lt/lte) bound".into(),
            ));
        }
        let Some(def) = index else {
            return self.id_range(collection);
        };
        if self.eq.len() > def.paths.len() {
            return Err(invalid(format!(
                "{} equality values for an index of {} fields",
                self.eq.len(),
                def.paths.len()
            )));
        }
        let has_bounds = self.gt.is_some() || self.gte.is_some() || self.lt.is_some() || self.lte.is_some();
        if has_bounds && self.eq.len() == def.paths.len() {
            return Err(invalid("a range needs a field after the equality prefix".into()));
        }
        let mut prefix = def.prefix();
        for value in &self.eq {
            encode_value(&mut prefix, Some(value), def.key_format);
        }
        let encoded = |v: &Value| {
            let mut key = prefix.clone();
            encode_value(&mut key, Some(v), def.key_format);
            key
        };
        let with_tag = |t: u8| {
            let mut key = prefix.clone();
            key.push(t);
            key
        };
        // Bounds on one side only stay within that value's type bracket, as in
        // MongoDB; bounds of two brackets hold nothing, as a filter's do.
        let lower = self.gt.as_ref().or(self.gte.as_ref());
        let upper = self.lt.as_ref().or(self.lte.as_ref());
        if let (Some(lower), Some(upper)) = (lower, upper)
            && bracket(lower) != bracket(upper)
        {
            return Ok(KeyRange {
                start: prefix.clone(),
                end: Some(prefix),
            });
        }
        let start = match (&self.gt, &self.gte, self.lt.as_ref().or(self.lte.as_ref())) {
            (Some(v), _, _) => prefix_end(&encoded(v)).unwrap_or_else(|| encoded(v)),
            (_, Some(v), _) => encoded(v),
            (None, None, Some(upper)) => with_tag(bracket(upper).0),
            (None, None, None) => prefix.clone(),
        };
        let end = match (&self.lt, &self.lte, self.gt.as_ref().or(self.gte.as_ref())) {
            (Some(v), _, _) => Some(encoded(v)),
            (_, Some(v), _) => prefix_end(&encoded(v)),
            (None, None, Some(lower)) => Some(with_tag(bracket(lower).1 + 1)),
            (None, None, None) => prefix_end(&prefix),
        };
        Ok(KeyRange { start, end })
    }

    fn id_range(&self, collection: &str) -> Result<KeyRange> {
        if !self.eq.is_empty() {
            return Err(invalid("equality values need an index".into()));
        }
        let mut base = collection.as_bytes().to_vec();
        base.push(0);
        let id_key = |v: &Value| -> Result<Vec<u8>> {
            let id = v
                .as_str()
                .ok_or_else(|| invalid(format!("id bounds are strings, got {v}")))?;
            let mut key = base.clone();
            key.extend_from_slice(id.as_bytes());
            Ok(key)
        };
        let start = match (&self.gt, &self.gte) {
            (Some(v), _) => successor(&id_key(v)?),
            (_, Some(v)) => id_key(v)?,
            _ => base.clone(),
        };
        let end = match (&self.lt, &self.lte) {
            (Some(v), _) => Some(id_key(v)?),
            (_, Some(v)) => Some(successor(&id_key(v)?)),
            _ => prefix_end(&base),
        };
        Ok(KeyRange { start, end })
    }

    /// The part of `range` (of index `def`, or of the ids) still to read
    /// after the cursor.
    pub fn remaining(&self, range: &KeyRange, def: Option<&IndexDef>) -> Result<KeyRange> {
        let Some(cursor) = &self.after else {
            return Ok(range.clone());
        };
        let (order, declared_seq, key) = decode_cursor(cursor)?;
        if order != self.order {
            return Err(invalid(format!(
                "the cursor continues a query in {} order, not {}",
                order.name(),
                self.order.name()
            )));
        }
        if declared_seq != def.map_or(0, |d| d.declared_seq) {
            return Err(invalid(
                "the cursor belongs to another index (one of this name dropped since, or another query): \
                 start the query again"
                    .into(),
            ));
        }
        // The last key of a page of this query lies in its range. In id order
        // the key is `collection \0 id`, and ids hold no NUL: a key with a
        // second one is an index entry of the same collection.
        let inside = key >= range.start && range.end.as_ref().is_none_or(|end| key < *end);
        let id_key = || key.iter().filter(|&&b| b == 0).count() == 1;
        if !inside || self.index.is_none() && !id_key() {
            return Err(invalid(
                "the cursor belongs to another query: pass it with the collection, index and bounds \
                 of the query that returned it"
                    .into(),
            ));
        }
        let mut rest = range.clone();
        match self.order {
            Order::Asc => rest.start = rest.start.max(successor(&key)),
            Order::Desc => rest.end = Some(rest.end.map_or(key.clone(), |end| end.min(key))),
        }
        Ok(rest)
    }
}

/// An opaque cursor naming the order, the index (by the commit that declared
/// it: one declared anew under the same name is another; 0 for id order) and
/// the last key of a page.
pub fn encode_cursor(order: Order, declared_seq: u64, key: &[u8]) -> String {
    let mut cursor = format!("{}-{declared_seq}-", order.name());
    cursor.extend(key.iter().map(|b| format!("{b:02x}")));
    cursor
}

/// Reads a cursor back; anything that is not one is [`Error::InvalidQuery`].
pub fn decode_cursor(cursor: &str) -> Result<(Order, u64, Vec<u8>)> {
    let bad = || invalid("not a cursor returned by this server".into());
    let before = |what: &str| {
        Err(invalid(format!(
            "a cursor from a server before {what}: start the query again"
        )))
    };
    let mut parts = cursor.splitn(3, '-');
    let (order, declared_seq, hex) = match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(seq), Some(hex)) => (
            Order::from_name(name).ok_or_else(bad)?,
            seq.parse::<u64>().map_err(|_| bad())?,
            hex,
        ),
        (Some(name), Some(_), None) if Order::from_name(name).is_some() => {
            return before("2026-12-06, which named no index");
        }
        (Some(hex), None, None) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            return before("2026-12-05, which named no order");
        }
        _ => return Err(bad()),
    };
    if !hex.len().is_multiple_of(2) || hex.len() > 2 * crate::limits::CURSOR_KEY_BYTES_MAX {
        return Err(bad());
    }
    let key = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(bad)
        })
        .collect::<Result<Vec<u8>>>()?;
    Ok((order, declared_seq, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::IndexSpec;
    use serde_json::json;

    fn def() -> IndexDef {
        IndexDef::new(
            "c",
            "by_ab",
            IndexSpec {
                fields: vec!["a".into(), "b".into()],
                unique: false,
            },
        )
        .unwrap()
    }

    fn key(a: Value, b: Value, id: &str) -> Vec<u8> {
        let body = json!({"a": a, "b": b});
        def().entry_key(id, body.as_object().unwrap())
    }

    #[test]
    fn ranges_select_exactly_the_matching_entries() {
        let q = |eq: Vec<Value>, gt: Option<Value>, lte: Option<Value>| Query {
            eq,
            gt,
            lte,
            ..Query::default()
        };
        let r = q(vec![json!("x")], Some(json!(1)), Some(json!(3)))
            .range("c", Some(&def()))
            .unwrap();
        assert!(!r.contains(&key(json!("x"), json!(1), "id")));
        assert!(r.contains(&key(json!("x"), json!(2), "id")));
        assert!(r.contains(&key(json!("x"), json!(3), "id")));
        assert!(!r.contains(&key(json!("x"), json!(4), "id")));
        assert!(!r.contains(&key(json!("y"), json!(2), "id")));
        let lower_only = q(vec![json!("x")], Some(json!(1)), None)
            .range("c", Some(&def()))
            .unwrap();
        assert!(lower_only.contains(&key(json!("x"), json!(1e9), "id")));
        assert!(
            !lower_only.contains(&key(json!("x"), json!("a string"), "id")),
            "type bracketing"
        );
        // false and true are one bracket: each bounds the other.
        let bools = |gt: Option<Value>, lt: Option<Value>| {
            q(vec![json!("x")], gt, lt).range("c", Some(&def())).unwrap()
        };
        assert!(bools(Some(json!(false)), None).contains(&key(json!("x"), json!(true), "id")));
        assert!(!bools(Some(json!(false)), None).contains(&key(json!("x"), json!(false), "id")));
        let up_to_true = bools(None, Some(json!(true)));
        assert!(up_to_true.contains(&key(json!("x"), json!(false), "id")));
        assert!(up_to_true.contains(&key(json!("x"), json!(true), "id")));
        assert!(!up_to_true.contains(&key(json!("x"), json!([1]), "id")));
        let all = Query::default().range("c", Some(&def())).unwrap();
        assert!(all.contains(&key(json!(null), json!(null), "id")));
    }

    #[test]
    fn cursors_round_trip_and_are_checked() {
        let k = key(json!("x"), json!(1), "id");
        assert_eq!(
            decode_cursor(&encode_cursor(Order::Desc, 7, &k)).unwrap(),
            (Order::Desc, 7, k.clone())
        );
        for bad in ["0", "zz", "abc", "asc-0-0", "asc-0-zz", "asc-x-00", "up-0-00", ""] {
            assert_eq!(decode_cursor(bad).unwrap_err().code(), "invalid_query", "{bad}");
        }
        for legacy in ["630062795f610004610001", "asc-630062795f610004610001"] {
            let refused = decode_cursor(legacy).unwrap_err().to_string();
            assert!(refused.contains("start the query again"), "{refused}");
        }
        let refused = |q: &Query, index: Option<&IndexDef>| {
            let range = q.range("c", index).unwrap();
            q.remaining(&range, index).unwrap_err().code()
        };
        let by_index = |order: Order, after: String| Query {
            index: Some("i".into()),
            order,
            after: Some(after),
            ..Query::default()
        };
        let mut declared = def();
        declared.declared_seq = 7;
        // The cursor of a page of this index, in this order, continues it.
        let q = by_index(Order::Asc, encode_cursor(Order::Asc, 7, &k));
        let range = q.range("c", Some(&declared)).unwrap();
        assert!(q.remaining(&range, Some(&declared)).is_ok());
        // Another order, another index, the same name declared anew, another
        // collection, an id-order query.
        let q = by_index(Order::Desc, encode_cursor(Order::Asc, 7, &k));
        assert_eq!(refused(&q, Some(&declared)), "invalid_query");
        let mut other = IndexDef::new("c", "j", def().spec.clone()).unwrap();
        other.declared_seq = 7;
        assert_eq!(
            refused(
                &by_index(Order::Asc, encode_cursor(Order::Asc, 7, &k)),
                Some(&other)
            ),
            "invalid_query"
        );
        let mut anew = declared.clone();
        anew.declared_seq = 9;
        assert_eq!(
            refused(
                &by_index(Order::Asc, encode_cursor(Order::Asc, 7, &k)),
                Some(&anew)
            ),
            "invalid_query"
        );
        let other_collection = Query {
            after: Some(encode_cursor(Order::Asc, 0, b"other\0x")),
            ..Query::default()
        };
        assert_eq!(refused(&other_collection, None), "invalid_query");
        let index_cursor_in_id_order = Query {
            after: Some(encode_cursor(Order::Asc, 0, &k)),
            ..Query::default()
        };
        assert_eq!(refused(&index_cursor_in_id_order, None), "invalid_query");
        // Bounds that exclude the cursor's key.
        let mut bounded = by_index(Order::Asc, encode_cursor(Order::Asc, 7, &k));
        bounded.eq = vec![json!("y")];
        assert_eq!(refused(&bounded, Some(&declared)), "invalid_query");
    }

    #[test]
    fn bad_queries_are_refused() {
        let both = Query {
            gt: Some(json!(1)),
            gte: Some(json!(1)),
            ..Query::default()
        };
        assert!(both.range("c", Some(&def())).is_err());
        let too_many = Query {
            eq: vec![json!(1), json!(2), json!(3)],
            ..Query::default()
        };
        assert!(too_many.range("c", Some(&def())).is_err());
        assert!(
            Query {
                limit: QUERY_LIMIT_MAX + 1,
                ..Query::default()
            }
            .page_size()
            .is_err()
        );
    }
}
