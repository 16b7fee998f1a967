//! Filters: the MongoDB query subset that `$if` conditions, `$pull` and queries evaluate.
//!
//! A filter is a JSON object. Each plain key is a dotted [`Path`] whose value is either
//! a comparison value (implicit `$eq`) or an operator object (`{"$gt": 1, "$lt": 9}`);
//! `$and`, `$or` (non-empty arrays of filters) and `$not` (a filter) combine filters.
//! Every key of an object must hold, so `{a: 1, b: 2}` is an AND.
//!
//! Wherever a comparison value is expected, `{"$ago": MS}` stands for the number
//! `now_ms - MS` (saturating at 0), so conditions like "seen in the last 10 s" need no
//! clock on the client.
//!
//! Matching follows MongoDB: equality against an array matches the array itself or
//! any element; `null` matches a missing field (to `$eq`, `$in`, `$gte` and `$lte`);
//! `$ne`/`$nin` negate `$eq`/`$in` (so
//! they match missing fields); range operators only match values in the operand's
//! [type bracket](crate::value_order), elementwise for arrays. Paths do not fan out
//! over arrays of objects (`items.sku` does not look inside each element of `items`),
//! so a filter on a path sees exactly the value an index on that path would.
//!
//! Evaluation runs on the committer, so it is metered: each filter tested and
//! each operator tested against a field charges a [`Work`] meter for the
//! comparisons it may make (a step per value it meets, an array's elements
//! each, and the size of its operand for a value of the operand's own kind;
//! times the probes of a binary search for `$in`), and past [`FILTER_STEPS_MAX`]
//! over one request the request is refused. (Comparisons visit no more than
//! the smaller value, `value_order::compare`.) Without it a `$pull` and an `$if` with a
//! 120-value `$in` over a 140,000-element array took 0.12 s of the committer,
//! and a transaction of 15 of them 1.8 s, during which no other write committed.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::path::{self, Path, type_name};
use crate::error::Error;
use crate::limits::{DOC_DEPTH_MAX, FILTER_NODES_MAX, FILTER_STEPS_MAX};
use crate::value_order::{compare, type_bracket};

/// A parsed filter; cheap to evaluate, bounded by [`FILTER_NODES_MAX`] nodes.
#[derive(Clone, Debug)]
pub struct Filter {
    /// All must hold.
    clauses: Vec<Clause>,
}

#[derive(Clone, Debug)]
enum Clause {
    Field(Path, Condition),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
}

/// What one field (or one array element, for `$pull`) must satisfy: the field-level
/// form of a filter, e.g. `{"$gte": 6}` or a plain comparison value.
#[derive(Clone, Debug)]
pub struct Condition {
    /// All must hold; each with what testing a field against it charges.
    ops: Vec<(Op, Charge)>,
}

/// What testing a field against an operator charges to [`Work`].
#[derive(Clone, Copy, Debug)]
enum Charge {
    /// So many steps, whatever the field holds (`$exists`, and `$not`,
    /// which charges what it holds besides).
    Flat(u64),
    /// Per value tested — the field's value, and each element of an array —
    /// by the value's kind.
    PerValue(Cost),
}

/// The steps testing one value charges, by the value's kind. A comparison
/// visits at most the smaller of its two values, and stops at once between
/// values of different types, so only a value of the operand's own kind (an
/// array with an array operand, an object with an object) may cost the
/// operand's size.
#[derive(Clone, Copy, Debug)]
struct Cost {
    scalar: u64,
    array: u64,
    object: u64,
}

/// The values a condition tests in one field, by kind: the field's value
/// (a missing field is tested as `null`) and, if it is an array, each element.
#[derive(Default)]
struct Kinds {
    scalar: u64,
    array: u64,
    object: u64,
}

#[derive(Clone, Debug)]
enum Op {
    Eq(Operand),
    Ne(Operand),
    Range(Range, Operand),
    In(Set),
    Nin(Set),
    Exists(bool),
    Not(Condition),
}

/// The operands of `$in` or `$nin`: the literal ones sorted by
/// [`compare`], so that a value is looked up by a binary search, and the
/// `$ago` ones, which are numbers only once the clock is known.
#[derive(Clone, Debug)]
struct Set {
    sorted: Vec<Value>,
    ago: Vec<u64>,
}

#[derive(Clone, Copy, Debug)]
enum Range {
    Gt,
    Gte,
    Lt,
    Lte,
}

