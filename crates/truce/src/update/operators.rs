//! The update operators: validating each operand at parse time and applying it at one path.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use serde_json::{Map, Number, Value};

use super::filter::{Condition, Filter, Work, parse_condition};
use super::path::{self, Path, type_name};
use crate::error::Error;
use crate::value_order::compare;

/// Operator names in the order an update applies them; fixed so that evaluation
/// never depends on how the client ordered its keys.
pub const OPERATORS: [&str; 11] = [
    "$set",
    "$unset",
    "$inc",
    "$mul",
    "$min",
    "$max",
    "$push",
    "$addToSet",
    "$pull",
    "$currentDate",
    "$setOnInsert",
];

/// One operator applied at one path, with its operand already validated.
#[derive(Clone, Debug)]
pub(super) enum Op {
    Set(Value),
    Unset,
    Inc(Number),
    Mul(Number),
    Min(Value),
    Max(Value),
    Push(Vec<Value>),
    AddToSet(Vec<Value>),
    Pull(Pull),
    CurrentDate,
    SetOnInsert(Value),
}

/// What `$pull` removes from an array.
#[derive(Clone, Debug)]
pub(super) enum Pull {
    /// Elements equal to this value.
    Equal(Value),
    /// Elements satisfying a field-level condition such as `{"$gte": 6}`.
    Condition(Condition),
    /// Object elements matching a filter on their fields, such as `{"name": "x"}`.
    Filter(Filter),
}

impl Op {
    /// Validates `arg` as the operand of operator `name` (one of [`OPERATORS`]) at `path`.
    pub(super) fn parse(name: &str, path: &Path, arg: &Value) -> Result<Op, Error> {
        let bad = |need: &str| {
            Error::InvalidOperator(format!(
                "'{name}' at '{path}' needs {need}, found {}",
                type_name(arg)
            ))
        };
        Ok(match name {
            "$set" => Op::Set(arg.clone()),
            "$unset" => Op::Unset,
            "$inc" | "$mul" => {
                let Value::Number(n) = arg else {
                    return Err(bad("a number"));
                };
                if name == "$inc" {
                    Op::Inc(n.clone())
                } else {
                    Op::Mul(n.clone())
                }
            }
            "$min" => Op::Min(arg.clone()),
            "$max" => Op::Max(arg.clone()),
            "$push" => Op::Push(each(name, path, arg)?),
            "$addToSet" => Op::AddToSet(each(name, path, arg)?),
            "$pull" => Op::Pull(pull(path, arg)?),
            "$currentDate" => match arg {
                Value::Bool(true) => Op::CurrentDate,
                Value::Object(m)
                    if m.len() == 1
                        && matches!(m.get("$type").and_then(Value::as_str), Some("date" | "timestamp")) =>
                {
                    Op::CurrentDate
                }
                _ => {
                    return Err(bad("true or {\"$type\": \"date\"} or {\"$type\": \"timestamp\"}"));
                }
            },
            "$setOnInsert" => Op::SetOnInsert(arg.clone()),
            other => {
                return Err(Error::InvalidOperator(format!(
                    "unknown update operator '{other}'"
                )));
            }
        })
    }

