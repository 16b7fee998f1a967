//! Counter caches: the deltas a source write implies for its counters, and
//! their outbox records for `after_commit` counters.

use serde_json::{Number, Value, json};

use crate::doc::{self, Body};
use crate::error::Result;
use crate::update::{Work, path};

use super::config::CounterDef;

/// How far apart two float sums may be and still be the same count, relative
/// to the larger ([`Amount::same`]).
const FLOAT_SUM_TOLERANCE: f64 = 1e-6;

/// An amount to add: integers stay exact, anything else is a float.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    /// An integer amount.
    Int(i64),
    /// A fractional amount.
    Float(f64),
}

impl Amount {
    fn of(value: &Value) -> Amount {
        match value.as_i64() {
            Some(i) => Amount::Int(i),
            None => Amount::Float(value.as_f64().unwrap_or(0.0)),
        }
    }

    /// The sum of two amounts: exact for integers while it fits in an `i64`,
    /// a float past that (as a JSON number it goes on growing, rounded,
    /// instead of stopping at the bound).
    pub fn add(self, other: Amount) -> Amount {
        match (self, other) {
            (Amount::Int(a), Amount::Int(b)) => match a.checked_add(b) {
                Some(sum) => Amount::Int(sum),
                None => Amount::Float(a as f64 + b as f64),
            },
            (a, b) => Amount::Float(a.as_f64() + b.as_f64()),
        }
    }

    /// Minus this amount.
    pub fn negated(self) -> Amount {
        match self {
            Amount::Int(a) => a.checked_neg().map_or(Amount::Float(-(a as f64)), Amount::Int),
            Amount::Float(a) => Amount::Float(-a),
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Amount::Int(a) => a as f64,
            Amount::Float(a) => a,
        }
    }

    /// Whether two amounts are the same count: exactly, for integers; within
    /// a millionth of the larger (or of 1) once either is a float, since float
    /// sums differ by their order (a target summed in commit order against a
    /// recount summed in id order), which is no damage to repair.
    /// A sum past the largest float (not finite) is the same as no amount,
    /// itself included: no target can hold it.
    pub fn same(self, other: Amount) -> bool {
        match (self, other) {
            (Amount::Int(a), Amount::Int(b)) => a == b,
            (a, b) if !a.is_finite() || !b.is_finite() => false,
            (a, b) => {
                let (a, b) = (a.as_f64(), b.as_f64());
                (a - b).abs() <= FLOAT_SUM_TOLERANCE * a.abs().max(b.abs()).max(1.0)
            }
        }
    }

    /// Whether it is a number JSON holds: a float sum can pass the largest
    /// float (two amounts of `1e308`), and JSON has no infinity.
    pub fn is_finite(self) -> bool {
        self.as_f64().is_finite()
    }

    /// Whether adding this changes nothing.
    pub fn is_zero(self) -> bool {
        self.as_f64() == 0.0
    }

    /// As a JSON number (0 for a sum that is not finite, which the
    /// committer never stores: [`is_finite`](Self::is_finite)).
    pub fn to_json(self) -> Value {
        match self {
            Amount::Int(a) => json!(a),
            Amount::Float(a) => Number::from_f64(a).map_or(json!(0), Value::Number),
        }
    }

    /// Reads an amount back from JSON.
    pub fn from_json(value: &Value) -> Amount {
        Amount::of(value)
    }
}

/// An increment of one field of one target document.
#[derive(Clone, Debug, PartialEq)]
pub struct Increment {
    /// Target collection.
    pub collection: String,
    /// Target document (the group value).
    pub id: String,
    /// Target field.
    pub field: String,
    /// What to add.
    pub amount: Amount,
}

/// The group and amount a source body contributes to `def`, if it counts.
/// The counter's filter is charged to `work`: a client's write pays for the
/// counters its collection evaluates on it (`FILTER_STEPS_MAX`, with its own
/// filters), and the caller refuses it once `work` ran out. The server's own
/// writes (TTL sweeps, backfills, recounts) pass an unmetered one.
pub fn contribution(def: &CounterDef, body: &Body, now_ms: u64, work: &mut Work) -> Option<(String, Amount)> {
    if let Some(filter) = &def.filter
        && !filter.test(body, now_ms, work)
    {
        return None;
    }
    let group = match path::get(body, &def.group_by)? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    // A target's id must be one a URL can name (not `.` or `..`).
    doc::validate_written_id(&group).ok()?;
    let amount = match &def.sum {
        None => Amount::Int(1),
        Some(field) => match path::get(body, field) {
            Some(v @ Value::Number(_)) => Amount::of(v),
            _ => return None,
        },
    };
    Some((group, amount))
}

/// The increments a write from `old` to `new` (live bodies; `None` = absent or
/// deleted) implies for `def`: minus the old contribution, plus the new one.
/// The new body's filter is charged to `work`, as in [`contribution`], and
/// the old one's only when `charge_old` (a transaction of several ops): a
/// write of one document is not refused for it, so that every document
/// stays deletable (one stored before its collection's counters were
/// declared may cost more than a write may); its steps are noted in `work`
/// all the same, so that the group closes on them. The old body is tested
/// only once the new one passed.
pub fn deltas(
    def: &CounterDef,
    old: Option<&Body>,
    new: Option<&Body>,
    now_ms: u64,
    work: &mut Work,
    charge_old: bool,
) -> Vec<Increment> {
    let after = new.and_then(|b| contribution(def, b, now_ms, work));
    if work.spent() {
        return Vec::new();
    }
    let before = old.and_then(|b| {
        if charge_old {
            return contribution(def, b, now_ms, work);
        }
        let mut counted = Work::unmetered();
        let before = contribution(def, b, now_ms, &mut counted);
        work.note(counted.used());
        before
    });
    if before == after {
        return Vec::new();
    }
    let increment = |(group, amount): (String, Amount)| Increment {
        collection: def.target_collection.clone(),
        id: group,
        field: def.target_field.clone(),
        amount,
    };
    let mut out = Vec::with_capacity(2);
    out.extend(before.map(|(g, a)| increment((g, a.negated()))));
    out.extend(after.map(increment));
    out
}