/// A comparison value, resolved against the clock at match time.
#[derive(Clone, Debug)]
enum Operand {
    Value(Value),
    Ago(u64),
}

impl Filter {
    /// Parses a filter object.
    ///
    /// Errors: anything malformed is [`Error::InvalidFilter`] naming the offending
    /// key; more than [`FILTER_NODES_MAX`] nodes or nesting deeper than
    /// [`DOC_DEPTH_MAX`] is [`Error::LimitExceeded`].
    pub fn parse(spec: &Value) -> Result<Filter, Error> {
        Parser { nodes: 0 }.filter(spec, 1)
    }

    /// A path the filter names whose top-level field starts with `_`, if any.
    /// A document's body never holds one (`_version`, `_ts` and the rest are
    /// its metadata), so a condition on it is about nothing the filter sees.
    pub fn reserved_path(&self) -> Option<&Path> {
        self.clauses.iter().find_map(|c| match c {
            Clause::Field(p, _) => p.segments()[0].starts_with('_').then_some(p),
            Clause::And(fs) | Clause::Or(fs) => fs.iter().find_map(Filter::reserved_path),
            Clause::Not(f) => f.reserved_path(),
        })
    }

    /// Whether `doc` satisfies the filter, with `$ago` resolved against `now_ms`.
    ///
    /// Errors: [`Error::LimitExceeded`] when `work` runs out on the way
    /// (what was found is then unknown).
    pub fn matches(&self, doc: &Map<String, Value>, now_ms: u64, work: &mut Work) -> Result<bool, Error> {
        let found = self.test(doc, now_ms, work);
        work.check().map(|()| found)
    }

    /// As [`Filter::matches`]; once `work` runs out, false, and `work` says
    /// so. Each filter tested takes a step, and each of its clauses what its
    /// conditions charge.
    pub(crate) fn test(&self, doc: &Map<String, Value>, now_ms: u64, work: &mut Work) -> bool {
        work.charge(1)
            && self.clauses.iter().all(|c| match c {
                Clause::Field(p, cond) => cond.test(path::get(doc, p), now_ms, work),
                Clause::And(fs) => fs.iter().all(|f| f.test(doc, now_ms, work)),
                Clause::Or(fs) => fs.iter().any(|f| f.test(doc, now_ms, work)),
                Clause::Not(f) => !f.test(doc, now_ms, work) && !work.spent(),
            })
    }
}

/// Parses the field-level form (`{"$gte": 6}`, `{"$ago": 5}` or a plain value), as
/// used by `$pull` to test array elements.
pub(crate) fn parse_condition(spec: &Value) -> Result<Condition, Error> {
    Parser { nodes: 0 }.field_value(spec, "element", 1)
}

impl Condition {
    fn of(ops: Vec<Op>) -> Condition {
        let ops = ops
            .into_iter()
            .map(|op| {
                let charge = op.charge();
                (op, charge)
            })
            .collect();
        Condition { ops }
    }

    /// Whether a field's value (`None` when the field is missing) satisfies the
    /// condition. Errors as [`Filter::matches`].
    pub fn matches_value(&self, v: Option<&Value>, now_ms: u64, work: &mut Work) -> Result<bool, Error> {
        let found = self.test(v, now_ms, work);
        work.check().map(|()| found)
    }

    /// As [`Condition::matches_value`]; once `work` runs out, false, and `work` says so.
    pub(crate) fn test(&self, v: Option<&Value>, now_ms: u64, work: &mut Work) -> bool {
        let mut kinds = None;
        self.ops.iter().all(|(op, charge)| {
            let steps = match charge {
                Charge::Flat(steps) => *steps,
                Charge::PerValue(cost) => kinds.get_or_insert_with(|| Kinds::of(v)).steps(*cost),
            };
            work.charge(steps)
                && match op {
                    Op::Eq(x) => equals(v, &x.resolve(now_ms)),
                    Op::Ne(x) => !equals(v, &x.resolve(now_ms)),
                    Op::Range(r, x) => in_range(v, *r, &x.resolve(now_ms)),
                    Op::In(set) => set.holds(v, now_ms),
                    Op::Nin(set) => !set.holds(v, now_ms),
                    Op::Exists(want) => v.is_some() == *want,
                    Op::Not(c) => !c.test(v, now_ms, work) && !work.spent(),
                }
        })
    }
}

