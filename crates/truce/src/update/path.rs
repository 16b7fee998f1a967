//! Dotted field paths (`a.b.0.c`) and the reads and writes operators and filters make through them.

use std::fmt;

use serde_json::{Map, Value};

use crate::error::Error;
use crate::limits::{DOC_SIZE_BYTES_MAX, PATH_SEGMENTS_MAX};

/// A parsed dotted path: 1 to [`PATH_SEGMENTS_MAX`] non-empty segments, none starting with `$`.
///
/// A segment made of digits (without a leading zero) indexes an array when the value
/// it is applied to is an array; on an object it is an ordinary key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path {
    segments: Vec<String>,
}

/// How many `null`s one path may pad an array with, and one update over all
/// its paths. Every padded `null` costs at least 5 bytes of
/// JSON, so past this the document could not be stored anyway; refusing early
/// keeps a path like `a.999999999`, or 256 paths each padding just under it,
/// from allocating gigabytes before the size check.
const PAD_INDEX_MAX: usize = DOC_SIZE_BYTES_MAX / 5;

/// What is left of one update's padding (`PAD_INDEX_MAX`): the `null`s
/// [`set`] may still add to arrays.
#[derive(Debug)]
pub struct Padding(usize);

impl Default for Padding {
    fn default() -> Padding {
        Padding(PAD_INDEX_MAX)
    }
}

impl Path {
    /// Parses a path that an update writes through.
    ///
    /// Errors: a malformed path is [`Error::InvalidOperator`]; a first segment starting
    /// with `_` (server metadata) is [`Error::ReservedField`]; too many segments is
    /// [`Error::LimitExceeded`] for `PATH_SEGMENTS_MAX`.
    pub fn parse(s: &str) -> Result<Path, Error> {
        let path = Self::parse_with(s, Error::InvalidOperator)?;
        if path.segments[0].starts_with('_') {
            return Err(Error::ReservedField(format!(
                "path '{s}' starts with '_', which is reserved for server metadata"
            )));
        }
        Ok(path)
    }

    /// Parses a path that a filter reads through; unlike [`Path::parse`] it may name
    /// `_` fields, since reading metadata is harmless. Malformed is [`Error::InvalidFilter`].
    pub fn parse_filter(s: &str) -> Result<Path, Error> {
        Self::parse_with(s, Error::InvalidFilter)
    }

    fn parse_with(s: &str, invalid: fn(String) -> Error) -> Result<Path, Error> {
        // Count first so a hostile path never becomes a huge Vec.
        if s.split('.').count() > PATH_SEGMENTS_MAX {
            return Err(Error::LimitExceeded {
                what: "PATH_SEGMENTS_MAX",
                limit: PATH_SEGMENTS_MAX as u64,
            });
        }
        if s.is_empty() {
            return Err(invalid("a field path must not be empty".into()));
        }
        let mut segments = Vec::new();
        for seg in s.split('.') {
            if seg.is_empty() {
                return Err(invalid(format!("path '{s}' has an empty segment")));
            }
            if seg.starts_with('$') {
                return Err(invalid(format!("path '{s}' has a segment starting with '$'")));
            }
            segments.push(seg.to_owned());
        }
        Ok(Path { segments })
    }

    /// The segments, outermost first; never empty.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// Whether `self` is `other` or an ancestor of it (`a` of `a.b`), so that an update
    /// writing both would be ambiguous.
    pub fn is_prefix_of_or_equal(&self, other: &Path) -> bool {
        other.segments.starts_with(&self.segments)
    }

    /// The order an update writes its paths in: segment by segment, array
    /// indexes (canonical digits) by number, before any other key. Writes in
    /// one array then go from its lowest index up, so none lands below a
    /// `null` another padded in (`a.10` first would pad `a.2` with one, and
    /// `a.2.x` could no longer be written), whatever order the client listed
    /// them in.
    pub fn cmp_writes(&self, other: &Path) -> std::cmp::Ordering {
        fn key(seg: &str) -> (u8, usize, &str) {
            match index(seg) {
                Some(_) => (0, seg.len(), seg),
                None => (1, 0, seg),
            }
        }
        let theirs = other.segments.iter().map(|s| key(s));
        self.segments.iter().map(|s| key(s)).cmp(theirs)
    }

    /// The first `n` segments joined, for error messages that name where a walk stopped.
    fn prefix(&self, n: usize) -> String {
        self.segments[..n].join(".")
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("."))
    }
}

