//! Model-based test: random puts (every precondition kind), patches (every
//! operator), deletes and reopens run against the engine and against a tiny
//! obviously-correct model, compared after every step.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use truce::{ConflictReason, Db, Effect, Expect, Rev};

use crate::{open, update};

const IDS: [&str; 3] = ["a", "b", "c"];

#[derive(Clone, Debug)]
enum Pre {
    Absent,
    CurrentVersion,
    StaleVersion,
    CurrentRev,
    StaleRev,
    Exists,
    Any,
}

#[derive(Clone, Debug)]
enum Patch {
    Inc(i64),
    Mul(i64),
    Min(i64),
    Max(i64),
    Set(String),
    Unset,
    Push(i64),
    AddToSet(i64),
    Pull(i64),
    CurrentDate,
    SetOnInsert(i64),
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        id: usize,
        n: Option<i64>,
        s: Option<String>,
        pre: Pre,
    },
    Patch {
        id: usize,
        patch: Patch,
        upsert: bool,
        cond: Option<(i64, bool)>,
        pre: Pre,
    },
    Delete {
        id: usize,
        pre: Pre,
    },
    Reopen,
}

fn pre() -> impl Strategy<Value = Pre> {
    prop_oneof![
        Just(Pre::Absent),
        Just(Pre::CurrentVersion),
        Just(Pre::StaleVersion),
        Just(Pre::CurrentRev),
        Just(Pre::StaleRev),
        Just(Pre::Exists),
        Just(Pre::Any),
    ]
}

fn small_string() -> impl Strategy<Value = String> {
    prop_oneof![Just("x".to_string()), Just("y".to_string())]
}

