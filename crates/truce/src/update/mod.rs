//! Updates: MongoDB-style operator documents that turn a body into its next version.
//!
//! An update is a JSON object whose keys are operators (`$set`, `$inc`, ...), each
//! mapping dotted paths to operands, plus optional control keys: `$upsert` (bool),
//! `$if` (a [`Filter`] the current document must match) and `$else` (what a false
//! `$if` means: `"conflict"` or `"skip"`). Whole-document replacement is not an
//! update. Parsing validates everything that does not depend on the document, so
//! [`Update::apply`] only fails on type clashes with the stored data.

pub mod filter;
mod operators;
pub mod path;

use serde_json::{Map, Value};

pub use filter::{Condition, Filter, Work};
pub use operators::OPERATORS;
pub use path::Path;

use crate::error::Error;
use crate::limits::{DOC_DEPTH_MAX, UPDATE_DEPTH_MAX, UPDATE_PATHS_MAX};
use operators::Op;

/// What a write does when its `$if` condition is false.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFalse {
    /// Report a conflict to the caller (the default).
    #[default]
    Conflict,
    /// Leave the document alone and report success.
    Skip,
}

/// A parsed, validated update.
#[derive(Clone, Debug)]
pub struct Update {
    /// In application order: by path, array indexes by number
    /// ([`Path::cmp_writes`]), whatever operator holds them.
    ops: Vec<(Path, Op)>,
    upsert: bool,
    condition: Option<Filter>,
    on_false: OnFalse,
    /// XXH3-128 of the canonical JSON of the update as given: two updates with
    /// the same fingerprint are the same request (idempotency keys compare these).
    fingerprint: u128,
}

impl Update {
    /// Parses and validates an update object.
    ///
    /// Errors: [`Error::InvalidOperator`] for unknown keys, malformed operands,
    /// wrong control-key types, no paths at all, or two paths where one is the other
    /// or its ancestor; [`Error::ReservedField`] for a path starting with `_`;
    /// [`Error::InvalidFilter`] for a malformed `$if`; [`Error::LimitExceeded`] past
    /// [`UPDATE_PATHS_MAX`] paths or the filter and path limits.
    pub fn parse(spec: &Value) -> Result<Update, Error> {
        let Value::Object(m) = spec else {
            return Err(invalid(format!(
                "an update must be a JSON object of operators, found {}",
                path::type_name(spec)
            )));
        };
        // `deeper_than` goes no further than the bound: safe on any value.
        if deeper_than(spec, UPDATE_DEPTH_MAX) {
            return Err(Error::InvalidDocument(format!(
                "the update nests deeper than UPDATE_DEPTH_MAX ({UPDATE_DEPTH_MAX}) levels"
            )));
        }
        // One pass over the keys (a hot path: every PATCH parses one), then the
        // checks in a fixed order, whatever order the client sent the keys in.
        let mut operands: [Option<&Value>; OPERATORS.len()] = [None; OPERATORS.len()];
        let (mut upsert, mut condition, mut on_false) = (None, None, None);
        for (key, value) in m {
            match key.as_str() {
                "$upsert" => upsert = Some(value),
                "$if" => condition = Some(value),
                "$else" => on_false = Some(value),
                name => match OPERATORS.iter().position(|op| *op == name) {
                    Some(i) => operands[i] = Some(value),
                    None => {
                        return Err(invalid(if key.starts_with('$') {
                            format!("unknown update operator '{key}'")
                        } else {
                            format!(
                                "'{key}' is not an operator: an update is made of operators such as $set, not a replacement document"
                            )
                        }));
                    }
                },
            }
        }
        let upsert = match upsert {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("'$upsert' must be true or false".into())),
        };
        let condition = match condition {
            None => None,
            Some(f @ Value::Object(_)) => Some(Filter::parse(f)?),
            Some(_) => return Err(Error::InvalidFilter("'$if' must be a filter object".into())),
        };
        if let Some(path) = condition.as_ref().and_then(Filter::reserved_path) {
            // It would never match (or always, negated): the body has no such
            // field. A version or revision is a precondition's to check.
            return Err(Error::InvalidFilter(format!(
                "'$if' names {path}, a `_` field: conditions see the document's own fields, not its metadata; to \
                 write only at a version, send a precondition (`_version`, `If-Match`)"
            )));
        }
        if on_false.is_some() && condition.is_none() {
            // Most likely a misspelt or forgotten `$if`: the write would apply
            // unconditionally, whatever the caller meant to skip.
            return Err(invalid(
                "'$else' says what a false '$if' does, and there is no '$if'".into(),
            ));
        }
        let on_false = match on_false.map(|v| v.as_str()) {
            None | Some(Some("conflict")) => OnFalse::Conflict,
            Some(Some("skip")) => OnFalse::Skip,
            Some(_) => return Err(invalid("'$else' must be \"conflict\" or \"skip\"".into())),
        };
        let ops = parse_ops(&operands)?;
        let canonical = serde_json::to_vec(spec).unwrap_or_default();
        let fingerprint = xxhash_rust::xxh3::xxh3_128(&canonical);
        Ok(Update {
            ops,
            upsert,
            condition,
            on_false,
            fingerprint,
        })
    }

    /// A hash of the update's canonical JSON: equal for equal updates.
    pub fn fingerprint(&self) -> u128 {
        self.fingerprint
    }

    /// Whether a missing document should be created (`$upsert: true`).
    pub fn upsert(&self) -> bool {
        self.upsert
    }

    /// The `$if` filter the current document must match, if any.
    pub fn condition(&self) -> Option<&Filter> {
        self.condition.as_ref()
    }

    /// What a false `$if` means (`$else`).
    pub fn on_false(&self) -> OnFalse {
        self.on_false
    }

    /// Computes the new body from `current` (`None` when inserting, which starts from
    /// an empty object and also applies `$setOnInsert`), with `now_ms` for
    /// `$currentDate` and `$ago`, charging `$pull`'s conditions to `work`.
    ///
    /// `current` is never modified. Errors: [`Error::InvalidOperator`] when an
    /// operator meets a value of the wrong type or overflows; [`Error::InvalidDocument`]
    /// when the result nests deeper than [`DOC_DEPTH_MAX`]; [`Error::LimitExceeded`]
    /// when `work` runs out. The size limit is the caller's to check.
    pub fn apply(
        &self,
        current: Option<&Map<String, Value>>,
        now_ms: u64,
        work: &mut Work,
    ) -> Result<Map<String, Value>, Error> {
        let inserting = current.is_none();
        let mut doc = current.cloned().unwrap_or_default();
        let mut pad = path::Padding::default();
        for (path, op) in &self.ops {
            op.apply(&mut doc, path, (now_ms, work), inserting, &mut pad)?;
        }
        // The root object is level 1, so its children may nest DOC_DEPTH_MAX - 1 more.
        if doc.values().any(|v| deeper_than(v, DOC_DEPTH_MAX - 1)) {
            return Err(Error::InvalidDocument(format!(
                "the update would nest the document deeper than DOC_DEPTH_MAX ({DOC_DEPTH_MAX}) levels"
            )));
        }
        Ok(doc)
    }
}