/// The JSON type of `v` as users know it, for error messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `seg` as an array index, if it is a canonical decimal (`0`, `12`, not `012`).
fn index(seg: &str) -> Option<usize> {
    let canonical = seg.bytes().all(|b| b.is_ascii_digit()) && (seg == "0" || !seg.starts_with('0'));
    if canonical { seg.parse().ok() } else { None }
}

/// The value at `path` in `doc`, if there is one.
pub fn get<'a>(doc: &'a Map<String, Value>, path: &Path) -> Option<&'a Value> {
    let (first, rest) = path.segments.split_first()?;
    rest.iter().try_fold(doc.get(first)?, |v, seg| match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => a.get(index(seg)?),
        _ => None,
    })
}

/// The value above `path` in `doc` that keeps `$set` from writing it, if
/// any: the first one on the way that is neither an object nor (before an
/// index) an array. A field below it cannot be counted into.
pub fn blocking_parent<'a>(doc: &'a Map<String, Value>, path: &Path) -> Option<&'a Value> {
    let (_, parents) = path.segments.split_last()?;
    let mut at = doc.get(parents.first()?)?;
    for (depth, seg) in path.segments.iter().enumerate().skip(1) {
        let next = match at {
            Value::Object(m) => m.get(seg),
            Value::Array(a) => match index(seg) {
                Some(i) => a.get(i),
                None => return Some(at),
            },
            _ => return Some(at),
        };
        if depth == path.segments.len() - 1 {
            return None;
        }
        at = next?;
    }
    None
}

/// The value at `path` in `doc`, mutably, if there is one; creates nothing.
pub fn get_mut<'a>(doc: &'a mut Map<String, Value>, path: &Path) -> Option<&'a mut Value> {
    get_mut_segments(doc, &path.segments)
}

fn get_mut_segments<'a>(doc: &'a mut Map<String, Value>, segments: &[String]) -> Option<&'a mut Value> {
    let (first, rest) = segments.split_first()?;
    rest.iter().try_fold(doc.get_mut(first)?, |v, seg| match v {
        Value::Object(m) => m.get_mut(seg),
        Value::Array(a) => a.get_mut(index(seg)?),
        _ => None,
    })
}

/// Sets the value at `path`, creating missing intermediate objects (and padding
/// arrays with `null` up to a written index, as MongoDB does).
///
/// Errors with [`Error::InvalidOperator`] naming the path when the walk meets a
/// scalar, or a non-index segment on an array.
pub fn set(doc: &mut Map<String, Value>, path: &Path, value: Value, pad: &mut Padding) -> Result<(), Error> {
    let (last, init) = split(path);
    if init.is_empty() {
        doc.insert(last.to_owned(), value);
        return Ok(());
    }
    let mut cur = doc
        .entry(init[0].clone())
        .or_insert_with(|| Value::Object(Map::new()));
    for (depth, seg) in init.iter().enumerate().skip(1) {
        cur = child_or_create(cur, seg, path, depth, pad)?;
    }
    match cur {
        Value::Object(m) => {
            m.insert(last.to_owned(), value);
        }
        Value::Array(a) => {
            let i = array_index(last, path, init.len())?;
            *slot(a, i, path, pad)? = value;
        }
        other => return Err(descend_error(path, init.len(), other)),
    }
    Ok(())
}

/// Removes the value at `path`; a missing path, or one running into a scalar, is
/// left alone. An array element becomes `null` rather than shifting its successors,
/// so that other indexes stay meaningful (MongoDB's `$unset`).
pub fn remove(doc: &mut Map<String, Value>, path: &Path) {
    let (last, init) = split(path);
    if init.is_empty() {
        doc.remove(last);
        return;
    }
    match get_mut_segments(doc, init) {
        Some(Value::Object(m)) => {
            m.remove(last);
        }
        Some(Value::Array(a)) => {
            if let Some(v) = index(last).and_then(|i| a.get_mut(i)) {
                *v = Value::Null;
            }
        }
        _ => {}
    }
}

fn split(path: &Path) -> (&str, &[String]) {
    match path.segments.split_last() {
        Some((last, init)) => (last, init),
        // Parsing guarantees a segment; an empty path names the root's "" key.
        None => ("", &[]),
    }
}

/// One step of a creating walk: the child `seg` of `cur`, made an empty object if missing.
fn child_or_create<'a>(
    cur: &'a mut Value,
    seg: &str,
    path: &Path,
    depth: usize,
    pad: &mut Padding,
) -> Result<&'a mut Value, Error> {
    match cur {
        Value::Object(m) => Ok(m
            .entry(seg.to_owned())
            .or_insert_with(|| Value::Object(Map::new()))),
        Value::Array(a) => {
            let i = array_index(seg, path, depth)?;
            if i >= a.len() {
                *slot(a, i, path, pad)? = Value::Object(Map::new());
            }
            Ok(&mut a[i])
        }
        other => Err(descend_error(path, depth, other)),
    }
}

