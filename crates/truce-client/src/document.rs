//! A document as the server sends it: the user's fields plus the `_` metadata
//! (`_id`, `_rev`, `_version`, `_seq`, `_ts`, `_deleted`), split apart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A stored document: metadata plus the user's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// `_id`: the document id.
    pub id: String,
    /// `_rev`: the revision, `"{version}-{hash}"`.
    pub rev: String,
    /// `_version`: 1 for the first write, +1 for every write after.
    pub version: u64,
    /// `_seq`: the commit sequence number of the last write.
    pub seq: u64,
    /// `_ts`: commit time of the last write, milliseconds since the Unix epoch.
    pub ts: u64,
    /// `_deleted`: true for a tombstone (in change feeds and delete answers).
    pub deleted: bool,
    /// The user's fields: every top-level field not starting with `_`.
    pub body: Map<String, Value>,
}

impl Document {
    /// Parses the server's JSON for a document. `_id`, `_rev`, `_version`, `_seq`
    /// and `_ts` are required; `_deleted` defaults to false; other `_` fields are
    /// dropped from the body.
    pub fn from_json(value: Value) -> Result<Document, String> {
        match value {
            Value::Object(map) => Document::from_map(map),
            other => Err(format!("a document is a JSON object, not {other}")),
        }
    }

    fn from_map(mut map: Map<String, Value>) -> Result<Document, String> {
        let id = take_string(&mut map, "_id")?;
        let rev = take_string(&mut map, "_rev")?;
        let version = take_u64(&mut map, "_version")?;
        let seq = take_u64(&mut map, "_seq")?;
        let ts = take_u64(&mut map, "_ts")?;
        let deleted = match map.remove("_deleted") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(other) => return Err(format!("_deleted is not a boolean: {other}")),
        };
        map.retain(|key, _| !key.starts_with('_'));
        Ok(Document {
            id,
            rev,
            version,
            seq,
            ts,
            deleted,
            body: map,
        })
    }

    /// The document as the server writes it: metadata fields first, then the body.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("_id".into(), Value::from(self.id.as_str()));
        map.insert("_rev".into(), Value::from(self.rev.as_str()));
        map.insert("_version".into(), Value::from(self.version));
        map.insert("_seq".into(), Value::from(self.seq));
        map.insert("_ts".into(), Value::from(self.ts));
        if self.deleted {
            map.insert("_deleted".into(), Value::Bool(true));
        }
        map.extend(self.body.iter().map(|(k, v)| (k.clone(), v.clone())));
        Value::Object(map)
    }

    /// A user field by name.
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.body.get(field)
    }

    /// The commit time of the last write.
    pub fn timestamp(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.ts)
    }
}

fn take_string(map: &mut Map<String, Value>, key: &str) -> Result<String, String> {
    match map.remove(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!("{key} is not a string: {other}")),
        None => Err(format!("{key} is missing")),
    }
}

fn take_u64(map: &mut Map<String, Value>, key: &str) -> Result<u64, String> {
    match map.remove(key) {
        Some(value) => value
            .as_u64()
            .ok_or_else(|| format!("{key} is not a non-negative integer: {value}")),
        None => Err(format!("{key} is missing")),
    }
}

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Document, D::Error> {
        let map = Map::<String, Value>::deserialize(deserializer)?;
        Document::from_map(map).map_err(D::Error::custom)
    }
}

impl Serialize for Document {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server_doc() -> Value {
        json!({"_id": "a", "_rev": "2-9f1c", "_version": 2, "_seq": 17, "_ts": 1763776000000u64,
               "name": "x", "tags": ["t"], "nested": {"_inner": 1}})
    }

    #[test]
    fn parses_metadata_and_keeps_only_user_fields_in_the_body() {
        let doc = Document::from_json(server_doc()).expect("valid");
        assert_eq!(doc.id, "a");
        assert_eq!(doc.rev, "2-9f1c");
        assert_eq!((doc.version, doc.seq, doc.ts), (2, 17, 1_763_776_000_000));
        assert!(!doc.deleted);
        assert_eq!(
            Value::Object(doc.body.clone()),
            json!({"name": "x", "tags": ["t"], "nested": {"_inner": 1}})
        );
        assert_eq!(doc.get("name"), Some(&json!("x")));
        assert_eq!(
            doc.timestamp().duration_since(UNIX_EPOCH).ok(),
            Some(Duration::from_millis(doc.ts))
        );
    }

    #[test]
    fn parses_tombstones_and_drops_unknown_metadata() {
        let doc: Document = serde_json::from_value(
            json!({"_id": "z", "_rev": "3-aa", "_version": 3, "_seq": 9, "_ts": 5, "_deleted": true, "_future": 1}),
        )
        .expect("valid");
        assert!(doc.deleted);
        assert!(doc.body.is_empty());
    }

    #[test]
    fn round_trips_through_the_server_shape() {
        let doc = Document::from_json(server_doc()).expect("valid");
        assert_eq!(doc.to_json(), server_doc());
        let again: Document =
            serde_json::from_str(&serde_json::to_string(&doc).expect("encodes")).expect("decodes");
        assert_eq!(again, doc);
    }

    #[test]
    fn rejects_missing_or_mistyped_metadata() {
        let cases = [
            (json!([1]), "JSON object"),
            (
                json!({"_rev": "1-a", "_version": 1, "_seq": 1, "_ts": 1}),
                "_id is missing",
            ),
            (
                json!({"_id": 5, "_rev": "1-a", "_version": 1, "_seq": 1, "_ts": 1}),
                "_id is not a string",
            ),
            (
                json!({"_id": "a", "_rev": "1-a", "_version": -1, "_seq": 1, "_ts": 1}),
                "_version",
            ),
            (
                json!({"_id": "a", "_rev": "1-a", "_version": 1, "_ts": 1}),
                "_seq is missing",
            ),
            (
                json!({"_id": "a", "_rev": "1-a", "_version": 1, "_seq": 1, "_ts": 1, "_deleted": "y"}),
                "_deleted",
            ),
        ];
        for (value, expected) in cases {
            let message = Document::from_json(value.clone()).expect_err("invalid");
            assert!(message.contains(expected), "{value}: {message}");
        }
    }
}
