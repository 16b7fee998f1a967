//! Decoders of wire inputs that need no server state.

use serde_json::Value;

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
