//! The one total order over JSON values, used by filters, `$min`/`$max` and index keys.
//!
//! Values of different types never compare by content: each type has a bracket, and
//! brackets are ordered as in MongoDB, with booleans last because JSON has no dates:
//!
//! | bracket | type    | order within the bracket                                      |
//! |---------|---------|---------------------------------------------------------------|
//! | 0       | null    | all nulls are equal                                           |
//! | 1       | number  | by numeric value, exactly across integers and floats          |
//! | 2       | string  | by UTF-8 bytes (so `"B" < "a"` and `"z" < "é"`)               |
//! | 3       | object  | as the sorted list of `(key, value)` pairs: key by bytes, then value, shorter list first on a tie |
//! | 4       | array   | element by element, shorter array first on a tie             |
//! | 5       | boolean | `false < true`                                                |
//!
//! Numbers compare by the value they denote, never through a lossy cast: `2^53 + 1`
//! is greater than the float `2^53`, and `u64::MAX` is less than the float `2^64`.
//! Numerically equal numbers compare [`Equal`](Ordering::Equal) whatever their
//! encoding (`1 == 1.0`), as in MongoDB; so this is a total order on values up to
//! that equivalence. It is also the documented sort order of secondary indexes.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

/// The type bracket of `v`: null 0, number 1, string 2, object 3, array 4, boolean 5.
///
/// Range operators (`$gt`, `$lt`, ...) only match values in the operand's bracket.
pub fn type_bracket(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Number(_) => 1,
        Value::String(_) => 2,
        Value::Object(_) => 3,
        Value::Array(_) => 4,
        Value::Bool(_) => 5,
    }
}

