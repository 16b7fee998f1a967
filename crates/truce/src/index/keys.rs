//! Order-preserving encoding of JSON values into index keys, so that byte order of
//! keys is the documented sort order of indexed values.
//!
//! Order: *missing* < null < numbers < strings < objects < arrays < false < true —
//! MongoDB's type brackets ([`value_order`](crate::value_order)), with a missing
//! field first. Within numbers and strings the order is exactly `value_order`'s
//! (numbers by value, `1` equal to `1.0`; strings by UTF-8 bytes). Objects and
//! arrays are ordered by their canonical JSON bytes (keys sorted, and, in
//! [`KeyFormat::V2`], every number in one form, so that equal values are
//! equal keys), which is not `value_order`'s element-wise order.
//!
//! Every encoding is self-delimiting, so compound keys are concatenations and an
//! equality prefix on the first fields is a byte prefix.

use serde_json::{Number, Value};

const TAG_MISSING: u8 = 0x01;
const TAG_NULL: u8 = 0x02;
const TAG_NUMBER: u8 = 0x03;
const TAG_STRING: u8 = 0x04;
const TAG_OBJECT: u8 = 0x05;
const TAG_ARRAY: u8 = 0x06;
const TAG_FALSE: u8 = 0x07;
const TAG_TRUE: u8 = 0x08;

/// The tag that starts the encoding of `value` (`None` = missing).
pub fn tag(value: Option<&Value>) -> u8 {
    match value {
        None => TAG_MISSING,
        Some(Value::Null) => TAG_NULL,
        Some(Value::Number(_)) => TAG_NUMBER,
        Some(Value::String(_)) => TAG_STRING,
        Some(Value::Object(_)) => TAG_OBJECT,
        Some(Value::Array(_)) => TAG_ARRAY,
        Some(Value::Bool(false)) => TAG_FALSE,
        Some(Value::Bool(true)) => TAG_TRUE,
    }
}

/// The first and last tag of `value`'s type bracket: `false` and `true`
/// have a tag each, in one bracket, as `value_order` has them.
pub fn bracket(value: &Value) -> (u8, u8) {
    match tag(Some(value)) {
        TAG_FALSE | TAG_TRUE => (TAG_FALSE, TAG_TRUE),
        other => (other, other),
    }
}

/// How an index encodes objects and arrays; an index keeps the format it
/// was declared with, as its entries were written in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    /// Their JSON text with numbers as written: `[1]` and `[1.0]` are two
    /// keys (indexes declared before 2026-12-07).
    V1,
    /// Their JSON text with every number in one form ([`write_json`]):
    /// equal values are equal keys.
    V2,
}

impl KeyFormat {
    /// The format of indexes declared now.
    pub const CURRENT: KeyFormat = KeyFormat::V2;

    /// The number stored with a definition.
    pub fn number(self) -> u64 {
        match self {
            KeyFormat::V1 => 1,
            KeyFormat::V2 => 2,
        }
    }

    /// The most bytes one value's encoding takes, for a value whose JSON text
    /// (serde_json's) takes `json_bytes`: a tag, the text escaped (JSON text
    /// holds no NUL byte) and its terminator, or 25 bytes for a number. In
    /// `V2` a float with an integer's value is written as the integer, up
    /// to 20 digits and a sign where its text may be 4 (`1e19`).
    pub fn most_bytes(self, json_bytes: usize) -> usize {
        match self {
            KeyFormat::V1 => json_bytes.saturating_add(25),
            KeyFormat::V2 => json_bytes.saturating_mul(6).saturating_add(25),
        }
    }

    /// The format a stored number names.
    pub fn from_number(n: u64) -> Option<KeyFormat> {
        [KeyFormat::V1, KeyFormat::V2]
            .into_iter()
            .find(|f| f.number() == n)
    }
}

/// Appends the encoding of one value (`None` = the field is missing).
pub fn encode_value(out: &mut Vec<u8>, value: Option<&Value>, format: KeyFormat) {
    out.push(tag(value));
    match value {
        None | Some(Value::Null | Value::Bool(_)) => {}
        Some(Value::Number(n)) => encode_number(out, n),
        Some(Value::String(s)) => encode_bytes(out, s.as_bytes()),
        Some(other) => {
            let mut text = Vec::new();
            match format {
                KeyFormat::V1 => serde_json::to_writer(&mut text, other).unwrap_or_default(),
                KeyFormat::V2 => write_json(&mut text, other),
            }
            encode_bytes(out, &text);
        }
    }
}

