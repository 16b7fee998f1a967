//! The document model: bodies, server metadata (`_version`, `_rev`, `_seq`, `_ts`)
//! and the validation of ids, collection names and bodies.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::limits::{COLLECTION_NAME_BYTES_MAX, DOC_DEPTH_MAX, DOC_SIZE_BYTES_MAX, ID_BYTES_MAX};

/// A document's user content: a JSON object without top-level `_` fields.
pub type Body = Map<String, Value>;

/// A revision: `"{version}-{32 lowercase hex}"`, the hex being a 128-bit hash of
/// the canonical content and the deleted flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rev {
    /// The version this revision belongs to (1 on create, +1 per write).
    pub version: u64,
    /// XXH3-128 of the canonical content and the deleted flag.
    pub hash: u128,
}

impl Rev {
    /// The revision of `body` at `version`; `deleted` distinguishes a tombstone.
    pub fn compute(version: u64, canonical_body: &[u8], deleted: bool) -> Rev {
        Rev {
            version,
            hash: content_hash(canonical_body, deleted),
        }
    }
}

/// The hash part of a revision. The deleted flag is hashed too, so a tombstone of
/// an empty document and the empty document itself have different revisions.
pub fn content_hash(canonical_body: &[u8], deleted: bool) -> u128 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&[u8::from(deleted)]);
    hasher.update(canonical_body);
    hasher.digest128()
}

/// Longest revision text: a 20-digit `u64`, `-`, 32 hex digits.
const REV_TEXT_BYTES_MAX: usize = 20 + 1 + 32;

/// A revision's text on the stack (revisions are written on every answer).
pub struct RevText {
    bytes: [u8; REV_TEXT_BYTES_MAX],
    len: usize,
}

impl RevText {
    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits, `-` and hex digits are ever written.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

impl Rev {
    /// `"{version}-{32 lowercase hex}"` without allocating or going through
    /// `fmt` (which costs about 1,000 instructions a revision).
    pub fn text(&self) -> RevText {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = [0u8; REV_TEXT_BYTES_MAX];
        let mut digits = [0u8; 20];
        let mut n = self.version;
        let mut count = 0;
        loop {
            digits[count] = b'0' + (n % 10) as u8;
            count += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for (i, d) in digits[..count].iter().rev().enumerate() {
            bytes[i] = *d;
        }
        bytes[count] = b'-';
        for i in 0..32 {
            let nibble = (self.hash >> (4 * (31 - i))) & 0xf;
            bytes[count + 1 + i] = HEX[nibble as usize];
        }
        RevText {
            bytes,
            len: count + 33,
        }
    }
}

impl fmt::Display for Rev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl serde::Serialize for Rev {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.text().as_str())
    }
}

impl FromStr for Rev {
    type Err = Error;

    fn from_str(s: &str) -> Result<Rev> {
        let bad = || Error::InvalidPrecondition(format!("not a revision: {s:?}"));
        let (version, hash) = s.split_once('-').ok_or_else(bad)?;
        let hash_is_canonical = hash.len() == 32
            && hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hash_is_canonical || version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let version: u64 = version.parse().map_err(|_| bad())?;
        let hash = u128::from_str_radix(hash, 16).map_err(|_| bad())?;
        if version == 0 {
            return Err(bad());
        }
        Ok(Rev { version, hash })
    }
}

/// Server metadata of a stored document or tombstone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// `_rev`; `rev.version` is `_version`.
    pub rev: Rev,
    /// `_seq`: the sequence number of the commit that wrote this state.
    pub seq: u64,
    /// `_ts`: that commit's time, in ms since the Unix epoch.
    pub ts_ms: u64,
    /// Whether this state is a tombstone left by a delete.
    pub deleted: bool,
}

impl Meta {
    /// `_version`.
    pub fn version(&self) -> u64 {
        self.rev.version
    }
}

/// A document as stored: id, metadata and body (empty for a tombstone).
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// The document id within its collection.
    pub id: String,
    /// Server metadata.
    pub meta: Meta,
    /// User content.
    pub body: Body,
}

impl Document {
    /// `_version`.
    pub fn version(&self) -> u64 {
        self.meta.rev.version
    }