/// Compares two values in the order described in the [module docs](self).
pub fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y),
        (Value::String(x), Value::String(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Object(x), Value::Object(y)) => compare_objects(x, y),
        (Value::Array(x), Value::Array(y)) => {
            for (ex, ey) in x.iter().zip(y) {
                let o = compare(ex, ey);
                if o != Ordering::Equal {
                    return o;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => type_bracket(a).cmp(&type_bracket(b)),
    }
}

/// A JSON number as the value it denotes: every integer serde_json can hold fits in i128.
enum Num {
    Int(i128),
    Float(f64),
}

fn num(n: &Number) -> Num {
    if let Some(i) = n.as_i64() {
        Num::Int(i128::from(i))
    } else if let Some(u) = n.as_u64() {
        Num::Int(i128::from(u))
    } else {
        // serde_json numbers are finite, so `as_f64` always answers here.
        Num::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Compares two numbers by their exact values.
pub(crate) fn compare_numbers(a: &Number, b: &Number) -> Ordering {
    match (num(a), num(b)) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Int(x), Num::Float(y)) => compare_int_float(x, y),
        (Num::Float(x), Num::Int(y)) => compare_int_float(y, x).reverse(),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y).unwrap_or_else(|| x.total_cmp(&y)),
    }
}

/// Compares an integer in `[-2^63, 2^64)` with a float without rounding either.
fn compare_int_float(i: i128, f: f64) -> Ordering {
    // Integers held by serde_json lie in [-2^63, 2^64); outside that range (and for
    // the infinities) the float decides alone. NaN cannot occur in serde_json but
    // would sort above every integer, as `total_cmp` puts it above every float.
    const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
    const MINUS_TWO_POW_63: f64 = -9_223_372_036_854_775_808.0;
    if f.is_nan() || f >= TWO_POW_64 {
        return Ordering::Less;
    }
    if f < MINUS_TWO_POW_63 {
        return Ordering::Greater;
    }
    // In range, the integral part converts exactly; the fraction breaks a tie.
    let whole = f.trunc();
    match i.cmp(&(whole as i128)) {
        Ordering::Equal => 0.0_f64.partial_cmp(&(f - whole)).unwrap_or(Ordering::Equal),
        o => o,
    }
}

fn compare_objects(a: &Map<String, Value>, b: &Map<String, Value>) -> Ordering {
    // With serde_json's default features a Map iterates in key order already; if a
    // dependency turns on `preserve_order` it iterates in insertion order, and the
    // order must not change with that, so sort then. Which it is is found once:
    // checking each object's keys made every comparison walk both objects, so
    // a comparison cost the larger one's size, not the smaller one's.
    if maps_iterate_sorted() {
        compare_entries(a.iter(), b.iter())
    } else {
        compare_entries(sorted_entries(a).into_iter(), sorted_entries(b).into_iter())
    }
}

/// Whether serde_json's `Map` iterates in key order (its default) rather than
/// in insertion order (its `preserve_order` feature).
fn maps_iterate_sorted() -> bool {
    static SORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SORTED.get_or_init(|| {
        let mut m = Map::new();
        m.insert("b".into(), Value::Null);
        m.insert("a".into(), Value::Null);
        m.keys().is_sorted()
    })
}

fn sorted_entries(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = m.iter().collect();
    entries.sort_by(|x, y| x.0.cmp(y.0));
    entries
}

fn compare_entries<'a>(
    mut a: impl Iterator<Item = (&'a String, &'a Value)>,
    mut b: impl Iterator<Item = (&'a String, &'a Value)>,
) -> Ordering {
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((ka, va)), Some((kb, vb))) => {
                let o = ka.as_bytes().cmp(kb.as_bytes()).then_with(|| compare(va, vb));
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use std::cmp::Ordering::{Equal, Greater, Less};

    /// Random JSON of bounded size, shared by the property tests of the update modules.
    pub(crate) fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e20..1e20_f64).prop_map(Value::from),
            (-3_i64..4).prop_map(Value::from),
            "[a-c_$.0-2]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-c_$.0-2]{0,4}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn c(a: Value, b: Value) -> Ordering {
        compare(&a, &b)
    }

    #[test]
    fn brackets_are_ordered() {
        let ladder = [
            json!(null),
            json!(-1e300),
            json!(7),
            json!(""),
            json!("zzz"),
            json!({}),
            json!({"a": 1}),
            json!([]),
            json!([null]),
            json!(false),
            json!(true),
        ];
        for (i, x) in ladder.iter().enumerate() {
            for (j, y) in ladder.iter().enumerate() {
                assert_eq!(compare(x, y), i.cmp(&j), "{x} vs {y}");
            }
        }
        let brackets: Vec<u8> = ladder.iter().map(type_bracket).collect();
        assert_eq!(brackets, [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
    }

    #[test]
    fn numbers_compare_exactly() {
        assert_eq!(c(json!(1), json!(1.0)), Equal);
        assert_eq!(c(json!(1), json!(1.5)), Less);
        assert_eq!(c(json!(-2), json!(-2.5)), Greater);
        assert_eq!(c(json!(-3), json!(-2.5)), Less);
        assert_eq!(c(json!(0), json!(-0.0)), Equal);
        // 2^53 + 1 is not representable as f64; a lossy cast would call these equal.
        assert_eq!(
            c(json!(9_007_199_254_740_993_i64), json!(9_007_199_254_740_992.0)),
            Greater
        );
        assert_eq!(c(json!(i64::MAX), json!(u64::MAX)), Less);
        assert_eq!(c(json!(i64::MIN), json!(u64::MAX)), Less);
        assert_eq!(c(json!(u64::MAX), json!(18_446_744_073_709_551_616.0)), Less);
        assert_eq!(
            c(
                json!(9_223_372_036_854_775_808_u64),
                json!(9.223_372_036_854_776e18)
            ),
            Equal
        );
        assert_eq!(c(json!(i64::MIN), json!(-9.223_372_036_854_776e18)), Equal);
        assert_eq!(c(json!(i64::MIN), json!(-1e300)), Greater);
        assert_eq!(c(json!(0), json!(1e300)), Less);
        assert_eq!(c(json!(2.5), json!(2.25)), Greater);
        assert_eq!(c(json!(3.0), json!(2)), Greater);
    }

    #[test]
    fn strings_compare_by_bytes() {
        assert_eq!(c(json!("B"), json!("a")), Less);
        assert_eq!(c(json!("z"), json!("é")), Less);
        assert_eq!(c(json!("ab"), json!("abc")), Less);
        assert_eq!(c(json!("x"), json!("x")), Equal);
    }

    #[test]
    fn arrays_compare_lexicographically() {
        assert_eq!(c(json!([1]), json!([1, 2])), Less);
        assert_eq!(c(json!([2]), json!([1, 5])), Greater);
        assert_eq!(c(json!([1, "a"]), json!([1, 2])), Greater);
        assert_eq!(c(json!([1, [2]]), json!([1.0, [2.0]])), Equal);
    }

    #[test]
    fn objects_compare_as_sorted_pairs() {
        assert_eq!(c(json!({"a": 1}), json!({"a": 2})), Less);
        assert_eq!(c(json!({"a": 9}), json!({"b": 0})), Less);
        assert_eq!(c(json!({}), json!({"a": null})), Less);
        assert_eq!(c(json!({"a": 1}), json!({"a": 1, "b": 1})), Less);
        assert_eq!(c(json!({"b": 1, "a": 2}), json!({"a": 2, "b": 1})), Equal);
        assert_eq!(c(json!({"a": {"x": [1]}}), json!({"a": {"x": [0, 9]}})), Greater);
    }

    #[test]
    fn unsorted_maps_are_sorted_first() {
        // The fallback only runs under `preserve_order`; check it directly.
        let mut m = Map::new();
        m.insert("b".into(), json!(1));
        m.insert("a".into(), json!(2));
        let entries = sorted_entries(&m);
        assert_eq!(entries[0].0, "a");
        assert_eq!(entries[1].0, "b");
    }

    /// This build's maps iterate in key order, so a comparison of objects
    /// takes the path that visits no more than the smaller one (the filter
    /// meter, `update/filter.rs`, counts on it).
    #[test]
    fn maps_iterate_in_key_order() {
        assert!(maps_iterate_sorted());
    }

    #[test]
    fn booleans() {
        assert_eq!(c(json!(false), json!(true)), Less);
        assert_eq!(c(json!(true), json!(true)), Equal);
    }

    proptest! {
        #[test]
        fn order_is_antisymmetric_and_reflexive(a in arb_json(), b in arb_json()) {
            prop_assert_eq!(compare(&a, &a), Equal);
            prop_assert_eq!(compare(&a, &b), compare(&b, &a).reverse());
        }

        #[test]
        fn order_is_transitive(mut v in prop::collection::vec(arb_json(), 3..12)) {
            v.sort_by(compare);
            for i in 0..v.len() {
                for j in i..v.len() {
                    prop_assert_ne!(compare(&v[i], &v[j]), Greater, "{} vs {}", v[i], v[j]);
                }
            }
        }
    }
}