/// Element `i` of `a`, padding with `null` when `i` is at or past the end.
/// Only the `null`s added are bounded, not the index: an element past
/// [`PAD_INDEX_MAX`] of an array that long already is written as any other
/// (the index alone was bounded before 2026-12-07, which refused it).
fn slot<'a>(a: &'a mut Vec<Value>, i: usize, path: &Path, pad: &mut Padding) -> Result<&'a mut Value, Error> {
    if i >= a.len() {
        let added = (i - a.len()).saturating_add(1);
        if added > PAD_INDEX_MAX {
            return Err(Error::InvalidOperator(format!(
                "array index {i} in path '{path}' is too large: padding up to it would exceed \
                 DOC_SIZE_BYTES_MAX ({DOC_SIZE_BYTES_MAX} bytes)"
            )));
        }
        if added > pad.0 {
            return Err(Error::InvalidOperator(format!(
                "array index {i} in path '{path}' is too large: with this update's other paths, padding up \
                 to it would exceed DOC_SIZE_BYTES_MAX ({DOC_SIZE_BYTES_MAX} bytes)"
            )));
        }
        pad.0 -= added;
        a.resize(i + 1, Value::Null);
    }
    Ok(&mut a[i])
}

fn array_index(seg: &str, path: &Path, depth: usize) -> Result<usize, Error> {
    index(seg).ok_or_else(|| {
        Error::InvalidOperator(format!(
            "cannot write field '{seg}' of path '{path}': '{}' is an array, which only takes numeric indexes",
            path.prefix(depth)
        ))
    })
}