    /// `_rev`.
    pub fn rev(&self) -> Rev {
        self.meta.rev
    }

    /// Whether this is a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.meta.deleted
    }

    /// The document as one JSON object with its metadata fields, as the HTTP API
    /// shows it: `_id`, `_rev`, `_version`, `_seq`, `_ts` (and `_deleted` on a tombstone).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Appends the bytes `serde_json::to_vec(self)` gives, without serde's map
    /// machinery: the metadata keys are constants, written as they are instead
    /// of escaped again for every answer (through `Serialize`, each field of a
    /// write's answer cost ~500 instructions, `scripts/callgrind-inc`).
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        out.push(b'{');
        let mut first = true;
        for (k, v) in self.body.iter().filter(|(k, _)| k.as_str() < "_") {
            write_entry(out, &mut first, k, v)?;
        }
        if !first {
            out.push(b',');
        }
        write_meta(out, &self.id, &self.meta);
        for (k, v) in self.body.iter().filter(|(k, _)| k.as_str() > "_") {
            out.push(b',');
            write_entry(out, &mut true, k, v)?;
        }
        out.push(b'}');
        Ok(())
    }
}

/// The metadata fields, in their order among a document's keys (all of
/// them sort together, as body keys never start with `_`), from
/// `"_deleted"` (on a tombstone) to `"_version"`, without a comma around.
fn write_meta(out: &mut Vec<u8>, id: &str, meta: &Meta) {
    if meta.deleted {
        out.extend_from_slice(b"\"_deleted\":true,");
    }
    out.extend_from_slice(b"\"_id\":");
    // Writing a string or a number to memory cannot fail.
    let _ = serde_json::to_writer(&mut *out, id);
    out.extend_from_slice(b",\"_rev\":\"");
    out.extend_from_slice(meta.rev.text().as_str().as_bytes());
    out.extend_from_slice(b"\",\"_seq\":");
    let _ = serde_json::to_writer(&mut *out, &meta.seq);
    out.extend_from_slice(b",\"_ts\":");
    let _ = serde_json::to_writer(&mut *out, &meta.ts_ms);
    out.extend_from_slice(b",\"_version\":");
    let _ = serde_json::to_writer(&mut *out, &meta.rev.version);
}

/// [`Document::write_json`]'s bytes for the document of `id` and `meta`
/// whose body is stored as `canonical` (its [`canonical_bytes`], which the
/// record's revision hash vouches for), without decoding it: the body's
/// entries are copied around the metadata, split where the first key that
/// sorts after `_` begins. A read of a 1 MiB document decoded and encoded
/// again ~85 MiB of values for each `GET` on the HTTP thread (4 such
/// readers took other `GET`s from 5,216 to 137 a second).
///
/// `canonical` must be an object's JSON (`{` to `}`): see
/// [`is_object_json`].
pub fn write_stored_json(id: &str, meta: &Meta, canonical: &[u8], out: &mut Vec<u8>) {
    let split = first_key_after_underscore(canonical);
    let before = canonical[1..split]
        .strip_suffix(b",")
        .unwrap_or(&canonical[1..split]);
    let after = &canonical[split..canonical.len().saturating_sub(1).max(split)];
    out.reserve(canonical.len() + 160);
    out.push(b'{');
    out.extend_from_slice(before);
    if !before.is_empty() {
        out.push(b',');
    }
    write_meta(out, id, meta);
    if !after.is_empty() {
        out.push(b',');
        out.extend_from_slice(after);
    }
    out.push(b'}');
}

/// Whether `json` has an object's braces around it: what
/// [`write_stored_json`] needs of a stored body whose revision hash matched
/// (only a damaged or forged record has other bytes, which a decoding read
/// would refuse as corrupt).
pub fn is_object_json(json: &[u8]) -> bool {
    json.len() >= 2 && json[0] == b'{' && json[json.len() - 1] == b'}'
}

