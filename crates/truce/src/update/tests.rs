//! Tests of [`Update`](super::Update): parsing, control keys, and every operator's effect.

use super::*;
use crate::value_order::tests::arb_json;
use proptest::prelude::*;
use serde_json::json;

const NOW: u64 = 1_700_000_000_000;

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("test doc must be an object"),
    }
}

fn upd(spec: Value) -> Update {
    Update::parse(&spec).expect("valid update")
}

/// Applies `spec` to `doc` (an existing document) and returns the new body.
fn run(spec: Value, doc: Value) -> Result<Value, Error> {
    upd(spec)
        .apply(Some(&obj(doc)), NOW, &mut Work::new())
        .map(Value::Object)
}

fn ok(spec: Value, doc: Value) -> Value {
    run(spec, doc).expect("update applies")
}

fn op_err(r: Result<Value, Error>, needle: &str) {
    match r {
        Err(Error::InvalidOperator(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected InvalidOperator, got {other:?}"),
    }
}

fn parse_err(spec: Value, needle: &str) {
    op_err(Update::parse(&spec).map(|_| Value::Null), needle);
}

#[test]
fn traits() {
    fn check<T: Clone + std::fmt::Debug + Send + Sync>() {}
    check::<Update>();
    check::<Filter>();
}

#[test]
fn control_keys() {
    let u = upd(json!({"$set": {"a": 1}}));
    assert!(!u.upsert());
    assert!(u.condition().is_none());
    assert_eq!(u.on_false(), OnFalse::Conflict);
    let u = upd(json!({"$set": {"a": 1}, "$upsert": true, "$if": {"a": {"$lt": 5}}, "$else": "skip"}));
    assert!(u.upsert());
    assert_eq!(u.on_false(), OnFalse::Skip);
    let cond = u.condition().expect("has $if");
    assert!(
        cond.matches(&obj(json!({"a": 4})), NOW, &mut Work::new())
            .expect("within the meter")
    );
    assert!(
        !cond
            .matches(&obj(json!({"a": 5})), NOW, &mut Work::new())
            .expect("within the meter")
    );
    assert_eq!(
        upd(json!({"$set": {"a": 1}, "$if": {"a": 0}, "$else": "conflict"})).on_false(),
        OnFalse::Conflict
    );
}

#[test]
fn malformed_updates() {
    parse_err(json!([]), "JSON object");
    parse_err(json!({"a": 1}), "'a' is not an operator");
    parse_err(json!({"$set": {"a": 1}, "name": "x"}), "'name'");
    parse_err(json!({"$rename": {"a": "b"}}), "$rename");
    parse_err(json!({}), "at least one operator");
    parse_err(json!({"$upsert": true}), "at least one operator");
    parse_err(json!({"$set": {}}), "at least one operator");
    parse_err(json!({"$set": [1]}), "'$set' needs an object");
    parse_err(json!({"$set": {"a": 1}, "$upsert": "yes"}), "$upsert");
    assert!(matches!(
        Update::parse(&json!({"$set": {"a": 1}, "$if": 5})),
        Err(Error::InvalidFilter(m)) if m.contains("$if")
    ));
    parse_err(json!({"$set": {"a": 1}, "$else": "maybe"}), "$else");
    parse_err(json!({"$set": {"a": 1}, "$else": 1}), "$else");
    parse_err(json!({"$set": {"a..b": 1}}), "a..b");
    parse_err(json!({"$inc": {"a": "1"}}), "'$inc' at 'a'");
    let e = Update::parse(&json!({"$set": {"a": 1}, "$if": {"$bad": 1}})).expect_err("bad filter");
    assert!(matches!(e, Error::InvalidFilter(_)));
    // Unknown keys are reported before any operand is looked at, and the
    // controls before the operators, whatever order the keys come in.
    parse_err(
        json!({"$upsert": "yes", "$set": [1], "$zap": {}}),
        "unknown update operator '$zap'",
    );
    parse_err(json!({"$else": "maybe", "$set": [1]}), "$else");
}

#[test]
fn reserved_paths() {
    for spec in [
        json!({"$set": {"_id": 1}}),
        json!({"$unset": {"_version": ""}}),
        json!({"$inc": {"_x.y": 1}}),
    ] {
        assert!(
            matches!(Update::parse(&spec), Err(Error::ReservedField(_))),
            "{spec}"
        );
    }
    assert_eq!(
        ok(json!({"$set": {"a._b": 1}}), json!({})),
        json!({"a": {"_b": 1}})
    );
}

#[test]
fn conflicting_paths() {
    parse_err(
        json!({"$set": {"a": 1}, "$inc": {"a": 1}}),
        "'a' of $set and 'a' of $inc",
    );
    parse_err(
        json!({"$set": {"a": 1}, "$unset": {"a.b": ""}}),
        "conflicting paths",
    );
    parse_err(
        json!({"$set": {"a.b.c": 1, "a.b": 2}}),
        "'a.b' of $set and 'a.b.c' of $set",
    );
    parse_err(json!({"$set": {"x": 1}, "$setOnInsert": {"x": 2}}), "conflicting");
    assert!(Update::parse(&json!({"$set": {"a.b": 1, "a.c": 2, "ab": 3}})).is_ok());
}

#[test]
fn path_count_is_bounded() {
    let paths = |n: usize| -> Map<String, Value> { (0..n).map(|i| (format!("f{i}"), json!(1))).collect() };
    assert!(Update::parse(&json!({"$set": paths(UPDATE_PATHS_MAX)})).is_ok());
    let half = UPDATE_PATHS_MAX / 2 + 1;
    let spec = json!({"$set": paths(half), "$unset": paths(half)});
    let e = Update::parse(&spec).expect_err("too many");
    assert!(matches!(
        e,
        Error::LimitExceeded {
            what: "UPDATE_PATHS_MAX",
            ..
        }
    ));
}

#[test]
fn set_and_unset() {
    let doc = json!({"a": {"b": 1}, "arr": [1, 2], "k": 0});
    assert_eq!(
        ok(
            json!({"$set": {"a.c": [1], "arr.1": "x", "new.deep": {"z": null}}}),
            doc.clone()
        ),
        json!({"a": {"b": 1, "c": [1]}, "arr": [1, "x"], "new": {"deep": {"z": null}}, "k": 0})
    );
    assert_eq!(
        ok(
            json!({"$unset": {"a.b": "", "arr.0": "", "k": true, "missing.x": 1}}),
            doc.clone()
        ),
        json!({"a": {}, "arr": [null, 2]})
    );
    op_err(run(json!({"$set": {"k.x": 1}}), doc), "'k' holds a number");
}

#[test]
fn inc_and_mul() {
    let doc = json!({"n": 5, "f": 1.5, "s": "x", "big": i64::MAX});
    assert_eq!(
        ok(json!({"$inc": {"n": 2, "f": 1, "m": 3}}), doc.clone())["m"],
        json!(3)
    );
    assert_eq!(ok(json!({"$inc": {"n": -7}}), doc.clone())["n"], json!(-2));
    assert_eq!(ok(json!({"$inc": {"n": 0.5}}), doc.clone())["n"], json!(5.5));
    assert_eq!(ok(json!({"$inc": {"f": 1}}), doc.clone())["f"], json!(2.5));
    assert_eq!(ok(json!({"$inc": {"a.b": 1}}), doc.clone())["a"], json!({"b": 1}));
    op_err(
        run(json!({"$inc": {"s": 1}}), doc.clone()),
        "'$inc' at 's' needs a number there, found a string",
    );
    op_err(run(json!({"$inc": {"big": 1}}), doc.clone()), "overflows");
    // An operand past i64 does not take a missing field there either.
    op_err(
        run(json!({"$inc": {"m": 1_u64 << 63}}), doc.clone()),
        "'$inc' at 'm' overflows",
    );
    let signed = ok(json!({"$inc": {"m": -0.0}}), doc.clone())["m"].as_f64();
    assert!(
        signed.is_some_and(f64::is_sign_negative),
        "the operand as it is: {signed:?}"
    );
    assert_eq!(ok(json!({"$mul": {"n": 3}}), doc.clone())["n"], json!(15));
    assert_eq!(ok(json!({"$mul": {"n": 0.5}}), doc.clone())["n"], json!(2.5));
    let missing = ok(json!({"$mul": {"i": 7, "x": 7.5}}), doc.clone());
    assert_eq!((&missing["i"], missing["i"].is_i64()), (&json!(0), true));
    assert!(missing["x"].is_f64() && missing["x"] == json!(0.0));
    op_err(
        run(json!({"$mul": {"big": 2}}), doc.clone()),
        "'$mul' at 'big' overflows",
    );
    op_err(run(json!({"$mul": {"s": 2}}), doc), "found a string");
}

#[test]
fn inc_and_mul_change_a_nested_or_array_number_and_nothing_else() {
    let doc = json!({"a": {"b": [1, 2, {"c": 4}]}, "z": 0});
    assert_eq!(
        ok(json!({"$inc": {"a.b.1": 5, "a.b.2.c": -1}}), doc.clone()),
        json!({"a": {"b": [1, 7, {"c": 3}]}, "z": 0})
    );
    assert_eq!(
        ok(json!({"$mul": {"a.b.0": 3}}), doc.clone()),
        json!({"a": {"b": [3, 2, {"c": 4}]}, "z": 0})
    );
    // Past the array's end: padded with nulls, as a set would.
    assert_eq!(
        ok(json!({"$inc": {"a.b.4": 1}}), doc.clone())["a"]["b"],
        json!([1, 2, {"c": 4}, null, 1])
    );
    // A failing operator after one that succeeded leaves the document as it was:
    // the update works on a copy.
    let before = obj(doc.clone());
    let failed =
        upd(json!({"$inc": {"a.b.1": 1, "a.b.2.c.d": 1}})).apply(Some(&before), NOW, &mut Work::new());
    assert!(failed.is_err());
    assert_eq!(Value::Object(before), doc);
}

#[test]
fn min_and_max() {
    let doc = json!({"n": 5, "s": "m"});
    assert_eq!(ok(json!({"$min": {"n": 3}}), doc.clone())["n"], json!(3));
    assert_eq!(ok(json!({"$min": {"n": 7}}), doc.clone())["n"], json!(5));
    assert_eq!(ok(json!({"$max": {"n": 7}}), doc.clone())["n"], json!(7));
    assert_eq!(ok(json!({"$max": {"n": 5.0}}), doc.clone())["n"], json!(5));
    assert_eq!(ok(json!({"$min": {"x.y": 1}}), doc.clone())["x"], json!({"y": 1}));
    assert_eq!(ok(json!({"$max": {"x": null}}), doc.clone())["x"], json!(null));
    // Across types the bracket order decides: null < number < string.
    assert_eq!(ok(json!({"$min": {"s": 100}}), doc.clone())["s"], json!(100));
    assert_eq!(ok(json!({"$max": {"n": "a"}}), doc)["n"], json!("a"));
}

#[test]
fn push_and_add_to_set() {
    let doc = json!({"arr": [1, 2], "s": "x"});
    assert_eq!(
        ok(json!({"$push": {"arr": 3}}), doc.clone())["arr"],
        json!([1, 2, 3])
    );
    assert_eq!(
        ok(json!({"$push": {"arr": [3]}}), doc.clone())["arr"],
        json!([1, 2, [3]])
    );
    assert_eq!(
        ok(json!({"$push": {"arr": {"$each": [2, 3]}}}), doc.clone())["arr"],
        json!([1, 2, 2, 3])
    );
    assert_eq!(
        ok(json!({"$push": {"new": {"$each": []}}}), doc.clone())["new"],
        json!([])
    );
    assert_eq!(
        ok(json!({"$push": {"a.b": "x"}}), doc.clone())["a"],
        json!({"b": ["x"]})
    );
    op_err(
        run(json!({"$push": {"s": 1}}), doc.clone()),
        "'$push' at 's' needs an array there, found a string",
    );
    assert_eq!(
        ok(json!({"$addToSet": {"arr": 2.0}}), doc.clone())["arr"],
        json!([1, 2])
    );
    assert_eq!(
        ok(json!({"$addToSet": {"arr": 3}}), doc.clone())["arr"],
        json!([1, 2, 3])
    );
    assert_eq!(
        ok(
            json!({"$addToSet": {"arr": {"$each": [3, 1, 3, 4]}}}),
            doc.clone()
        )["arr"],
        json!([1, 2, 3, 4])
    );
    assert_eq!(
        ok(json!({"$addToSet": {"t": {"$each": ["a", "a"]}}}), doc.clone())["t"],
        json!(["a"])
    );
    op_err(run(json!({"$addToSet": {"s": 1}}), doc), "'$addToSet' at 's'");
}

#[test]
fn pull() {
    let doc = json!({"n": [1, 5, 6, 7, 6.0, "6"], "o": [{"name": "x", "v": 1}, {"name": "y"}, 3], "s": "x"});
    assert_eq!(
        ok(json!({"$pull": {"n": 6}}), doc.clone())["n"],
        json!([1, 5, 7, "6"])
    );
    assert_eq!(
        ok(json!({"$pull": {"n": {"$gte": 6}}}), doc.clone())["n"],
        json!([1, 5, "6"])
    );
    assert_eq!(
        ok(json!({"$pull": {"n": {"$in": [1, "6"]}}}), doc.clone())["n"],
        json!([5, 6, 7, 6.0])
    );
    assert_eq!(
        ok(json!({"$pull": {"o": {"name": "x"}}}), doc.clone())["o"],
        json!([{"name": "y"}, 3])
    );
    assert_eq!(
        ok(json!({"$pull": {"o": {"v": {"$exists": false}}}}), doc.clone())["o"],
        json!([{"name": "x", "v": 1}, 3])
    );
    assert_eq!(ok(json!({"$pull": {"missing": 1}}), doc.clone()), doc);
    let ago = json!({"t": [NOW - 5, NOW - 50]});
    assert_eq!(
        ok(json!({"$pull": {"t": {"$lt": {"$ago": 10}}}}), ago)["t"],
        json!([NOW - 5])
    );
    op_err(
        run(json!({"$pull": {"s": 1}}), doc),
        "'$pull' at 's' needs an array",
    );
}

#[test]
fn a_pull_that_would_compare_too_much_is_refused() {
    let arrays = json!({"a": vec![json!([0]); 100_000]});
    // Each array element against an operand of 42 values: 4.2M steps.
    let wide: Vec<i64> = (0..41).collect();
    let limit = |r: Result<Value, Error>| match r {
        Err(Error::LimitExceeded { what, .. }) => assert_eq!(what, "FILTER_STEPS_MAX"),
        other => panic!("expected FILTER_STEPS_MAX, got {:?}", other.map(|_| "a document")),
    };
    limit(run(json!({"$pull": {"a": {"$in": [wide]}}}), arrays.clone()));
    // Half as wide fits (and no element is that array); against numbers,
    // each compared at once, the wide one fits too.
    let narrow: Vec<i64> = (0..20).collect();
    let pulled = ok(json!({"$pull": {"a": {"$in": [narrow]}}}), arrays.clone());
    assert_eq!(pulled["a"].as_array().map(Vec::len), Some(100_000));
    let numbers = json!({"a": (0..140_000).collect::<Vec<_>>()});
    let pulled = ok(json!({"$pull": {"a": {"$in": [wide, 7, 139_999]}}}), numbers);
    assert_eq!(pulled["a"].as_array().map(Vec::len), Some(139_998));
    // A value to remove is compared, not filtered: linear, and never refused.
    let pulled = ok(json!({"$pull": {"a": [0]}}), arrays);
    assert_eq!(pulled["a"].as_array().map(Vec::len), Some(0));
    // Every clause charges, `$exists` too: 300,000 objects, each one step
    // for the filter and one per clause.
    let objects = json!({"a": vec![json!({}); 300_000]});
    let absent = |fields: usize| -> Map<String, Value> {
        (0..fields)
            .map(|i| (format!("x{i}"), json!({"$exists": false})))
            .collect()
    };
    limit(run(json!({"$pull": {"a": absent(13)}}), objects.clone()));
    let pulled = ok(json!({"$pull": {"a": absent(5)}}), objects);
    assert_eq!(pulled["a"].as_array().map(Vec::len), Some(0));
}

#[test]
fn current_date() {
    let got = ok(
        json!({"$currentDate": {"at": true, "meta.t": {"$type": "timestamp"}}}),
        json!({"at": 1}),
    );
    assert_eq!(got, json!({"at": NOW, "meta": {"t": NOW}}));
}

#[test]
fn set_on_insert_only_when_inserting() {
    let u = upd(json!({"$set": {"a": 1}, "$setOnInsert": {"created": true}, "$upsert": true}));
    let inserted = u.apply(None, NOW, &mut Work::new()).expect("insert");
    assert_eq!(Value::Object(inserted), json!({"a": 1, "created": true}));
    let updated = u
        .apply(Some(&obj(json!({"a": 0}))), NOW, &mut Work::new())
        .expect("update");
    assert_eq!(Value::Object(updated), json!({"a": 1}));
    let only_insert = upd(json!({"$setOnInsert": {"x": 1}}));
    assert_eq!(
        Value::Object(
            only_insert
                .apply(Some(&obj(json!({"y": 2}))), NOW, &mut Work::new())
                .expect("noop")
        ),
        json!({"y": 2})
    );
}

#[test]
fn current_is_never_modified() {
    let current = obj(json!({"a": 1, "s": "x"}));
    let before = current.clone();
    let u = upd(json!({"$set": {"a": 2}, "$inc": {"s": 1}}));
    assert!(u.apply(Some(&current), NOW, &mut Work::new()).is_err());
    assert_eq!(current, before);
    let u = upd(json!({"$set": {"a": 2}}));
    assert_eq!(
        u.apply(Some(&current), NOW, &mut Work::new()).expect("ok")["a"],
        json!(2)
    );
    assert_eq!(current, before);
}

#[test]
fn depth_is_bounded() {
    let mut deep = json!(1);
    for _ in 0..DOC_DEPTH_MAX - 1 {
        deep = json!([deep]);
    }
    // The root is level 1, so DOC_DEPTH_MAX - 1 arrays below it just fit.
    assert!(run(json!({"$set": {"a": deep.clone()}}), json!({})).is_ok());
    let e = run(json!({"$set": {"a": [deep]}}), json!({})).expect_err("too deep");
    assert!(matches!(e, Error::InvalidDocument(m) if m.contains("DOC_DEPTH_MAX")));
    let long_path = vec!["a"; DOC_DEPTH_MAX].join(".");
    assert!(run(json!({"$set": {long_path.clone(): 1}}), json!({})).is_ok());
    assert!(run(json!({"$set": {long_path: {}}}), json!({})).is_err());
}

#[test]
fn operators_of_disjoint_paths_apply_as_one() {
    // Paths never overlap, so each operator's result is as if it ran alone,
    // whatever order its keys and operators come in.
    let u = upd(json!({"$push": {"list": 2}, "$set": {"other": 1}}));
    assert_eq!(
        Value::Object(u.apply(None, NOW, &mut Work::new()).expect("ok")),
        json!({"list": [2], "other": 1})
    );
    let doc = json!({"n": 1});
    assert_eq!(
        ok(json!({"$inc": {"n": 1}, "$max": {"m": 3}}), doc.clone()),
        json!({"n": 2, "m": 3})
    );
}

#[test]
fn presence_heartbeat() {
    let u = upd(json!({
        "$set": {"currentPath": "/blog"},
        "$currentDate": {"lastSeen": true},
        "$upsert": true,
        "$if": {"$or": [{"currentPath": {"$ne": "/blog"}}, {"lastSeen": {"$lt": {"$ago": 10000}}}]},
        "$else": "skip"
    }));
    let cond = u.condition().expect("has $if");
    let fresh = obj(json!({"currentPath": "/blog", "lastSeen": NOW - 3000}));
    assert!(
        !cond
            .matches(&fresh, NOW, &mut Work::new())
            .expect("within the meter")
    );
    let stale = obj(json!({"currentPath": "/blog", "lastSeen": NOW - 20000}));
    assert!(
        cond.matches(&stale, NOW, &mut Work::new())
            .expect("within the meter")
    );
    assert_eq!(
        Value::Object(u.apply(Some(&stale), NOW, &mut Work::new()).expect("ok")),
        json!({"currentPath": "/blog", "lastSeen": NOW})
    );
}

/// `$if` sees the body, which holds no `_` field: a condition on one never
/// matched (or always, negated), and a 409 showed the very `_version` asked for.
#[test]
fn if_on_a_metadata_field_is_refused() {
    for condition in [
        json!({"_version": 1}),
        json!({"_ts": {"$lt": {"$ago": 0}}}),
        json!({"$or": [{"a": 1}, {"$not": {"_id": "x"}}]}),
        json!({"$and": [{"_rev.x": {"$exists": false}}]}),
    ] {
        match Update::parse(&json!({"$inc": {"n": 1}, "$if": condition})) {
            Err(Error::InvalidFilter(m)) => assert!(m.contains("a `_` field"), "{m}"),
            other => panic!("{condition}: expected InvalidFilter, got {other:?}"),
        }
    }
    // A `_` field inside the body's own objects is the user's.
    assert!(Update::parse(&json!({"$inc": {"n": 1}, "$if": {"meta._v": 1}})).is_ok());
}

#[test]
fn else_without_if_is_refused() {
    parse_err(json!({"$set": {"a": 1}, "$else": "skip"}), "there is no '$if'");
    assert!(Update::parse(&json!({"$set": {"a": 1}, "$if": {"a": 0}, "$else": "skip"})).is_ok());
}

/// Each path may pad an array up to just under the bound, but not every path of
/// one update: 256 of them would build ~54 million `null`s (gigabytes, seconds
/// of the committer) before the document's size is checked.
#[test]
fn padding_is_bounded_over_the_whole_update() {
    let index = crate::limits::DOC_SIZE_BYTES_MAX / 5;
    let arrays: Map<String, Value> = (0..256).map(|i| (format!("a{i}"), json!([]))).collect();
    let one = ok(
        json!({"$set": {format!("a0.{}", index - 1): 1}}),
        Value::Object(arrays.clone()),
    );
    assert_eq!(one["a0"].as_array().map(Vec::len), Some(index));
    let all: Map<String, Value> = (0..256)
        .map(|i| (format!("a{i}.{}", index - 1), json!(1)))
        .collect();
    op_err(
        run(json!({"$set": all}), Value::Object(arrays)),
        "with this update's other paths",
    );
}

/// The bound is on the `null`s added, not on the index: an array longer
/// than the bound already (300,000 small numbers fit a document) takes
/// writes past it, and a few `null`s more; the index alone was bounded,
/// which refused even `$set` of an element that was there.
#[test]
fn a_long_array_takes_writes_past_the_padding_bound() {
    let bound = crate::limits::DOC_SIZE_BYTES_MAX / 5;
    let long = json!({"a": vec![1; 300_000]});
    let set = ok(
        json!({"$set": {"a.250000": 7}, "$inc": {"a.260000": 1}}),
        long.clone(),
    );
    assert_eq!(
        (set["a"][250_000].clone(), set["a"][260_000].clone()),
        (json!(7), json!(2))
    );
    let padded = ok(json!({"$set": {"a.300002": 7}}), long.clone());
    assert_eq!(padded["a"].as_array().map(Vec::len), Some(300_003));
    assert_eq!(padded["a"][300_001], Value::Null);
    // Past the end by more than the bound is refused, however long the array.
    op_err(
        run(
            json!({"$set": {format!("a.{}", 300_000 + bound): 1}}),
            long.clone(),
        ),
        "is too large",
    );
    op_err(
        run(json!({"$set": {"a.18446744073709551615": 1}}), long),
        "is too large",
    );
}

/// Writes into one array succeed whatever index comes first in the update,
/// within an operator (`"a.10"` sorts before `"a.2"` as text) or across two
/// (`$set` runs before `$inc`): the lower index is written first, so the
/// higher one's padding never puts a `null` where a field is to be made.
#[test]
fn writes_into_one_array_go_by_index_not_by_text_or_operator() {
    let doc = json!({"a": [0, 1], "o": {"10": {}}});
    assert_eq!(
        ok(json!({"$set": {"a.10.x": 1, "a.2.x": 2}}), doc.clone())["a"],
        json!([0, 1, {"x": 2}, null, null, null, null, null, null, null, {"x": 1}])
    );
    assert_eq!(
        ok(json!({"$set": {"a.5": 1}, "$inc": {"a.2.n": 1}}), doc.clone())["a"],
        json!([0, 1, {"n": 1}, null, null, 1])
    );
    // Object keys made of digits are keys: written as any other.
    assert_eq!(
        ok(json!({"$set": {"o.9.x": 1, "o.10.y": 2}}), doc)["o"],
        json!({"10": {"y": 2}, "9": {"x": 1}})
    );
}

fn arb_update() -> impl Strategy<Value = Value> {
    let op = prop::sample::select(OPERATORS.to_vec());
    let path = prop::sample::select(vec!["a", "a.b", "b.0", "c.1.d", "arr", "n", "_x", "a.$"]);
    prop::collection::vec((op, path, arb_json()), 1..4).prop_map(|entries| {
        let mut spec = Map::new();
        for (op, path, v) in entries {
            let slot = spec.entry(op).or_insert_with(|| json!({}));
            if let Value::Object(m) = slot {
                m.insert(path.to_owned(), v);
            }
        }
        Value::Object(spec)
    })
}

proptest! {
    #[test]
    fn random_updates_never_panic(spec in arb_update(), doc in arb_json(), raw in arb_json()) {
        let _ = Update::parse(&raw);
        if let Ok(u) = Update::parse(&spec) {
            let current = match doc { Value::Object(m) => Some(m), _ => None };
            if let Ok(new) = u.apply(current.as_ref(), NOW, &mut Work::new()) {
                prop_assert!(!new.values().any(|v| deeper_than(v, DOC_DEPTH_MAX - 1)));
            }
        }
    }
}

/// An update nested past `UPDATE_DEPTH_MAX` is refused before anything walks
/// it recursively: built in code (no JSON parser bounds it), one nested
/// 100,000 levels was cloned, serialized and later applied by recursion,
/// past what a thread's stack holds.
#[test]
fn an_update_nested_past_its_bound_is_refused_before_it_is_walked() {
    let nested = |levels: usize| {
        let mut v = json!(1);
        for _ in 0..levels {
            v = Value::Array(vec![v]);
        }
        // Not `json!`, which would serialize `v` (by recursion) to take it.
        let set = Value::Object(Map::from_iter([("a".to_string(), v)]));
        Value::Object(Map::from_iter([("$set".to_string(), set)]))
    };
    // The spec and its `$set` are two levels: 126 more make 128.
    assert!(Update::parse(&nested(UPDATE_DEPTH_MAX - 2)).is_ok());
    let refused = Update::parse(&nested(UPDATE_DEPTH_MAX - 1)).expect_err("refused");
    assert!(refused.to_string().contains("UPDATE_DEPTH_MAX"), "{refused}");
    let deep = nested(100_000);
    assert!(Update::parse(&deep).is_err());
    // serde_json drops a value by recursion too: this one is the test's own.
    std::mem::forget(deep);
}
