//! Decoders of wire inputs that need no server state.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Value};

/// JSON text from a client, as a [`Value`], refusing an object that names a
/// key twice. `serde_json` keeps the last of two equal keys, so
/// `{"_version": 0, "_version": 5}` would be a write guarded by version 5
/// that its sender may have meant as a create: which one the client meant
/// is not the server's to guess. Otherwise as `serde_json::from_slice`,
/// recursion limit included, but for one thing: an object whose only key is
/// serde_json's private raw-value marker is read as the object it is, where
/// serde_json's `Value` (with the `raw_value` feature, which axum turns on)
/// would read it as the value the marker names.
pub fn json(bytes: &[u8]) -> serde_json::Result<Value> {
    serde_json::from_slice::<Strict>(bytes).map(|Strict(value)| value)
}

/// Why a replicated document that [`carries_attachments`] is refused.
pub const NO_ATTACHMENTS: &str = "attachments are not supported: keep binary data elsewhere";

/// Whether a replicated document (RxDB's or CouchDB's) holds attachments: an
/// `_attachments` that is not an empty object. Truce keeps user fields only,
/// so such a document is refused rather than stored without them.
pub fn carries_attachments(doc: &Map<String, Value>) -> bool {
    doc.get("_attachments")
        .is_some_and(|a| a.as_object().is_none_or(|a| !a.is_empty()))
}

/// A [`Value`] whose objects have no key twice.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Strict, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        // As serde_json's own `Value`: JSON text has no non-finite numbers.
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            match object.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                Entry::Occupied(slot) => {
                    return Err(de::Error::custom(format_args!(
                        "the key {:?} appears twice in one object",
                        slot.key()
                    )));
                }
            }
        }
        Ok(Value::Object(object))
    }
}

/// An RxDB replication checkpoint, `{"seq": N, "id": "…"}`, or `null` / absent for
/// "from the start": the `(seq, id)` position after which to pull. The error
/// says what is wrong, for an `invalid_query` answer.
pub fn checkpoint(value: Option<Value>) -> Result<Option<(u64, String)>, &'static str> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(c)) => {
            let seq = c
                .get("seq")
                .and_then(Value::as_u64)
                .ok_or("\"seq\" is a number")?;
            let id = c.get("id").and_then(Value::as_str).ok_or("\"id\" is a string")?;
            Ok(Some((seq, id.to_string())))
        }
        Some(_) => Err("an object {\"seq\", \"id\"} or null"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::json;

    #[test]
    fn json_reads_what_serde_json_reads() {
        for text in [
            "null",
            "true",
            "-7",
            "18446744073709551615",
            "1.5e300",
            "0.1",
            r#""a\u00e9\n""#,
            r#"{"a": [1, {"b": null}], "c": {}, "d": []}"#,
            r#"[{"k": 1}, {"k": 2}]"#,
        ] {
            let ours = json(text.as_bytes()).unwrap();
            let theirs: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
        }
        assert_eq!(json(br#"{"a":1}"#).unwrap(), json!({"a": 1}));
    }

    #[test]
    fn json_refuses_a_key_named_twice_at_any_depth() {
        for text in [
            r#"{"_version": 0, "_version": 5}"#,
            r#"{"a": {"b": 1, "b": 1}}"#,
            r#"[{"x": 1}, {"y": 2, "y": 3}]"#,
            r#"{"$inc": {"n": 1}, "$inc": {"m": 1}}"#,
        ] {
            let error = json(text.as_bytes()).unwrap_err().to_string();
            assert!(error.contains("appears twice"), "{text}: {error}");
        }
        // The same key in two objects is not a repeat.
        json(br#"{"a": {"k": 1}, "b": {"k": 1}}"#).unwrap();
    }

    #[test]
    fn json_keeps_the_recursion_limit() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(
            json(deep.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("recursion")
        );
        let fine = format!("{}{}", "[".repeat(100), "]".repeat(100));
        json(fine.as_bytes()).unwrap();
    }
}