/// Reads the operator objects in their fixed order and checks the paths together.
fn parse_ops(operands: &[Option<&Value>; OPERATORS.len()]) -> Result<Vec<(Path, Op)>, Error> {
    let mut total = 0;
    for (name, operand) in OPERATORS.iter().zip(operands) {
        match operand {
            None => {}
            Some(Value::Object(paths)) => total += paths.len(),
            Some(other) => {
                return Err(invalid(format!(
                    "'{name}' needs an object mapping paths to operands, found {}",
                    path::type_name(other)
                )));
            }
        }
    }
    if total > UPDATE_PATHS_MAX {
        return Err(Error::LimitExceeded {
            what: "UPDATE_PATHS_MAX",
            limit: UPDATE_PATHS_MAX as u64,
        });
    }
    if total == 0 {
        return Err(invalid(
            "an update needs at least one operator with at least one path".into(),
        ));
    }
    let mut ops = Vec::with_capacity(total);
    for (name, operand) in OPERATORS.iter().zip(operands) {
        if let Some(Value::Object(paths)) = operand {
            for (p, arg) in paths {
                let path = Path::parse(p)?;
                let op = Op::parse(name, &path, arg)?;
                ops.push((path, op));
            }
        }
    }
    // After sorting, any path that is a prefix of another is directly followed by
    // one it prefixes, so neighbours suffice.
    let mut sorted: Vec<&(Path, Op)> = ops.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for w in sorted.windows(2) {
        let ((pa, oa), (pb, ob)) = (w[0], w[1]);
        if pa.is_prefix_of_or_equal(pb) {
            return Err(invalid(format!(
                "conflicting paths: '{}' of {} and '{}' of {} touch the same field",
                pa,
                oa.name(),
                pb,
                ob.name()
            )));
        }
    }
    // No path is another's prefix, so each write has its own part of the
    // document, except for the `null`s that pad an array: by index they go.
    ops.sort_by(|a, b| a.0.cmp_writes(&b.0));
    Ok(ops)
}

/// Whether `v` nests more than `levels` objects/arrays; stops as soon as it knows.
fn deeper_than(v: &Value, levels: usize) -> bool {
    match v {
        Value::Object(m) => levels == 0 || m.values().any(|c| deeper_than(c, levels - 1)),
        Value::Array(a) => levels == 0 || a.iter().any(|c| deeper_than(c, levels - 1)),
        _ => false,
    }
}

fn invalid(msg: String) -> Error {
    Error::InvalidOperator(msg)
}

// The behaviour of every operator through the public API; kept beside this file so
// each file stays short.
#[cfg(test)]
mod tests;