fn descend_error(path: &Path, depth: usize, found: &Value) -> Error {
    Error::InvalidOperator(format!(
        "cannot write path '{path}': '{}' holds a {}, not an object or array",
        path.prefix(depth),
        type_name(found)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Path {
        Path::parse(s).expect("valid path")
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("test doc must be an object"),
        }
    }

    #[test]
    fn parses_and_displays() {
        let path = p("a.b.0.c");
        assert_eq!(path.segments(), ["a", "b", "0", "c"]);
        assert_eq!(path.to_string(), "a.b.0.c");
        assert!(Path::parse("a._b").is_ok());
        assert!(Path::parse("a-b c").is_ok());
    }

    #[test]
    fn rejects_malformed_paths() {
        for bad in ["", "a..b", ".a", "a.", ".", "$set", "a.$b"] {
            assert!(
                matches!(Path::parse(bad), Err(Error::InvalidOperator(_))),
                "{bad:?}"
            );
            assert!(
                matches!(Path::parse_filter(bad), Err(Error::InvalidFilter(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reserved_first_segment_only_for_updates() {
        assert!(matches!(Path::parse("_id"), Err(Error::ReservedField(m)) if m.contains("_id")));
        assert!(matches!(Path::parse("_x.a"), Err(Error::ReservedField(_))));
        assert_eq!(Path::parse_filter("_id").expect("ok").to_string(), "_id");
    }

    #[test]
    fn segment_count_is_bounded() {
        let ok = vec!["a"; PATH_SEGMENTS_MAX].join(".");
        assert!(Path::parse(&ok).is_ok());
        let long = vec!["a"; PATH_SEGMENTS_MAX + 1].join(".");
        let err = Path::parse(&long).expect_err("too deep");
        assert!(matches!(
            err,
            Error::LimitExceeded {
                what: "PATH_SEGMENTS_MAX",
                ..
            }
        ));
        let err = Path::parse_filter(&".".repeat(100_000)).expect_err("too deep");
        assert!(matches!(err, Error::LimitExceeded { .. }));
    }

    #[test]
    fn prefixes() {
        assert!(p("a").is_prefix_of_or_equal(&p("a.b")));
        assert!(p("a.b").is_prefix_of_or_equal(&p("a.b")));
        assert!(!p("a.b").is_prefix_of_or_equal(&p("a")));
        assert!(!p("a").is_prefix_of_or_equal(&p("ab")));
    }

    #[test]
    fn gets_through_objects_and_arrays() {
        let doc = obj(json!({"a": {"b": [10, {"c": 3}], "0": "zero"}, "s": "x"}));
        assert_eq!(get(&doc, &p("a.b.0")), Some(&json!(10)));
        assert_eq!(get(&doc, &p("a.b.1.c")), Some(&json!(3)));
        assert_eq!(get(&doc, &p("a.0")), Some(&json!("zero")));
        assert_eq!(get(&doc, &p("a.b.2")), None);
        assert_eq!(get(&doc, &p("a.b.01")), None);
        assert_eq!(get(&doc, &p("a.b.x")), None);
        assert_eq!(get(&doc, &p("s.length")), None);
        assert_eq!(get(&doc, &p("missing.x")), None);
    }

    #[test]
    fn get_mut_finds_without_creating() {
        let mut doc = obj(json!({"a": [1, {"b": 2}]}));
        *get_mut(&mut doc, &p("a.1.b")).expect("present") = json!(5);
        assert!(get_mut(&mut doc, &p("a.7")).is_none());
        assert!(get_mut(&mut doc, &p("x.y")).is_none());
        assert_eq!(Value::Object(doc), json!({"a": [1, {"b": 5}]}));
    }

    #[test]
    fn set_creates_intermediate_objects() {
        let mut doc = Map::new();
        set(&mut doc, &p("a.b.c"), json!(1), &mut Padding::default()).expect("set");
        set(&mut doc, &p("a.d"), json!(2), &mut Padding::default()).expect("set");
        set(&mut doc, &p("top"), json!(3), &mut Padding::default()).expect("set");
        assert_eq!(
            Value::Object(doc),
            json!({"a": {"b": {"c": 1}, "d": 2}, "top": 3})
        );
    }

    #[test]
    fn set_into_arrays() {
        let mut doc = obj(json!({"a": [1, 2]}));
        set(&mut doc, &p("a.0"), json!("x"), &mut Padding::default()).expect("replace");
        set(&mut doc, &p("a.2"), json!("end"), &mut Padding::default()).expect("append");
        set(&mut doc, &p("a.5.k"), json!(true), &mut Padding::default()).expect("pad");
        assert_eq!(
            Value::Object(doc),
            json!({"a": ["x", 2, "end", null, null, {"k": true}]})
        );
    }

    #[test]
    fn set_errors_name_the_path() {
        let mut doc = obj(json!({"a": 5, "arr": [1], "n": null}));
        let err = set(&mut doc, &p("a.b.c"), json!(1), &mut Padding::default()).expect_err("scalar");
        assert!(matches!(&err, Error::InvalidOperator(m) if m.contains("'a.b.c'") && m.contains("number")));
        let err = set(&mut doc, &p("a.b"), json!(1), &mut Padding::default()).expect_err("scalar parent");
        assert!(matches!(&err, Error::InvalidOperator(m) if m.contains("'a'")));
        let err = set(&mut doc, &p("n.x"), json!(1), &mut Padding::default()).expect_err("null parent");
        assert!(matches!(&err, Error::InvalidOperator(m) if m.contains("null")));
        let err = set(&mut doc, &p("arr.x"), json!(1), &mut Padding::default()).expect_err("field in array");
        assert!(matches!(&err, Error::InvalidOperator(m) if m.contains("arr.x")));
        let err =
            set(&mut doc, &p("arr.x.y"), json!(1), &mut Padding::default()).expect_err("field in array");
        assert!(matches!(&err, Error::InvalidOperator(_)));
        let err =
            set(&mut doc, &p("arr.999999999"), json!(1), &mut Padding::default()).expect_err("huge pad");
        assert!(matches!(&err, Error::InvalidOperator(m) if m.contains("DOC_SIZE_BYTES_MAX")));
        assert_eq!(Value::Object(doc), json!({"a": 5, "arr": [1], "n": null}));
    }

    #[test]
    fn remove_is_lenient() {
        let mut doc = obj(json!({"a": {"b": 1, "c": 2}, "arr": [1, 2, 3], "s": 1}));
        remove(&mut doc, &p("a.b"));
        remove(&mut doc, &p("arr.1"));
        remove(&mut doc, &p("arr.9"));
        remove(&mut doc, &p("arr.x"));
        remove(&mut doc, &p("s.x"));
        remove(&mut doc, &p("missing.x.y"));
        remove(&mut doc, &p("s"));
        assert_eq!(Value::Object(doc), json!({"a": {"c": 2}, "arr": [1, null, 3]}));
    }

    #[test]
    fn type_names() {
        let names: Vec<_> = [
            json!(null),
            json!(true),
            json!(1),
            json!(""),
            json!([]),
            json!({}),
        ]
        .iter()
        .map(type_name)
        .collect();
        assert_eq!(names, ["null", "boolean", "number", "string", "array", "object"]);
    }
}