/// `value`'s JSON text, object keys sorted by their bytes, with
/// each number in one form for its value: an integral float that an `i64` or
/// `u64` holds as the integer (`1.0` as `1`, `-0.0` as `0`), any other float
/// as its shortest round-trip text, which one value has one of.
pub fn write_json(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Number(n) => {
            // -0.0 is in the first range (it equals 0.0); both casts are
            // exact for an integral float within their range.
            let as_integer = n
                .as_f64()
                .filter(|f| n.is_f64() && f.fract() == 0.0)
                .and_then(|f| {
                    if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                        Some(Number::from(f as u64))
                    } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                        Some(Number::from(f as i64))
                    } else {
                        None
                    }
                });
            out.extend_from_slice(as_integer.as_ref().unwrap_or(n).to_string().as_bytes());
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json(out, item);
            }
            out.push(b']');
        }
        Value::Object(fields) => {
            // Sorted here, not by the map: serde_json's keeps insertion
            // order once any crate turns on `preserve_order`.
            let mut fields: Vec<_> = fields.iter().collect();
            fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, item)) in fields.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).unwrap_or_default();
                out.push(b':');
                write_json(out, item);
            }
            out.push(b'}');
        }
        other => serde_json::to_writer(out, other).unwrap_or_default(),
    }
}

/// Numbers: the value as an order-preserving f64 (8 bytes), then the exact value as
/// an order-preserving i128 when it is integral, so integers beyond 2^53 that round
/// to the same f64 still sort exactly, and `1` and `1.0` encode the same.
fn encode_number(out: &mut Vec<u8>, n: &Number) {
    let (float, exact): (f64, Option<i128>) = if let Some(i) = n.as_i64() {
        (i as f64, Some(i128::from(i)))
    } else if let Some(u) = n.as_u64() {
        (u as f64, Some(i128::from(u)))
    } else {
        let f = n.as_f64().unwrap_or(0.0);
        let integral = f.fract() == 0.0 && f.abs() < 1e38;
        (f, integral.then_some(f as i128))
    };
    let bits = if float == 0.0 {
        0.0f64.to_bits()
    } else {
        float.to_bits()
    };
    let ordered = if bits >> 63 == 1 { !bits } else { bits | (1 << 63) };
    out.extend_from_slice(&ordered.to_be_bytes());
    let exact = exact.unwrap_or(0);
    out.extend_from_slice(&((exact as u128) ^ (1 << 127)).to_be_bytes());
}

