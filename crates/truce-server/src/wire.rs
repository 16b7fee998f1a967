//! Decoders of wire inputs that need no server state.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
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
///
/// At most [`JSON_VALUES_MAX`] values: each takes 32 to 80 bytes once read,
/// for as little as 2 bytes of text (`[],`), so 20 MiB of empty arrays took
/// 1.3 GB to read, and any key that may send a body could send them.
pub fn json(bytes: &[u8]) -> Result<Value, JsonRefusal> {
    let left = Cell::new(JSON_VALUES_MAX);
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = Budget(&left)
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    value.map_err(|e| {
        // Only `Budget::take` says this, and only with none left.
        if left.get() == 0 && e.to_string().starts_with(TOO_MANY_VALUES) {
            JsonRefusal::TooManyValues
        } else {
            JsonRefusal::Invalid(e)
        }
    })
}

/// The most values one JSON text may hold (objects, arrays and scalars
/// alike): about 64 MiB once read. A document of the largest size holds
/// half as many at most (1 MiB of `0,`).
pub const JSON_VALUES_MAX: usize = 1 << 20;

const TOO_MANY_VALUES: &str = "more than JSON_VALUES_MAX values";

/// Why [`json`] refused a text.
#[derive(Debug, thiserror::Error)]
pub enum JsonRefusal {
    /// Not JSON, or an object that names a key twice.
    #[error(transparent)]
    Invalid(serde_json::Error),
    /// More than [`JSON_VALUES_MAX`] values.
    #[error("more than {JSON_VALUES_MAX} JSON values (JSON_VALUES_MAX) in one text: send less at once")]
    TooManyValues,
}

/// Why a replicated document whose `_deleted` is not a boolean is refused
/// (`"yes"` read as false would store a live document for a delete).
pub const DELETED_IS_BOOLEAN: &str = "_deleted is true or false";

/// Why a replicated document that [`carries_attachments`] is refused.
pub const NO_ATTACHMENTS: &str = "attachments are not supported: keep binary data elsewhere";

/// Whether a replicated document (RxDB's or CouchDB's) holds attachments: an
/// `_attachments` that is not an empty object. Truce keeps user fields only,
/// so such a document is refused rather than stored without them.
pub fn carries_attachments(doc: &Map<String, Value>) -> bool {
    doc.get("_attachments")
        .is_some_and(|a| a.as_object().is_none_or(|a| !a.is_empty()))
}

/// Reads a [`Value`] whose objects have no key twice, counting its values
/// down from what is left.
#[derive(Clone, Copy)]
struct Budget<'a>(&'a Cell<usize>);

impl<'de> DeserializeSeed<'de> for Budget<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(StrictVisitor(self))
    }
}

impl Budget<'_> {
    /// Counts one value.
    fn take<E: de::Error>(self) -> Result<(), E> {
        match self.0.get() {
            0 => Err(E::custom(TOO_MANY_VALUES)),
            left => {
                self.0.set(left - 1);
                Ok(())
            }
        }
    }
}

struct StrictVisitor<'a>(Budget<'a>);

impl<'de> Visitor<'de> for StrictVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        self.0.take()?;
        // As serde_json's own `Value`: JSON text has no non-finite numbers.
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::String(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.0.take()?;
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.0.take()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(self.0)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.0.take()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self.0)?;
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

/// An RxDB replication checkpoint: the `(seq, id)` position after which to
/// pull, and `from`, the commit at which the client's history began (what a
/// purge of tombstones is checked against: `docs/http.md`, "Tombstones").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The commit of the last document pulled.
    pub seq: u64,
    /// The last document pulled.
    pub id: String,
    /// Where the client's history began; absent in a checkpoint given out
    /// before the server said it.
    pub from: Option<u64>,
    /// The history the position is in (`Db::epoch`); absent in a
    /// checkpoint given out before the server said it.
    pub epoch: Option<u64>,
}

/// Parses a checkpoint, `{"seq": N, "id": "…", "from": B, "epoch": E}`
/// (`from` and `epoch` optional),
/// or `null` / absent for "from the start". The error says what is wrong,
/// for an `invalid_query` answer.
pub fn checkpoint(value: Option<Value>) -> Result<Option<Checkpoint>, &'static str> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(c)) => {
            let seq = c
                .get("seq")
                .and_then(Value::as_u64)
                .ok_or("\"seq\" is a position: an integer, 0 or more, as a pull gave it")?;
            let id = c.get("id").and_then(Value::as_str).ok_or("\"id\" is a string")?;
            let from = match c.get("from") {
                None | Some(Value::Null) => None,
                Some(from) => Some(
                    from.as_u64()
                        .ok_or("\"from\" is a position: an integer, 0 or more, as a pull gave it")?,
                ),
            };
            let epoch = match c.get("epoch") {
                None | Some(Value::Null) => None,
                Some(epoch) => Some(
                    epoch
                        .as_u64()
                        .ok_or("\"epoch\" is an integer, 0 or more, as a pull gave it")?,
                ),
            };
            Ok(Some(Checkpoint {
                seq,
                id: id.to_string(),
                from,
                epoch,
            }))
        }
        Some(_) => Err("an object {\"seq\", \"id\", \"from\", \"epoch\"} or null"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{JSON_VALUES_MAX, JsonRefusal, json};

    #[test]
    fn a_text_holds_at_most_json_values_max_values() {
        let n = JSON_VALUES_MAX;
        // An array and n - 1 numbers: n values.
        let most = format!("[{}0]", "0,".repeat(n - 2));
        assert_eq!(
            json(most.as_bytes()).unwrap().as_array().map(Vec::len),
            Some(n - 1)
        );
        let over = format!("[{}0]", "0,".repeat(n - 1));
        assert!(matches!(json(over.as_bytes()), Err(JsonRefusal::TooManyValues)));
        // Containers count as values too, nested or not.
        let arrays = format!("[{}[]]", "[],".repeat(n));
        assert!(matches!(json(arrays.as_bytes()), Err(JsonRefusal::TooManyValues)));
        let objects = format!("{{\"a\":[{}{{}}]}}", "{\"b\":null},".repeat(n / 2));
        assert!(matches!(
            json(objects.as_bytes()),
            Err(JsonRefusal::TooManyValues)
        ));
        // A syntax error is not a count.
        assert!(matches!(json(b"[1,"), Err(JsonRefusal::Invalid(_))));
    }

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