/// Sums increments per target field, dropping those that cancel out.
pub fn coalesce(increments: impl IntoIterator<Item = Increment>) -> Vec<Increment> {
    let mut out: Vec<Increment> = Vec::new();
    // Where each target field is in `out`: a search of `out` for each made a
    // recount's commit of 200,000 groups take minutes of the committer.
    let mut at: foldhash::HashMap<(String, String, String), usize> = Default::default();
    for inc in increments {
        let key = (inc.collection.clone(), inc.id.clone(), inc.field.clone());
        match at.entry(key) {
            std::collections::hash_map::Entry::Occupied(seen) => {
                let existing = &mut out[*seen.get()];
                existing.amount = existing.amount.add(inc.amount);
            }
            std::collections::hash_map::Entry::Vacant(new) => {
                new.insert(out.len());
                out.push(inc);
            }
        }
    }
    out.retain(|i| !i.amount.is_zero());
    out
}

/// The outbox record of an increment.
pub fn encode_outbox(inc: &Increment, created_ms: u64) -> Vec<u8> {
    crate::record::encode_json(&json!({"c": inc.collection, "id": inc.id, "field": inc.field,
                                        "amount": inc.amount.to_json(), "ms": created_ms}))
}

/// Reads an outbox record back: the increment and when it was written.
pub fn decode_outbox(bytes: &[u8]) -> Result<(Increment, u64)> {
    let value = crate::record::decode_json(bytes)?;
    let text = |k: &str| {
        value
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let inc = Increment {
        collection: text("c"),
        id: text("id"),
        field: text("field"),
        amount: Amount::from_json(value.get("amount").unwrap_or(&Value::Null)),
    };
    Ok((inc, value.get("ms").and_then(Value::as_u64).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::CollectionConfig;

    fn def(mode_where: Value, sum: Value) -> CounterDef {
        let body = json!({"counters": [{"name": "n", "group_by": "g", "where": mode_where, "sum": sum,
                                        "target": {"c": "t", "field": "count"}}]});
        CollectionConfig::from_json(&body).unwrap().counters.remove(0)
    }

    fn body(v: Value) -> Body {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn moving_between_groups_and_filters() {
        let d = def(json!({"status": "ok"}), Value::Null);
        let a = body(json!({"g": "x", "status": "ok"}));
        let b = body(json!({"g": "y", "status": "ok"}));
        let off = body(json!({"g": "y", "status": "no"}));
        let amounts = |v: Vec<Increment>| v.into_iter().map(|i| (i.id, i.amount)).collect::<Vec<_>>();
        assert_eq!(
            amounts(deltas(&d, None, Some(&a), 0, &mut Work::new(), false)),
            [("x".into(), Amount::Int(1))]
        );
        assert_eq!(
            amounts(deltas(&d, Some(&a), Some(&b), 0, &mut Work::new(), false)),
            [("x".into(), Amount::Int(-1)), ("y".into(), Amount::Int(1))]
        );
        assert_eq!(
            amounts(deltas(&d, Some(&b), Some(&off), 0, &mut Work::new(), false)),
            [("y".into(), Amount::Int(-1))]
        );
        assert!(deltas(&d, Some(&a), Some(&a), 0, &mut Work::new(), false).is_empty());
        assert_eq!(
            amounts(deltas(&d, Some(&a), None, 0, &mut Work::new(), false)),
            [("x".into(), Amount::Int(-1))]
        );
    }

    /// A group that no URL could name as a target's id (`.`, `..`) is no
    /// group: the document counts nowhere, as one with no valid id does.
    #[test]
    fn a_group_no_url_can_name_counts_nowhere() {
        let d = def(Value::Null, Value::Null);
        for group in [".", "..", ""] {
            assert!(
                contribution(&d, &body(json!({"g": group})), 0, &mut Work::new()).is_none(),
                "{group:?}"
            );
        }
        assert!(contribution(&d, &body(json!({"g": "..."})), 0, &mut Work::new()).is_some());
    }

    #[test]
    fn sums_and_coalescing() {
        let d = def(Value::Null, json!("price"));
        let incs = deltas(
            &d,
            Some(&body(json!({"g": 1, "price": 2.5}))),
            Some(&body(json!({"g": 1, "price": 4}))),
            0,
            &mut Work::new(),
            false,
        );
        let total = coalesce(incs);
        assert_eq!(total.len(), 1);
        assert_eq!(total[0].id, "1");
        assert_eq!(total[0].amount, Amount::Float(1.5));
        let cancel = coalesce(
            deltas(
                &d,
                None,
                Some(&body(json!({"g": "z", "price": 3}))),
                0,
                &mut Work::new(),
                false,
            )
            .into_iter()
            .chain(deltas(
                &d,
                Some(&body(json!({"g": "z", "price": 3}))),
                None,
                0,
                &mut Work::new(),
                false,
            )),
        );
        assert!(cancel.is_empty());
        let (back, ms) = decode_outbox(&encode_outbox(&total[0], 7)).unwrap();
        assert_eq!((back, ms), (total[0].clone(), 7));
    }
}