/// Bytes with `0x00` escaped as `0x00 0xFF`, terminated by `0x00 0x01`: a prefix
/// sorts before its extensions and the end is unambiguous.
fn encode_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// The smallest key greater than every key that starts with `prefix`, or `None`
/// when there is none (the prefix is all `0xFF`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(v: Option<Value>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_value(&mut out, v.as_ref(), KeyFormat::CURRENT);
        out
    }

    #[test]
    fn byte_order_is_the_documented_value_order() {
        let ordered = [
            None,
            Some(json!(null)),
            Some(json!(-1e300)),
            Some(json!(i64::MIN)),
            Some(json!(-2.5)),
            Some(json!(-1)),
            Some(json!(0)),
            Some(json!(0.5)),
            Some(json!(1)),
            Some(json!(9007199254740992u64)),
            Some(json!(9007199254740993u64)),
            Some(json!(u64::MAX)),
            Some(json!(1e300)),
            Some(json!("")),
            Some(json!("a")),
            Some(json!("a\u{0}")),
            Some(json!("ab")),
            Some(json!("b")),
            Some(json!({"a": 1})),
            Some(json!([1])),
            Some(json!(false)),
            Some(json!(true)),
        ];
        let keys: Vec<Vec<u8>> = ordered.iter().cloned().map(enc).collect();
        for pair in keys.windows(2) {
            assert!(pair[0] < pair[1], "{:?} !< {:?}", pair[0], pair[1]);
        }
        for pair in ordered.windows(2) {
            if let (Some(a), Some(b)) = (&pair[0], &pair[1])
                && crate::value_order::type_bracket(a) <= 2
                && crate::value_order::type_bracket(b) <= 2
            {
                assert_eq!(
                    crate::value_order::compare(a, b),
                    std::cmp::Ordering::Less,
                    "{a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn equal_numbers_encode_equally() {
        assert_eq!(enc(Some(json!(1))), enc(Some(json!(1.0))));
        assert_eq!(enc(Some(json!(0.0))), enc(Some(json!(-0.0))));
    }

    /// Equal objects and arrays are one key whatever form their numbers
    /// take (`value_order` says they are equal), and unequal ones two: a
    /// unique index over `[1]` refused `[1.0]` only in the current format.
    #[test]
    fn equal_objects_and_arrays_encode_equally() {
        let equal = [
            (json!([1]), json!([1.0])),
            (json!({"k": 1, "l": [2, -0.0]}), json!({"l": [2.0, 0], "k": 1.0})),
            (json!([-9223372036854775808i64]), json!([-9223372036854775808.0])),
            (json!([9223372036854775808u64]), json!([9223372036854775808.0])),
            (json!([1e20]), json!([100000000000000000000.0])),
        ];
        for (a, b) in equal {
            assert_eq!(
                crate::value_order::compare(&a, &b),
                std::cmp::Ordering::Equal,
                "{a} {b}"
            );
            assert_eq!(enc(Some(a.clone())), enc(Some(b.clone())), "{a} {b}");
        }
        let unequal = [
            (json!([1]), json!([1.5])),
            (json!([9007199254740993u64]), json!([9007199254740992.0])),
            (json!([0.1]), json!([0.10000000000000002])),
            (json!({"k": 1}), json!({"k": "1"})),
            (json!([u64::MAX]), json!([18446744073709551616.0])),
        ];
        for (a, b) in unequal {
            assert_ne!(enc(Some(a.clone())), enc(Some(b.clone())), "{a} {b}");
        }
        // Indexes declared before keep their keys: their entries hold them.
        let v1 = |v: Value| {
            let mut out = Vec::new();
            encode_value(&mut out, Some(&v), KeyFormat::V1);
            out
        };
        assert_ne!(v1(json!([1])), v1(json!([1.0])));
        assert_eq!(v1(json!([1.5, {"a": 1}])), enc(Some(json!([1.5, {"a": 1}]))));
    }

    /// The text stored keys hold for objects and arrays, pinned: their
    /// floats are written by serde_json's formatter, and an update of it
    /// that wrote one differently would leave stored entries that no write
    /// or query finds again. Should this fail after a dependency update,
    /// keep the old text (or add a key format), never change it in place.
    #[test]
    fn stored_key_text_does_not_change() {
        let value = json!([0.1, -2.5e-8, 1.5e300, 1e20, -1e19, 1e19, 2.0, {"b": 1.0, "a": "x"}]);
        let text = |format| {
            let mut out = Vec::new();
            encode_value(&mut out, Some(&value), format);
            String::from_utf8_lossy(&out[1..out.len() - 2]).into_owned()
        };
        assert_eq!(
            text(KeyFormat::V2),
            r#"[0.1,-2.5e-8,1.5e+300,1e+20,-1e+19,10000000000000000000,2,{"a":"x","b":1}]"#
        );
        assert_eq!(
            text(KeyFormat::V1),
            r#"[0.1,-2.5e-8,1.5e+300,1e+20,-1e+19,1e+19,2.0,{"a":"x","b":1.0}]"#
        );
    }

    /// `most_bytes` bounds every value's encoding by its JSON text: the
    /// committer skips the bound's look for documents it clears.
    #[test]
    fn most_bytes_bounds_each_encoding() {
        let values = [
            json!(0),
            json!(-1e300),
            json!(""),
            json!(null),
            json!(true),
            json!([]),
            json!([1e19, -1e18, 1e16, 1.0, -0.0]),
            json!({"": [1e19], "k": {"": -9.2e18}}),
            json!(["\u{0}", "é"]),
        ];
        for value in values {
            let text = serde_json::to_vec(&value).unwrap().len();
            for format in [KeyFormat::V1, KeyFormat::V2] {
                let mut out = Vec::new();
                encode_value(&mut out, Some(&value), format);
                assert!(
                    out.len() <= format.most_bytes(text),
                    "{value} in {format:?}: {}",
                    out.len()
                );
            }
        }
    }

    #[test]
    fn compound_keys_keep_field_order() {
        let key = |a: Value, b: Value| {
            let mut out = Vec::new();
            encode_value(&mut out, Some(&a), KeyFormat::CURRENT);
            encode_value(&mut out, Some(&b), KeyFormat::CURRENT);
            out
        };
        assert!(key(json!("a"), json!(9)) < key(json!("ab"), json!(0)));
        assert!(key(json!("a"), json!(1)) < key(json!("a"), json!(2)));
        let prefix = enc(Some(json!("a")));
        assert!(key(json!("a"), json!(5)).starts_with(&prefix));
        assert!(!key(json!("ab"), json!(5)).starts_with(&prefix));
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}