/// In the canonical JSON of an object, where the first entry whose key
/// sorts after `_` begins (its opening quote), or the closing brace. Keys
/// are sorted and none starts with `_`, so it is the first key whose first
/// byte is past it: an escape (`\\`) stands for a character below it (a
/// quote, a backslash or a control character), as an empty key sorts before.
fn first_key_after_underscore(canonical: &[u8]) -> usize {
    top_level_keys(canonical)
        .find(|&at| canonical.get(at + 1).is_some_and(|&first| first > b'_'))
        .unwrap_or(canonical.len().saturating_sub(1))
}

/// In the canonical JSON of an object (a stored body), where its entry
/// named `key` is, found without decoding it: the entry (its key's opening
/// quote to its value's end) and its value's JSON.
pub fn entry_at(canonical: &[u8], key: &str) -> Option<(Range<usize>, Range<usize>)> {
    // Keys are written as `serde_json` writes strings, in the body as here.
    let quoted = serde_json::to_vec(key).ok()?;
    let mut keys = top_level_keys(canonical);
    let start = keys.find(|&at| {
        canonical[at..].starts_with(&quoted) && canonical.get(at + quoted.len()) == Some(&b':')
    })?;
    // Up to the comma before the next key, or the closing brace.
    let end = keys
        .next()
        .map_or(canonical.len().saturating_sub(1), |next| next - 1);
    Some((start..end, start + quoted.len() + 1..end))
}

/// Where each key of the outermost object of the JSON text `json` begins
/// (its opening quote), in order.
fn top_level_keys(json: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let (mut depth, mut key_next) = (0usize, false);
    outside_strings(json).filter_map(move |(at, b)| {
        match b {
            b'{' | b'[' => {
                depth += 1;
                key_next = depth == 1;
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' => key_next = depth == 1,
            b'"' if std::mem::take(&mut key_next) => return Some(at),
            _ => {}
        }
        None
    })
}

/// The bytes of the JSON text `json` outside its strings, with where they
/// are: punctuation, the bytes of numbers and literals, and each string's
/// opening quote (none of what it holds, nor its closing quote).
fn outside_strings(json: &[u8]) -> impl Iterator<Item = (usize, u8)> + '_ {
    let (mut in_string, mut escaped) = (false, false);
    json.iter().enumerate().filter_map(move |(at, &b)| {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            return None;
        }
        in_string = b == b'"';
        Some((at, b))
    })
}

/// About what `body` takes in memory once decoded: an array's values in
/// place (32 bytes each, by its capacity), an object's entries in B-tree
/// nodes of 11 keys and values, about half full when a document is decoded
/// one entry at a time (some 630 bytes for every five entries), and the
/// bytes of strings and keys. A page's bound counts the larger of this and
/// the stored bytes: an array of small numbers takes some 16 times its JSON
/// text (an audit's page of 64 MiB of them took 2.7 GB to answer), an array
/// of one-entry objects ~100 times.
pub fn decoded_size(body: &Body) -> usize {
    values_size(body, true)
}

/// [`decoded_size`] with arrays and strings counted by their length rather
/// than their room: the same for a body however it was decoded or copied
/// (a decoded array has room up to twice its length, a copy none to
/// spare), so that what is refused for it does not change between two
/// tries of the same request.
pub fn decoded_len_size(body: &Body) -> usize {
    values_size(body, false)
}

fn values_size(body: &Body, by_room: bool) -> usize {
    const VALUE: usize = std::mem::size_of::<Value>();
    const NODE: usize = 11 * (std::mem::size_of::<String>() + VALUE) + 16;
    fn text(s: &String, by_room: bool) -> usize {
        if by_room { s.capacity() } else { s.len() }
    }
    fn value(v: &Value, by_room: bool) -> usize {
        match v {
            Value::String(s) => text(s, by_room),
            Value::Array(a) => {
                (if by_room { a.capacity() } else { a.len() }) * VALUE
                    + a.iter().map(|v| value(v, by_room)).sum::<usize>()
            }
            Value::Object(m) => object(m, by_room),
            _ => 0,
        }
    }
    fn object(m: &Body, by_room: bool) -> usize {
        m.len().div_ceil(5) * NODE
            + m.iter()
                .map(|(k, v)| text(k, by_room) + value(v, by_room))
                .sum::<usize>()
    }
    // Nesting is bounded (`DOC_DEPTH_MAX`), so the recursion is too.
    VALUE + object(body, by_room)
}