fn patch() -> impl Strategy<Value = Patch> {
    let n = -3i64..4;
    prop_oneof![
        n.clone().prop_map(Patch::Inc),
        n.clone().prop_map(Patch::Mul),
        n.clone().prop_map(Patch::Min),
        n.clone().prop_map(Patch::Max),
        small_string().prop_map(Patch::Set),
        Just(Patch::Unset),
        n.clone().prop_map(Patch::Push),
        n.clone().prop_map(Patch::AddToSet),
        n.clone().prop_map(Patch::Pull),
        Just(Patch::CurrentDate),
        n.prop_map(Patch::SetOnInsert),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0..IDS.len();
    prop_oneof![
        4 => (id.clone(), proptest::option::of(-3i64..4), proptest::option::of(small_string()), pre())
            .prop_map(|(id, n, s, pre)| Op::Put { id, n, s, pre }),
        6 => (id.clone(), patch(), any::<bool>(), proptest::option::of((-3i64..4, any::<bool>())), pre())
            .prop_map(|(id, patch, upsert, cond, pre)| Op::Patch { id, patch, upsert, cond, pre }),
        2 => (id, pre()).prop_map(|(id, pre)| Op::Delete { id, pre }),
        1 => Just(Op::Reopen),
    ]
}

/// The model's view of one document: version, tombstone flag, body.
#[derive(Clone, Debug, PartialEq)]
struct ModelDoc {
    version: u64,
    deleted: bool,
    body: Map<String, Value>,
}

/// What the model says a write does.
#[derive(Debug, PartialEq)]
enum Expected {
    Conflict(ConflictReason),
    Effect(Effect),
}

fn check_pre(pre: &Pre, live: Option<&ModelDoc>) -> Option<ConflictReason> {
    match (pre, live) {
        (Pre::Any, _) | (Pre::Absent, None) => None,
        (Pre::Absent, Some(_)) => Some(ConflictReason::AlreadyExists),
        (_, None) => Some(ConflictReason::NotFound),
        (Pre::StaleVersion | Pre::StaleRev, Some(_)) => Some(ConflictReason::VersionMismatch),
        (Pre::CurrentVersion | Pre::CurrentRev | Pre::Exists, Some(_)) => None,
    }
}

fn to_expect(pre: &Pre, stored: Option<&truce::Document>) -> Expect {
    let live = stored.filter(|d| !d.is_deleted());
    let version = live.map_or(1, |d| d.version());
    match pre {
        Pre::Absent => Expect::Absent,
        Pre::CurrentVersion => Expect::Version(version),
        Pre::StaleVersion => Expect::Version(version + 1),
        Pre::CurrentRev => live.map_or(Expect::Rev(Rev { version: 1, hash: 7 }), |d| Expect::Rev(d.rev())),
        Pre::StaleRev => Expect::Rev(Rev {
            version,
            hash: live.map_or(7, |d| d.rev().hash ^ 1),
        }),
        Pre::Exists => Expect::Exists,
        Pre::Any => Expect::Any,
    }
}

fn ints(body: &Map<String, Value>) -> Vec<i64> {
    body.get("l")
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

/// The model of one patch on a live body (or an insert when `body` is `None`).
fn model_patch(patch: &Patch, body: Option<&Map<String, Value>>, now: u64) -> Map<String, Value> {
    let inserting = body.is_none();
    let mut out = body.cloned().unwrap_or_default();
    let n = out.get("n").and_then(Value::as_i64);
    match patch {
        Patch::Inc(k) => drop(out.insert("n".into(), json!(n.unwrap_or(0) + k))),
        Patch::Mul(k) => drop(out.insert("n".into(), json!(n.unwrap_or(0) * k))),
        Patch::Min(k) => drop(out.insert("n".into(), json!(n.map_or(*k, |n| n.min(*k))))),
        Patch::Max(k) => drop(out.insert("n".into(), json!(n.map_or(*k, |n| n.max(*k))))),
        Patch::Set(s) => drop(out.insert("s".into(), json!(s))),
        Patch::Unset => drop(out.remove("s")),
        Patch::Push(k) => {
            let mut l = ints(&out);
            l.push(*k);
            out.insert("l".into(), json!(l));
        }
        Patch::AddToSet(k) => {
            let mut l = ints(&out);
            if !l.contains(k) {
                l.push(*k);
            }
            out.insert("l".into(), json!(l));
        }
        Patch::Pull(k) => {
            if out.contains_key("l") {
                let l: Vec<i64> = ints(&out).into_iter().filter(|x| x != k).collect();
                out.insert("l".into(), json!(l));
            }
        }
        Patch::CurrentDate => drop(out.insert("t".into(), json!(now))),
        Patch::SetOnInsert(k) => {
            if inserting {
                out.insert("n".into(), json!(k));
            }
        }
    }
    out
}

fn patch_spec(patch: &Patch, upsert: bool, cond: Option<(i64, bool)>) -> Value {
    let mut spec = match patch {
        Patch::Inc(k) => json!({"$inc": {"n": k}}),
        Patch::Mul(k) => json!({"$mul": {"n": k}}),
        Patch::Min(k) => json!({"$min": {"n": k}}),
        Patch::Max(k) => json!({"$max": {"n": k}}),
        Patch::Set(s) => json!({"$set": {"s": s}}),
        Patch::Unset => json!({"$unset": {"s": ""}}),
        Patch::Push(k) => json!({"$push": {"l": k}}),
        Patch::AddToSet(k) => json!({"$addToSet": {"l": k}}),
        Patch::Pull(k) => json!({"$pull": {"l": k}}),
        Patch::CurrentDate => json!({"$currentDate": {"t": true}}),
        Patch::SetOnInsert(k) => json!({"$setOnInsert": {"n": k}}),
    };
    spec["$upsert"] = json!(upsert);
    if let Some((k, skip)) = cond {
        spec["$if"] = json!({"n": {"$gte": k}});
        spec["$else"] = json!(if skip { "skip" } else { "conflict" });
    }
    spec
}

struct Harness {
    dir: tempfile::TempDir,
    db: Option<Db>,
    model: BTreeMap<&'static str, ModelDoc>,
    last_seq: u64,
    last_ts: u64,
}

impl Harness {
    fn step(&mut self, op: &Op) {
        if let Op::Reopen = op {
            self.db = None;
            self.db = Some(open(self.dir.path()));
            self.compare();
            return;
        }
        let c = self.db.as_ref().expect("open").collection("m").unwrap();
        let (id, result, expected, new_model) = match op {
            Op::Reopen => unreachable!("handled above"),
            Op::Put { id, n, s, pre } => {
                let id = IDS[*id];
                let stored = c.get_stored(id).unwrap();
                let mut body = Map::new();
                if let Some(n) = n {
                    body.insert("n".into(), json!(n));
                }
                if let Some(s) = s {
                    body.insert("s".into(), json!(s));
                }
                let result = c
                    .put(id, Value::Object(body.clone()), to_expect(pre, stored.as_ref()))
                    .unwrap();
                let live = self.model.get(id).filter(|d| !d.deleted);
                let (expected, new_body) = match check_pre(pre, live) {
                    Some(reason) => (Expected::Conflict(reason), None),
                    None => match live {
                        Some(doc) if doc.body == body => (Expected::Effect(Effect::NoOp), None),
                        Some(_) => (Expected::Effect(Effect::Updated), Some(body)),
                        None => (Expected::Effect(Effect::Created), Some(body)),
                    },
                };
                (id, result, expected, new_body.map(|b| (b, false)))
            }
            Op::Patch {
                id,
                patch,
                upsert,
                cond,
                pre,
            } => {
                let id = IDS[*id];
                let stored = c.get_stored(id).unwrap();
                let spec = patch_spec(patch, *upsert, *cond);
                let result = c
                    .patch(id, update(spec), to_expect(pre, stored.as_ref()))
                    .unwrap();
                let now = match &result {
                    Ok(w) => w.doc.meta.ts_ms,
                    Err(_) => 0,
                };
                let live = self.model.get(id).filter(|d| !d.deleted);
                let (expected, new_body) = match (check_pre(pre, live), live) {
                    (Some(reason), _) => (Expected::Conflict(reason), None),
                    (None, None) if !upsert => (Expected::Conflict(ConflictReason::NotFound), None),
                    (None, None) => (
                        Expected::Effect(Effect::Created),
                        Some(model_patch(patch, None, now)),
                    ),
                    (None, Some(doc)) => {
                        let n = doc.body.get("n").and_then(Value::as_i64);
                        match cond {
                            Some((k, skip)) if n.is_none_or(|n| n < *k) => match skip {
                                true => (Expected::Effect(Effect::Skipped), None),
                                false => (Expected::Conflict(ConflictReason::ConditionFailed), None),
                            },
                            _ => {
                                let body = model_patch(patch, Some(&doc.body), now);
                                if body == doc.body {
                                    (Expected::Effect(Effect::NoOp), None)
                                } else {
                                    (Expected::Effect(Effect::Updated), Some(body))
                                }
                            }
                        }
                    }
                };
                (id, result, expected, new_body.map(|b| (b, false)))
            }
            Op::Delete { id, pre } => {
                let id = IDS[*id];
                let stored = c.get_stored(id).unwrap();
                let expect = to_expect(pre, stored.as_ref());
                if expect == Expect::Absent {
                    assert_eq!(c.delete(id, expect).unwrap_err().code(), "invalid_precondition");
                    return;
                }
                let result = c.delete(id, expect).unwrap();
                let live = self.model.get(id).filter(|d| !d.deleted);
                let expected = match (check_pre(pre, live), live) {
                    (Some(reason), _) => Expected::Conflict(reason),
                    (None, None) => Expected::Conflict(ConflictReason::NotFound),
                    (None, Some(_)) => Expected::Effect(Effect::Deleted),
                };
                let new = matches!(expected, Expected::Effect(_)).then(|| (Map::new(), true));
                (id, result, expected, new)
            }
        };
        let got = match &result {
            Ok(written) => Expected::Effect(written.effect),
            Err(conflict) => Expected::Conflict(conflict.reason),
        };
        assert_eq!(got, expected, "{op:?} -> {result:?}");
        if let Some((body, deleted)) = new_model {
            let version = self.model.get(id).map_or(0, |d| d.version) + 1;
            self.model.insert(
                id,
                ModelDoc {
                    version,
                    deleted,
                    body,
                },
            );
            let written = result.as_ref().unwrap();
            assert!(written.doc.meta.seq > self.last_seq, "sequence numbers increase");
            assert!(
                written.doc.meta.ts_ms >= self.last_ts,
                "commit times never decrease"
            );
            self.last_seq = written.doc.meta.seq;
            self.last_ts = written.doc.meta.ts_ms;
        }
        self.compare();
    }

    fn compare(&self) {
        let c = self.db.as_ref().unwrap().collection("m").unwrap();
        for id in IDS {
            let stored = c.get_stored(id).unwrap();
            let got = stored.as_ref().map(|d| ModelDoc {
                version: d.version(),
                deleted: d.is_deleted(),
                body: d.body.clone(),
            });
            assert_eq!(got.as_ref(), self.model.get(id), "document {id}");
            assert_eq!(
                c.get(id).unwrap().is_some(),
                self.model.get(id).is_some_and(|d| !d.deleted)
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let mut harness = Harness { dir, db: Some(db), model: BTreeMap::new(), last_seq: 0, last_ts: 0 };
        for op in &ops {
            harness.step(op);
        }
    }
}
