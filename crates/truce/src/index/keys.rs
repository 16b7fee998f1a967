//! Order-preserving encoding of JSON values into index keys, so that byte order of
//! keys is the documented sort order of indexed values.
//!
//! Order: *missing* < null < numbers < strings < objects < arrays < false < true —
//! MongoDB's type brackets ([`value_order`](crate::value_order)), with a missing
//! field first. Within numbers and strings the order is exactly `value_order`'s
//! (numbers by value, `1` equal to `1.0`; strings by UTF-8 bytes). Objects and
//! arrays are ordered by their canonical JSON bytes, which groups equal values
//! together but is not `value_order`'s element-wise order.
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

/// Appends the encoding of one value (`None` = the field is missing).
pub fn encode_value(out: &mut Vec<u8>, value: Option<&Value>) {
    out.push(tag(value));
    match value {
        None | Some(Value::Null | Value::Bool(_)) => {}
        Some(Value::Number(n)) => encode_number(out, n),
        Some(Value::String(s)) => encode_bytes(out, s.as_bytes()),
        Some(other) => encode_bytes(out, &serde_json::to_vec(other).unwrap_or_default()),
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
        encode_value(&mut out, v.as_ref());
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

    #[test]
    fn compound_keys_keep_field_order() {
        let key = |a: Value, b: Value| {
            let mut out = Vec::new();
            encode_value(&mut out, Some(&a));
            encode_value(&mut out, Some(&b));
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