/// At least [`decoded_size`] of the object whose JSON is `json`, found
/// from its bytes in one pass without decoding them, so that a reader can
/// see that it has room for a document before it decodes it (ten pulls
/// refused for want of room had each decoded a document of 15 MiB first).
/// Strings take at most their JSON's bytes; the elements of arrays are at
/// most their commas and the arrays that are not empty, and an array's
/// room is at most twice its length plus two; the nodes of objects are at
/// most a fifth of their entries (their colons) and one more for each
/// object that is not empty. At most about twice the decoded size (arrays
/// of small numbers; empty arrays and objects ~1.4 times), and no less.
pub fn decoded_size_bound(json: &[u8]) -> usize {
    const VALUE: usize = std::mem::size_of::<Value>();
    const NODE: usize = 11 * (std::mem::size_of::<String>() + VALUE) + 16;
    let (mut commas, mut colons, mut arrays, mut objects) = (0usize, 0usize, 0usize, 0usize);
    let mut last = 0u8;
    for (_, b) in outside_strings(json) {
        // An array or object just opened is not empty unless this closes it
        // (a canonical body has no space between brackets; with one, an
        // empty one counts as not empty, which only overstates).
        match (last, b) {
            (b'[', b']') | (b'{', b'}') => {}
            (b'[', _) => arrays += 1,
            (b'{', _) => objects += 1,
            _ => {}
        }
        match b {
            b',' => commas += 1,
            b':' => colons += 1,
            _ => {}
        }
        last = b;
    }
    json.len() + VALUE * (2 * commas + 4 * arrays + 1) + NODE * (colons.div_ceil(5) + objects)
}

/// `"key":value`, after a comma unless it is the object's first entry.
fn write_entry(out: &mut Vec<u8>, first: &mut bool, key: &str, value: &Value) -> serde_json::Result<()> {
    if !std::mem::take(first) {
        out.push(b',');
    }
    serde_json::to_writer(&mut *out, key)?;
    out.push(b':');
    serde_json::to_writer(&mut *out, value)
}

/// The same object as [`Document::to_json`], written straight to a serializer
/// (no intermediate `Value`): keys in sorted order, the metadata fields among
/// them where `_` sorts (body keys never start with `_`).
impl serde::Serialize for Document {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.body.len() + 5 + usize::from(self.meta.deleted)))?;
        for (k, v) in self.body.iter().filter(|(k, _)| k.as_str() < "_") {
            map.serialize_entry(k, v)?;
        }
        if self.meta.deleted {
            map.serialize_entry("_deleted", &true)?;
        }
        map.serialize_entry("_id", &self.id)?;
        map.serialize_entry("_rev", &self.meta.rev)?;
        map.serialize_entry("_seq", &self.meta.seq)?;
        map.serialize_entry("_ts", &self.meta.ts_ms)?;
        map.serialize_entry("_version", &self.meta.rev.version)?;
        for (k, v) in self.body.iter().filter(|(k, _)| k.as_str() > "_") {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl Document {
    /// Reads back the form [`Document::to_json`] writes; `None` if it is not one.
    pub fn from_json(value: &Value) -> Option<Document> {
        let mut body = value.as_object()?.clone();
        let id = body.remove("_id")?.as_str()?.to_string();
        let rev: Rev = body.remove("_rev")?.as_str()?.parse().ok()?;
        let version = body.remove("_version")?.as_u64()?;
        let seq = body.remove("_seq")?.as_u64()?;
        let ts_ms = body.remove("_ts")?.as_u64()?;
        let deleted = body.remove("_deleted").is_some_and(|d| d == Value::Bool(true));
        (version == rev.version).then_some(Document {
            id,
            meta: Meta {
                rev,
                seq,
                ts_ms,
                deleted,
            },
            body,
        })
    }
}

/// The canonical encoding of a body: keys sorted (serde_json's map is ordered),
/// no whitespace. Revisions hash these bytes and storage keeps them.
pub fn canonical_bytes(body: &Body) -> Vec<u8> {
    // Serializing a map of `Value`s cannot fail: keys are strings, no I/O.
    serde_json::to_vec(body).unwrap_or_default()
}

/// Checks a collection name against `^[A-Za-z][A-Za-z0-9_-]{0,63}$`.
pub fn validate_collection_name(name: &str) -> Result<()> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= COLLECTION_NAME_BYTES_MAX
        && bytes[0].is_ascii_alphabetic()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidCollection(format!(
            "{name:?} must match ^[A-Za-z][A-Za-z0-9_-]{{0,63}}$"
        )))
    }
}