impl Op {
    /// What testing a field against this operator charges: per value tested,
    /// one step, or the nodes of its operand for a value of the operand's
    /// kind; for a set, that times the probes of a binary search (its
    /// largest operand of the value's kind), and one per `$ago` operand.
    fn charge(&self) -> Charge {
        let one = Cost {
            scalar: 1,
            array: 1,
            object: 1,
        };
        match self {
            Op::Eq(x) | Op::Ne(x) | Op::Range(_, x) => Charge::PerValue(match x {
                Operand::Value(v @ Value::Array(_)) => Cost {
                    array: nodes(v),
                    ..one
                },
                Operand::Value(v @ Value::Object(_)) => Cost {
                    object: nodes(v),
                    ..one
                },
                Operand::Value(_) | Operand::Ago(_) => one,
            }),
            Op::In(set) | Op::Nin(set) => {
                let largest = |kind: fn(&Value) -> bool| {
                    set.sorted
                        .iter()
                        .filter(|v| kind(v))
                        .map(nodes)
                        .max()
                        .unwrap_or(1)
                };
                let probes = u64::from(usize::BITS - set.sorted.len().leading_zeros()).max(1);
                let ago = set.ago.len() as u64;
                Charge::PerValue(Cost {
                    scalar: probes + ago,
                    array: probes * largest(Value::is_array) + ago,
                    object: probes * largest(Value::is_object) + ago,
                })
            }
            Op::Exists(_) | Op::Not(_) => Charge::Flat(1),
        }
    }
}

impl Kinds {
    fn of(v: Option<&Value>) -> Kinds {
        let mut kinds = Kinds::default();
        kinds.add(v);
        if let Some(Value::Array(a)) = v {
            a.iter().for_each(|e| kinds.add(Some(e)));
        }
        kinds
    }

    fn add(&mut self, v: Option<&Value>) {
        match v {
            Some(Value::Array(_)) => self.array += 1,
            Some(Value::Object(_)) => self.object += 1,
            _ => self.scalar += 1,
        }
    }

    fn steps(&self, cost: Cost) -> u64 {
        (self.scalar.saturating_mul(cost.scalar))
            .saturating_add(self.array.saturating_mul(cost.array))
            .saturating_add(self.object.saturating_mul(cost.object))
    }
}

impl Set {
    fn new(operands: Vec<Operand>) -> Set {
        let (mut sorted, mut ago) = (Vec::new(), Vec::new());
        for operand in operands {
            match operand {
                Operand::Value(v) => sorted.push(v),
                Operand::Ago(ms) => ago.push(ms),
            }
        }
        sorted.sort_by(compare);
        sorted.dedup_by(|a, b| compare(a, b).is_eq());
        Set { sorted, ago }
    }

    /// Whether `$in` holds for `v`: as [`equals`] against any operand.
    fn holds(&self, v: Option<&Value>, now_ms: u64) -> bool {
        let one = |e: &Value| {
            self.sorted.binary_search_by(|x| compare(x, e)).is_ok()
                || self
                    .ago
                    .iter()
                    .any(|ms| compare(e, &Value::from(now_ms.saturating_sub(*ms))).is_eq())
        };
        match v {
            None => self.sorted.binary_search_by(|x| compare(x, &Value::Null)).is_ok(),
            Some(v) => one(v) || matches!(v, Value::Array(a) if a.iter().any(one)),
        }
    }
}

impl Operand {
    fn resolve(&self, now_ms: u64) -> Cow<'_, Value> {
        match self {
            Operand::Value(v) => Cow::Borrowed(v),
            Operand::Ago(ms) => Cow::Owned(Value::from(now_ms.saturating_sub(*ms))),
        }
    }
}

/// The values in `v`, itself included: a bound on what comparing with it visits.
fn nodes(v: &Value) -> u64 {
    1 + match v {
        Value::Array(a) => a.iter().map(nodes).sum(),
        Value::Object(m) => m.values().map(nodes).sum(),
        _ => 0,
    }
}

/// What the filters of one request may still do, in steps: roughly one
/// comparison of two scalars each (about 8 ns on this project's machine).
/// One meter serves every filter of a request — each op's `$if` and `$pull`
/// in a transaction — so that no request holds the committer for more than
/// [`FILTER_STEPS_MAX`] steps of filtering; and a group of requests closes
/// once they have taken that many together (`Committer::run_group`).
#[derive(Debug)]
pub struct Work {
    /// What it started with.
    start: u64,
    left: u64,
    spent: bool,
    /// Steps the request caused without being refused for them
    /// ([`Work::note`]), counted in [`Work::used`].
    noted: u64,
}