    /// The operator's name, for error messages.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Op::Set(_) => "$set",
            Op::Unset => "$unset",
            Op::Inc(_) => "$inc",
            Op::Mul(_) => "$mul",
            Op::Min(_) => "$min",
            Op::Max(_) => "$max",
            Op::Push(_) => "$push",
            Op::AddToSet(_) => "$addToSet",
            Op::Pull(_) => "$pull",
            Op::CurrentDate => "$currentDate",
            Op::SetOnInsert(_) => "$setOnInsert",
        }
    }

    /// Applies the operator at `path` at time `now_ms`, charging `$pull`'s
    /// conditions to `work`; `inserting` says whether the document is new.
    pub(super) fn apply(
        &self,
        doc: &mut Map<String, Value>,
        path: &Path,
        (now_ms, work): (u64, &mut Work),
        inserting: bool,
        pad: &mut path::Padding,
    ) -> Result<(), Error> {
        match self {
            Op::Set(v) => path::set(doc, path, v.clone(), pad),
            Op::SetOnInsert(v) if inserting => path::set(doc, path, v.clone(), pad),
            Op::SetOnInsert(_) => Ok(()),
            Op::Unset => {
                path::remove(doc, path);
                Ok(())
            }
            Op::CurrentDate => path::set(doc, path, Value::from(now_ms), pad),
            Op::Inc(n) | Op::Mul(n) => {
                let is_inc = matches!(self, Op::Inc(_));
                let new = match path::get_mut(doc, path) {
                    // The operand itself, past i64 as anywhere else (`arith`).
                    None if is_inc => {
                        arith(&Number::from(0), n, true, self.name(), path)?;
                        n.clone()
                    }
                    // MongoDB: a missing field becomes zero of the multiplier's kind.
                    None if n.is_f64() => Number::from_f64(0.0).unwrap_or_else(|| Number::from(0)),
                    None => Number::from(0),
                    // In place: no second walk, no new key.
                    Some(Value::Number(cur)) => {
                        *cur = arith(cur, n, is_inc, self.name(), path)?;
                        return Ok(());
                    }
                    Some(other) => return Err(self.wrong_type(path, other, "a number")),
                };
                path::set(doc, path, Value::Number(new), pad)
            }
            Op::Min(v) | Op::Max(v) => {
                let wanted = if matches!(self, Op::Min(_)) {
                    Ordering::Less
                } else {
                    Ordering::Greater
                };
                match path::get(doc, path) {
                    Some(cur) if compare(v, cur) != wanted => Ok(()),
                    _ => path::set(doc, path, v.clone(), pad),
                }
            }
            Op::Push(items) | Op::AddToSet(items) => {
                let unique = matches!(self, Op::AddToSet(_));
                match path::get_mut(doc, path) {
                    Some(Value::Array(a)) => {
                        let new = if unique { not_in(a, items) } else { items.clone() };
                        a.extend(new);
                        Ok(())
                    }
                    Some(other) => Err(self.wrong_type(path, other, "an array")),
                    None => {
                        let new = if unique { not_in(&[], items) } else { items.clone() };
                        path::set(doc, path, Value::Array(new), pad)
                    }
                }
            }
            Op::Pull(p) => match path::get_mut(doc, path) {
                Some(Value::Array(a)) => {
                    // Once `work` runs out nothing more is removed, and the
                    // whole update is refused.
                    a.retain(|e| !p.matches(e, now_ms, work));
                    work.check()
                }
                Some(other) => Err(self.wrong_type(path, other, "an array")),
                None => Ok(()),
            },
        }
    }

    fn wrong_type(&self, path: &Path, found: &Value, need: &str) -> Error {
        Error::InvalidOperator(format!(
            "'{}' at '{path}' needs {need} there, found a {}",
            self.name(),
            type_name(found)
        ))
    }
}

impl Pull {
    /// Whether `e` goes. Removing equal values is linear in the array, and
    /// charges nothing.
    fn matches(&self, e: &Value, now_ms: u64, work: &mut Work) -> bool {
        match self {
            Pull::Equal(v) => compare(e, v).is_eq(),
            Pull::Condition(c) => c.test(Some(e), now_ms, work),
            Pull::Filter(f) => matches!(e, Value::Object(m) if f.test(m, now_ms, work)),
        }
    }
}

/// The items a `$push`/`$addToSet` operand adds: `{"$each": [..]}` or one value.
fn each(name: &str, path: &Path, arg: &Value) -> Result<Vec<Value>, Error> {
    let Value::Object(m) = arg else {
        return Ok(vec![arg.clone()]);
    };
    let Some(modifier) = m.keys().find(|k| k.starts_with('$')) else {
        return Ok(vec![arg.clone()]);
    };
    match (m.get("$each"), m.len()) {
        (Some(Value::Array(items)), 1) => Ok(items.clone()),
        (Some(_), 1) => Err(Error::InvalidOperator(format!(
            "'$each' of '{name}' at '{path}' must be an array"
        ))),
        _ => Err(Error::InvalidOperator(format!(
            "'{name}' at '{path}' supports only the '$each' modifier, alone (found '{modifier}' among {} keys)",
            m.len()
        ))),
    }
}

/// Classifies a `$pull` operand: a plain object is a filter on object elements,
/// an operator object a condition on each element, anything else a value to remove.
fn pull(path: &Path, arg: &Value) -> Result<Pull, Error> {
    let in_pull = |e: Error| match e {
        Error::InvalidFilter(msg) => Error::InvalidOperator(format!("'$pull' at '{path}': {msg}")),
        other => other,
    };
    match arg {
        Value::Object(m) if m.keys().all(|k| !k.starts_with('$')) => {
            Filter::parse(arg).map(Pull::Filter).map_err(in_pull)
        }
        Value::Object(_) => parse_condition(arg).map(Pull::Condition).map_err(in_pull),
        _ => Ok(Pull::Equal(arg.clone())),
    }
}