/// Checks a document id: 1–512 bytes of UTF-8, no control characters, not
/// starting with `_`.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > ID_BYTES_MAX {
        return Err(Error::InvalidId(format!(
            "ids are 1 to {ID_BYTES_MAX} bytes, got {}",
            id.len()
        )));
    }
    if id.starts_with('_') {
        return Err(Error::InvalidId(format!(
            "{id:?} starts with '_', which is reserved"
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(Error::InvalidId(format!("{id:?} contains a control character")));
    }
    Ok(())
}

/// Checks the id of a document being written: [`validate_id`], and not `.`
/// or `..`. A document is addressed by a URL path segment, and URL
/// resolution (RFC 3986, 5.2.4) removes these two, percent-encoded or not,
/// so no URL could name such a document. One stored before this rule can
/// still be read, checked and deleted.
pub fn validate_written_id(id: &str) -> Result<()> {
    validate_id(id)?;
    if id == "." || id == ".." {
        return Err(Error::InvalidId(format!(
            "{id:?} is not an id for a new write: URLs resolve it as a path step, so no URL could \
             name the document"
        )));
    }
    Ok(())
}

/// Checks a body a client wants to store and returns its canonical encoding:
/// no top-level `_` or `$` field, nesting within [`DOC_DEPTH_MAX`], size within
/// [`DOC_SIZE_BYTES_MAX`].
pub fn validate_body(body: &Body) -> Result<Vec<u8>> {
    if let Some(key) = body.keys().find(|k| k.starts_with('_')) {
        return Err(Error::ReservedField(format!(
            "{key:?}: top-level fields starting with '_' are server metadata. A document read back \
             carries _id, _rev, _version, _seq and _ts: leave them out of what you write, and give a \
             precondition as a PUT's _version or _rev, or a transaction op's version or rev"
        )));
    }
    // A replacement that reads like an update (`{"$set": …}`) would be stored
    // as it is, with fields no update path can reach: MongoDB refuses it too.
    if let Some(key) = body.keys().find(|k| k.starts_with('$')) {
        return Err(Error::InvalidDocument(format!(
            "{key:?}: a top-level field may not start with '$'. To apply update operators, send them \
             in a PATCH (or a transaction's patch op), not as the document"
        )));
    }
    check_depth(body)?;
    let bytes = canonical_bytes(body);
    check_size(bytes.len())?;
    Ok(bytes)
}

/// Fails with [`Error::DocumentTooLarge`] past [`DOC_SIZE_BYTES_MAX`].
pub fn check_size(size: usize) -> Result<()> {
    if size > DOC_SIZE_BYTES_MAX {
        return Err(Error::DocumentTooLarge {
            size,
            limit: DOC_SIZE_BYTES_MAX,
        });
    }
    Ok(())
}

/// Fails with [`Error::InvalidDocument`] when objects and arrays nest deeper than
/// [`DOC_DEPTH_MAX`]. Iterative, so a hostile document cannot exhaust the stack.
pub fn check_depth(body: &Body) -> Result<()> {
    let mut stack: Vec<(&Value, usize)> = body.values().map(|v| (v, 1)).collect();
    while let Some((value, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Object(map) => Box::new(map.values()),
            Value::Array(items) => Box::new(items.iter()),
            _ => continue,
        };
        if depth >= DOC_DEPTH_MAX {
            return Err(Error::InvalidDocument(format!(
                "nested deeper than {DOC_DEPTH_MAX} levels"
            )));
        }
        stack.extend(children.map(|child| (child, depth + 1)));
    }
    Ok(())
}

/// Turns a JSON value into a body, or fails with [`Error::InvalidDocument`].
pub fn body_from_value(value: Value) -> Result<Body> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(Error::InvalidDocument(format!(
            "a document is a JSON object, not {}",
            json_type_name(&other)
        ))),
    }
}