impl Default for Work {
    fn default() -> Work {
        Work::new()
    }
}

impl Work {
    /// A full meter: [`FILTER_STEPS_MAX`] steps.
    pub fn new() -> Work {
        Work::with(FILTER_STEPS_MAX)
    }

    /// A meter that never runs out, for filters a request did not send (and
    /// writes that run none); it still counts what it is charged.
    pub(crate) fn unmetered() -> Work {
        Work::with(u64::MAX)
    }

    fn with(steps: u64) -> Work {
        Work {
            start: steps,
            left: steps,
            spent: false,
            noted: 0,
        }
    }

    /// Counts `steps` the request caused (in [`Work::used`], so that a group
    /// closes on them too) without refusing it for them.
    pub(crate) fn note(&mut self, steps: u64) {
        self.noted = self.noted.saturating_add(steps);
    }

    /// Takes `steps`; false, for good, if fewer are left.
    fn charge(&mut self, steps: u64) -> bool {
        match self.left.checked_sub(steps) {
            Some(left) if !self.spent => {
                self.left = left;
                true
            }
            _ => {
                self.spent = true;
                false
            }
        }
    }

    /// The steps taken so far (all of them once it ran out), and those noted.
    pub fn used(&self) -> u64 {
        let taken = if self.spent {
            self.start
        } else {
            self.start - self.left
        };
        taken.saturating_add(self.noted)
    }

    /// Whether the meter ran out.
    pub(crate) fn spent(&self) -> bool {
        self.spent
    }

    /// [`Error::LimitExceeded`] if the meter ran out.
    pub fn check(&self) -> Result<(), Error> {
        if self.spent {
            return Err(Error::LimitExceeded {
                what: "FILTER_STEPS_MAX",
                limit: FILTER_STEPS_MAX,
            });
        }
        Ok(())
    }
}

/// MongoDB equality: `null` also matches a missing field, and an array matches if it
/// equals `x` or any of its elements does. Numbers are equal by value (`1 == 1.0`).
fn equals(v: Option<&Value>, x: &Value) -> bool {
    let same = |e: &Value| compare(e, x).is_eq();
    match v {
        None => x.is_null(),
        Some(v) => same(v) || matches!(v, Value::Array(a) if a.iter().any(same)),
    }
}

/// Range comparison within `x`'s type bracket; an array matches if any element does.
/// A missing field is `null` to the inclusive bounds of `null`, as to `$eq`
/// (MongoDB's `{"$gte": null}` and `{"$lte": null}` match it too).
fn in_range(v: Option<&Value>, r: Range, x: &Value) -> bool {
    let hit = |e: &Value| {
        type_bracket(e) == type_bracket(x) && {
            let o = compare(e, x);
            match r {
                Range::Gt => o.is_gt(),
                Range::Gte => o.is_ge(),
                Range::Lt => o.is_lt(),
                Range::Lte => o.is_le(),
            }
        }
    };
    match v {
        None => x.is_null() && matches!(r, Range::Gte | Range::Lte),
        Some(v) => hit(v) || matches!(v, Value::Array(a) if a.iter().any(hit)),
    }
}

/// Recursive-descent parser that charges every node to one budget.
struct Parser {
    nodes: usize,
}

impl Parser {
    fn charge(&mut self, depth: usize) -> Result<(), Error> {
        self.nodes += 1;
        if self.nodes > FILTER_NODES_MAX {
            return Err(Error::LimitExceeded {
                what: "FILTER_NODES_MAX",
                limit: FILTER_NODES_MAX as u64,
            });
        }
        if depth > DOC_DEPTH_MAX {
            return Err(Error::LimitExceeded {
                what: "DOC_DEPTH_MAX",
                limit: DOC_DEPTH_MAX as u64,
            });
        }
        Ok(())
    }

    fn filter(&mut self, spec: &Value, depth: usize) -> Result<Filter, Error> {
        let Value::Object(m) = spec else {
            return Err(invalid(format!(
                "a filter must be a JSON object, found {}",
                type_name(spec)
            )));
        };
        let mut clauses = Vec::with_capacity(m.len());
        for (key, v) in m {
            self.charge(depth)?;
            let clause = match key.as_str() {
                "$and" => Clause::And(self.filter_list(key, v, depth)?),
                "$or" => Clause::Or(self.filter_list(key, v, depth)?),
                "$not" => Clause::Not(Box::new(self.filter(v, depth + 1)?)),
                k if k.starts_with('$') => {
                    return Err(invalid(format!(
                        "unknown top-level operator '{k}' (expected $and, $or, $not or a field path)"
                    )));
                }
                field => Clause::Field(Path::parse_filter(field)?, self.field_value(v, field, depth + 1)?),
            };
            clauses.push(clause);
        }
        Ok(Filter { clauses })
    }