/// The items not yet in `existing` (nor earlier among `items`), in order. Sorted
/// sets keep this O((n + m) log n) even for large arrays.
fn not_in(existing: &[Value], items: &[Value]) -> Vec<Value> {
    let mut seen: BTreeSet<ByOrder<'_>> = existing.iter().map(ByOrder).collect();
    items
        .iter()
        .filter(|v| seen.insert(ByOrder(v)))
        .cloned()
        .collect()
}

/// A value ordered by [`compare`], so equal-by-value items (`1`, `1.0`) collide.
struct ByOrder<'a>(&'a Value);

impl PartialEq for ByOrder<'_> {
    fn eq(&self, other: &Self) -> bool {
        compare(self.0, other.0).is_eq()
    }
}
impl Eq for ByOrder<'_> {}
impl PartialOrd for ByOrder<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByOrder<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(self.0, other.0)
    }
}

/// `cur + n` or `cur * n` as MongoDB does it: integers stay integers and must not
/// overflow i64 (a stored value already beyond i64, up to u64::MAX, may stay
/// there; an operand beyond i64 does not take the result there, or `$mul` of 1
/// by `u64::MAX` would pass where `$inc` of 1 by `i64::MAX` is refused); any
/// float makes the result a float, which must be finite.
fn arith(cur: &Number, n: &Number, add: bool, name: &str, path: &Path) -> Result<Number, Error> {
    let overflow = || Error::InvalidOperator(format!("'{name}' at '{path}' overflows ({cur} and {n})"));
    let int = |x: &Number| x.as_i64().map(i128::from).or_else(|| x.as_u64().map(i128::from));
    if let (Some(a), Some(b)) = (int(cur), int(n)) {
        let r = if add { a.checked_add(b) } else { a.checked_mul(b) }.ok_or_else(overflow)?;
        if let Ok(r) = i64::try_from(r) {
            return Ok(Number::from(r));
        }
        let beyond_i64 = a > i128::from(i64::MAX);
        return match u64::try_from(r) {
            Ok(r) if beyond_i64 => Ok(Number::from(r)),
            _ => Err(overflow()),
        };
    }
    let (Some(a), Some(b)) = (cur.as_f64(), n.as_f64()) else {
        return Err(overflow());
    };
    Number::from_f64(if add { a + b } else { a * b }).ok_or_else(overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p() -> Path {
        Path::parse("f").expect("valid")
    }

    fn num(v: Value) -> Number {
        match v {
            Value::Number(n) => n,
            _ => panic!("not a number"),
        }
    }

    fn add(a: Value, b: Value) -> Result<Value, Error> {
        arith(&num(a), &num(b), true, "$inc", &p()).map(Value::Number)
    }

    fn mul(a: Value, b: Value) -> Result<Value, Error> {
        arith(&num(a), &num(b), false, "$mul", &p()).map(Value::Number)
    }

    fn overflows(r: Result<Value, Error>) -> bool {
        matches!(r, Err(Error::InvalidOperator(m)) if m.contains("overflows") && m.contains("'f'"))
    }

    #[test]
    fn integer_arithmetic_is_checked() {
        assert_eq!(add(json!(2), json!(3)).expect("ok"), json!(5));
        assert_eq!(add(json!(2), json!(-3)).expect("ok"), json!(-1));
        assert_eq!(mul(json!(-4), json!(3)).expect("ok"), json!(-12));
        assert!(overflows(add(json!(i64::MAX), json!(1))));
        assert!(overflows(add(json!(i64::MIN), json!(-1))));
        assert!(overflows(mul(json!(i64::MAX), json!(2))));
        // u64 values that fit in i64 are plain integers.
        assert_eq!(add(json!(5_u64), json!(-10)).expect("ok"), json!(-5));
        // Values already beyond i64 may stay in u64 but not leave it.
        let big = u64::MAX - 1;
        assert_eq!(add(json!(big), json!(1)).expect("ok"), json!(u64::MAX));
        assert!(overflows(add(json!(u64::MAX), json!(u64::MAX))));
        assert!(overflows(mul(json!(u64::MAX), json!(u64::MAX))));
        assert_eq!(
            add(json!(u64::MAX), json!(i64::MIN)).expect("ok"),
            json!(i64::MAX as u64)
        );
        // An operand beyond i64 leaves the result to i64, as any other.
        assert!(overflows(add(json!(1), json!(1_u64 << 63))));
        assert!(overflows(mul(json!(1), json!(u64::MAX))));
        assert_eq!(add(json!(-1), json!(1_u64 << 63)).expect("ok"), json!(i64::MAX));
    }

    #[test]
    fn floats_win() {
        assert_eq!(add(json!(1), json!(0.5)).expect("ok"), json!(1.5));
        assert_eq!(add(json!(1.5), json!(1)).expect("ok"), json!(2.5));
        assert_eq!(mul(json!(2), json!(1.0)).expect("ok"), json!(2.0));
        assert!(add(json!(1), json!(1.0)).expect("ok").is_f64());
        assert!(overflows(mul(json!(1e300), json!(1e300))));
    }

    #[test]
    fn each_modifier() {
        let parse = |v: Value| each("$push", &p(), &v);
        assert_eq!(parse(json!(1)).expect("ok"), vec![json!(1)]);
        assert_eq!(parse(json!([1, 2])).expect("ok"), vec![json!([1, 2])]);
        assert_eq!(parse(json!({"a": 1})).expect("ok"), vec![json!({"a": 1})]);
        assert_eq!(
            parse(json!({"$each": [1, 2]})).expect("ok"),
            vec![json!(1), json!(2)]
        );
        assert!(
            matches!(parse(json!({"$each": 1})), Err(Error::InvalidOperator(m)) if m.contains("must be an array"))
        );
        assert!(
            matches!(parse(json!({"$each": [1], "$slice": 1})), Err(Error::InvalidOperator(m)) if m.contains("$each"))
        );
        assert!(
            matches!(parse(json!({"$slice": 1})), Err(Error::InvalidOperator(m)) if m.contains("$slice"))
        );
    }

    #[test]
    fn operand_validation() {
        let parse = |name: &str, v: Value| Op::parse(name, &p(), &v);
        assert!(
            matches!(parse("$inc", json!("1")), Err(Error::InvalidOperator(m)) if m.contains("'$inc' at 'f'"))
        );
        assert!(parse("$mul", json!(null)).is_err());
        assert!(parse("$currentDate", json!(true)).is_ok());
        assert!(parse("$currentDate", json!({"$type": "date"})).is_ok());
        assert!(parse("$currentDate", json!({"$type": "timestamp"})).is_ok());
        for bad in [
            json!(false),
            json!({"$type": "x"}),
            json!({}),
            json!({"$type": "date", "x": 1}),
            json!(1),
        ] {
            assert!(matches!(
                parse("$currentDate", bad),
                Err(Error::InvalidOperator(_))
            ));
        }
        assert!(
            matches!(parse("$rename", json!("x")), Err(Error::InvalidOperator(m)) if m.contains("$rename"))
        );
        for name in OPERATORS {
            let arg = if name == "$currentDate" {
                json!(true)
            } else {
                json!(1)
            };
            assert_eq!(parse(name, arg).expect("valid").name(), name);
        }
    }

    #[test]
    fn pull_operands_are_classified() {
        let kind = |v: Value| match pull(&p(), &v) {
            Ok(Pull::Equal(_)) => "equal",
            Ok(Pull::Condition(_)) => "condition",
            Ok(Pull::Filter(_)) => "filter",
            Err(_) => "error",
        };
        assert_eq!(kind(json!(3)), "equal");
        assert_eq!(kind(json!([1])), "equal");
        assert_eq!(kind(json!({"$gte": 6})), "condition");
        assert_eq!(kind(json!({"$ago": 6})), "condition");
        assert_eq!(kind(json!({"name": "x"})), "filter");
        assert_eq!(kind(json!({})), "filter");
        assert_eq!(kind(json!({"$gte": 6, "x": 1})), "error");
        let e = pull(&p(), &json!({"$regex": "x"})).expect_err("unknown");
        assert!(
            matches!(e, Error::InvalidOperator(m) if m.contains("'$pull' at 'f'") && m.contains("$regex"))
        );
    }

    #[test]
    fn not_in_dedupes_by_value() {
        let got = not_in(
            &[json!(1), json!("a")],
            &[json!(1.0), json!(2), json!(2), json!("a"), json!([1])],
        );
        assert_eq!(got, vec![json!(2), json!([1])]);
    }
}