/// The JSON type of a value, for messages.
pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What a decoded document takes, by a count of its values, is not far
    /// below what it allocates: an array of one-entry objects allocates a
    /// B-tree node (~630 bytes) for each, an array of numbers 32 bytes each
    /// (a review measured 67 MB allocated for 100,000 `{"": 0}`).
    #[test]
    fn decoded_size_counts_what_decoding_allocates() {
        let parse = |text: &str| serde_json::from_str::<Body>(text).unwrap();
        let objects = format!(r#"{{"a":[{}]}}"#, vec![r#"{"":0}"#; 100_000].join(","));
        assert!(decoded_size(&parse(&objects)) >= 100_000 * 600);
        let numbers = format!(r#"{{"a":[{}]}}"#, vec!["1"; 100_000].join(","));
        assert!(decoded_size(&parse(&numbers)) >= 100_000 * 32);
        let keys = format!(
            "{{{}}}",
            (0..1000)
                .map(|i| format!(r#""k{i}":0"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(decoded_size(&parse(&keys)) >= 1000 / 5 * 600);
    }

    /// JSON values of every kind, nested, whose strings and keys hold the
    /// JSON's own punctuation, escapes and other scripts.
    pub(crate) fn punctuated_values() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e20..1e20_f64).prop_map(Value::from),
            "[a_,:{}\\[\\]\"\\\\\n\u{e9}]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 9, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..9).prop_map(Value::Array),
                prop::collection::btree_map("[a_,:\\[{\"]{0,4}", inner, 0..12)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A stored document is written from its canonical body exactly as
    /// from its decoded one, whatever its keys sort like around `_` (upper
    /// and lower case, digits, escapes, other scripts, the empty key) and
    /// whatever its values hold (nesting, strings of JSON punctuation).
    #[test]
    fn a_stored_body_is_written_as_its_decoded_document() {
        use proptest::prelude::*;
        let value = punctuated_values();
        let key = "[A-Za-z0-9_\"\\\\\\n~\\u{e9}\\u{1}]{0,4}"
            .prop_filter("not metadata", |k: &String| !k.starts_with('_'));
        let body = prop::collection::btree_map(key, value, 0..10);
        proptest!(|(entries in body, deleted in any::<bool>(), seq in any::<u64>())| {
            let body: Body = entries.into_iter().collect();
            let canonical = canonical_bytes(&body);
            let doc = Document {
                id: "id \"é\"".into(),
                meta: Meta {
                    rev: Rev::compute(3, &canonical, deleted),
                    seq,
                    ts_ms: seq / 7,
                    deleted,
                },
                body,
            };
            let (mut decoded, mut stored) = (Vec::new(), Vec::new());
            doc.write_json(&mut decoded).unwrap();
            write_stored_json(&doc.id, &doc.meta, &canonical, &mut stored);
            prop_assert_eq!(String::from_utf8(stored).unwrap(), String::from_utf8(decoded).unwrap());
            // Each of its entries is found in its bytes, and no other: one
            // only nested, a value that reads like a key, a prefix.
            for (key, value) in &doc.body {
                let (entry, at) = entry_at(&canonical, key).unwrap();
                prop_assert_eq!(&canonical[at], &serde_json::to_vec(value).unwrap()[..]);
                let written = [serde_json::to_vec(key).unwrap(), b":".to_vec(), serde_json::to_vec(value).unwrap()];
                prop_assert_eq!(&canonical[entry], &written.concat()[..]);
            }
            for other in ["id", "a", "\"", "A\\", "", "~é"] {
                prop_assert_eq!(entry_at(&canonical, other).is_some(), doc.body.contains_key(other), "{:?}", other);
            }
        });
    }

    /// The bound a reader checks its room against before it decodes is
    /// never below what the document comes to decoded, whatever its shape
    /// (strings that hold the JSON's own punctuation, escapes, empty and
    /// small arrays, nesting), and not far above it for the shape that
    /// decodes largest per byte.
    #[test]
    fn the_bound_before_decoding_is_never_below_the_decoded_size() {
        use proptest::prelude::*;
        let value = punctuated_values();
        let body = prop::collection::btree_map("[a-z,\"]{0,4}", value, 0..12);
        proptest!(|(entries in body)| {
            let json = serde_json::to_vec(&entries).unwrap();
            let decoded: Body = serde_json::from_slice(&json).unwrap();
            prop_assert!(
                decoded_size_bound(&json) >= decoded_size(&decoded),
                "{} < {} for {}",
                decoded_size_bound(&json),
                decoded_size(&decoded),
                String::from_utf8_lossy(&json)
            );
        });
        // Shapes where a term of the bound is all that holds it up: arrays
        // of one element (their room of four), of empty objects, a string
        // whose escaped quote must not end it before the commas that follow.
        for json in [
            format!(r#"{{"a":[{}]}}"#, vec!["[1]"; 1000].join(",")),
            format!(r#"{{"a":[{}]}}"#, vec!["{}"; 1000].join(",")),
            format!(r#"{{"a":"\"","b":[{}]}}"#, vec!["1"; 1000].join(",")),
        ] {
            let decoded = decoded_size(&serde_json::from_str(&json).unwrap());
            let bound = decoded_size_bound(json.as_bytes());
            assert!(bound >= decoded, "{bound} < {decoded} for {json:.40}");
        }
        // Documents of the largest size of the shapes that decode largest
        // per byte (and of empty containers, which decode to nothing but
        // their slot): the bound stays within about twice what they take,
        // and far within the default memory of the pages being read.
        for element in ["1", "[1]", "[]", "{}", r#"{"":0}"#, r#""""#, "[[[1]]]"] {
            for n in [
                1,
                7,
                1000,
                (crate::limits::DOC_SIZE_BYTES_MAX - 10) / (element.len() + 1),
            ] {
                let json = format!(r#"{{"a":[{}]}}"#, vec![element; n].join(","));
                let decoded = decoded_size(&serde_json::from_str(&json).unwrap());
                let bound = decoded_size_bound(json.as_bytes());
                assert!(
                    bound >= decoded && bound <= decoded * 22 / 10 + 2_000,
                    "{n} × {element}: {bound} vs {decoded}"
                );
                assert!(
                    bound < crate::limits::PAGE_MEMORY_BYTES_DEFAULT / 2,
                    "{element}: {bound}"
                );
            }
        }
    }
    use serde_json::json;

    fn body(v: Value) -> Body {
        body_from_value(v).unwrap()
    }

    #[test]
    fn a_document_serializes_as_its_json_object_in_sorted_key_order() {
        for deleted in [false, true] {
            let doc = Document {
                id: "d1".into(),
                meta: Meta {
                    rev: Rev::compute(2, b"{}", deleted),
                    seq: 7,
                    ts_ms: 1234,
                    deleted,
                },
                body: body(json!({"Zeta": 1, "1st": [true], "alpha": {"b": null}, "": "empty", "z": "x"})),
            };
            let mut expected = json!({"Zeta": 1, "1st": [true], "alpha": {"b": null}, "": "empty", "z": "x",
                                      "_id": "d1", "_rev": doc.meta.rev.to_string(), "_version": 2,
                                      "_seq": 7, "_ts": 1234});
            if deleted {
                expected["_deleted"] = json!(true);
            }
            assert_eq!(doc.to_json(), expected);
            // Streaming gives the same bytes as serializing the object map.
            assert_eq!(
                serde_json::to_string(&doc).unwrap(),
                serde_json::to_string(&expected).unwrap()
            );
            assert_eq!(Document::from_json(&doc.to_json()), Some(doc));
        }
    }

    #[test]
    fn write_json_gives_the_bytes_of_serialize() {
        let bodies = [
            json!({}),
            json!({"n": 1}),
            json!({"zz": 1}),
            json!({"A": "q\"uote\\", "é": "ü\u{1}\n", "a": [1.5, -2, null, {"x": {}}], "z": {"_": true}}),
        ];
        for body_value in bodies {
            for deleted in [false, true] {
                for id in ["d1", "with \"quote\" and \\ and \u{7f}", ""] {
                    let doc = Document {
                        id: id.into(),
                        meta: Meta {
                            rev: Rev::compute(u64::MAX - 1, b"{}", deleted),
                            seq: 0,
                            ts_ms: u64::MAX,
                            deleted,
                        },
                        body: body(body_value.clone()),
                    };
                    let mut written = vec![b'x'];
                    doc.write_json(&mut written).unwrap();
                    assert_eq!(
                        String::from_utf8(written[1..].to_vec()).unwrap(),
                        serde_json::to_string(&doc).unwrap(),
                        "{body_value} {deleted} {id:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn rev_text_matches_the_formatted_form() {
        for (version, hash) in [
            (1, 0u128),
            (9, 1),
            (10, u128::MAX),
            (u64::MAX, 0x0123_4567_89ab_cdef << 64),
        ] {
            let rev = Rev { version, hash };
            assert_eq!(rev.text().as_str(), format!("{version}-{hash:032x}"));
            assert_eq!(rev.to_string().parse::<Rev>().unwrap(), rev);
        }
    }

    #[test]
    fn rev_round_trips_and_is_canonical() {
        let rev = Rev::compute(3, b"{\"a\":1}", false);
        let text = rev.to_string();
        assert!(text.starts_with("3-"));
        assert_eq!(text.len(), 2 + 32);
        assert_eq!(text.parse::<Rev>().unwrap(), rev);
        for bad in [
            "",
            "3",
            "3-",
            "0-00000000000000000000000000000000",
            "x-00",
            "3-ABCDEF00000000000000000000000000",
        ] {
            assert_eq!(
                bad.parse::<Rev>().unwrap_err().code(),
                "invalid_precondition",
                "{bad}"
            );
        }
    }

    #[test]
    fn hash_covers_content_and_deleted_flag_not_key_order() {
        let a = canonical_bytes(&body(json!({"b": 1, "a": [1, 2]})));
        let b = canonical_bytes(&serde_json::from_str(r#"{ "a" : [1,2], "b":1 }"#).unwrap());
        assert_eq!(a, b);
        assert_eq!(a, br#"{"a":[1,2],"b":1}"#);
        assert_ne!(content_hash(&a, false), content_hash(&a, true));
        assert_ne!(content_hash(&a, false), content_hash(b"{}", false));
    }

    #[test]
    fn collection_names() {
        for ok in ["a", "Users", "a-b_c9", &"x".repeat(64)] {
            validate_collection_name(ok).unwrap();
        }
        for bad in ["", "9a", "_a", "a b", "a/b", "é", &"x".repeat(65)] {
            assert_eq!(
                validate_collection_name(bad).unwrap_err().code(),
                "invalid_collection",
                "{bad}"
            );
        }
    }

    #[test]
    fn ids() {
        for ok in ["a", "é", "a b/c", ".a", "..a", "...", &"x".repeat(512)] {
            validate_id(ok).unwrap();
            validate_written_id(ok).unwrap();
        }
        for bad in ["", "_a", "a\nb", "a\u{0}", &"x".repeat(513)] {
            assert_eq!(validate_id(bad).unwrap_err().code(), "invalid_id", "{bad:?}");
            assert_eq!(
                validate_written_id(bad).unwrap_err().code(),
                "invalid_id",
                "{bad:?}"
            );
        }
        for dots in [".", ".."] {
            validate_id(dots).unwrap();
            assert_eq!(validate_written_id(dots).unwrap_err().code(), "invalid_id");
        }
    }

    #[test]
    fn bodies() {
        validate_body(&body(json!({"a": {"_nested": 1}}))).unwrap();
        assert_eq!(
            validate_body(&body(json!({"_id": 1}))).unwrap_err().code(),
            "reserved_field"
        );
        let mut deep = json!(1);
        for _ in 0..DOC_DEPTH_MAX {
            deep = json!([deep]);
        }
        assert_eq!(
            validate_body(&body(json!({"a": deep}))).unwrap_err().code(),
            "invalid_document"
        );
        let big = "x".repeat(DOC_SIZE_BYTES_MAX);
        assert_eq!(
            validate_body(&body(json!({"a": big}))).unwrap_err().code(),
            "payload_too_large"
        );
        assert_eq!(
            body_from_value(json!([1])).unwrap_err().code(),
            "invalid_document"
        );
    }
}