    fn filter_list(&mut self, key: &str, v: &Value, depth: usize) -> Result<Vec<Filter>, Error> {
        match v {
            Value::Array(items) if !items.is_empty() => items
                .iter()
                .map(|item| {
                    self.charge(depth + 1)?;
                    self.filter(item, depth + 2)
                })
                .collect(),
            _ => Err(invalid(format!("'{key}' needs a non-empty array of filters"))),
        }
    }

    /// The value of a field key: an operator object, `{"$ago": MS}`, or a plain value.
    fn field_value(&mut self, v: &Value, field: &str, depth: usize) -> Result<Condition, Error> {
        let Value::Object(m) = v else {
            return Ok(Condition::of(vec![Op::Eq(Operand::Value(v.clone()))]));
        };
        let dollar = m.keys().filter(|k| k.starts_with('$')).count();
        if dollar == 0 {
            return Ok(Condition::of(vec![Op::Eq(Operand::Value(v.clone()))]));
        }
        if dollar < m.len() {
            return Err(invalid(format!(
                "the value of '{field}' mixes operators and plain fields; \
                 use only operators, or only fields for an exact object match"
            )));
        }
        if m.len() == 1 && m.contains_key("$ago") {
            return Ok(Condition::of(vec![Op::Eq(operand(v)?)]));
        }
        self.operators(m, field, depth)
    }

    fn operators(&mut self, m: &Map<String, Value>, field: &str, depth: usize) -> Result<Condition, Error> {
        let mut ops = Vec::with_capacity(m.len());
        for (name, arg) in m {
            self.charge(depth)?;
            let op = match name.as_str() {
                "$eq" => Op::Eq(operand(arg)?),
                "$ne" => Op::Ne(operand(arg)?),
                "$gt" => Op::Range(Range::Gt, operand(arg)?),
                "$gte" => Op::Range(Range::Gte, operand(arg)?),
                "$lt" => Op::Range(Range::Lt, operand(arg)?),
                "$lte" => Op::Range(Range::Lte, operand(arg)?),
                "$in" => Op::In(Set::new(self.operand_list(name, arg, field, depth)?)),
                "$nin" => Op::Nin(Set::new(self.operand_list(name, arg, field, depth)?)),
                "$exists" => match arg {
                    Value::Bool(b) => Op::Exists(*b),
                    _ => {
                        return Err(invalid(format!("'$exists' on '{field}' needs true or false")));
                    }
                },
                "$not" => match arg {
                    Value::Object(inner) if !inner.is_empty() && inner.keys().all(|k| k.starts_with('$')) => {
                        Op::Not(self.operators(inner, field, depth + 1)?)
                    }
                    _ => {
                        return Err(invalid(format!(
                            "'$not' on '{field}' needs a non-empty operator object such as {{\"$gt\": 5}}"
                        )));
                    }
                },
                other => return Err(invalid(format!("unknown operator '{other}' on '{field}'"))),
            };
            ops.push(op);
        }
        Ok(Condition::of(ops))
    }

    fn operand_list(
        &mut self,
        name: &str,
        arg: &Value,
        field: &str,
        depth: usize,
    ) -> Result<Vec<Operand>, Error> {
        let Value::Array(items) = arg else {
            return Err(invalid(format!("'{name}' on '{field}' needs an array")));
        };
        items
            .iter()
            .map(|item| {
                self.charge(depth + 1)?;
                operand(item)
            })
            .collect()
    }
}

/// A comparison value: `{"$ago": MS}` or any other value taken literally.
fn operand(v: &Value) -> Result<Operand, Error> {
    match v {
        Value::Object(m) if m.len() == 1 => match m.get("$ago") {
            Some(ms) => ms.as_u64().map(Operand::Ago).ok_or_else(|| {
                invalid(format!(
                    "'$ago' needs a non-negative integer of milliseconds, found {ms}"
                ))
            }),
            None => Ok(Operand::Value(v.clone())),
        },
        _ => Ok(Operand::Value(v.clone())),
    }
}

fn invalid(msg: String) -> Error {
    Error::InvalidFilter(msg)
}

// Kept beside this file so each file stays short.
#[cfg(test)]
mod tests;
