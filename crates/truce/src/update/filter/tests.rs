//! Tests of [`Filter`](super::Filter) and field conditions: semantics, errors and limits.

use super::*;
use crate::value_order::tests::arb_json;
use proptest::prelude::*;
use serde_json::json;

const NOW: u64 = 1_000_000;

fn doc(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("test doc must be an object"),
    }
}

/// Whether filter `f` matches document `d`.
fn m(f: Value, d: Value) -> bool {
    Filter::parse(&f).expect("valid filter").matches(&doc(d), NOW)
}

fn err(f: Value) -> Error {
    Filter::parse(&f).expect_err("invalid filter")
}

fn invalid_naming(f: Value, needle: &str) {
    match err(f) {
        Error::InvalidFilter(msg) => assert!(msg.contains(needle), "{msg:?} lacks {needle:?}"),
        e => panic!("expected InvalidFilter, got {e:?}"),
    }
}

#[test]
fn empty_filter_matches_everything() {
    assert!(m(json!({}), json!({})));
    assert!(m(json!({}), json!({"a": 1})));
}

#[test]
fn implicit_equality() {
    assert!(m(json!({"a": 1}), json!({"a": 1})));
    assert!(m(json!({"a": 1}), json!({"a": 1.0})));
    assert!(!m(json!({"a": 1}), json!({"a": "1"})));
    assert!(m(json!({"a": 1, "b": "x"}), json!({"a": 1, "b": "x"})));
    assert!(!m(json!({"a": 1, "b": "y"}), json!({"a": 1, "b": "x"})));
    assert!(m(json!({"a.b.c": true}), json!({"a": {"b": {"c": true}}})));
    assert!(m(json!({"a.1.b": 2}), json!({"a": [{"b": 1}, {"b": 2}]})));
    assert!(m(json!({"_id": "x"}), json!({"_id": "x"})));
}

#[test]
fn plain_objects_compare_exactly() {
    assert!(m(json!({"a": {"x": 1}}), json!({"a": {"x": 1}})));
    assert!(!m(json!({"a": {"x": 1}}), json!({"a": {"x": 1, "y": 2}})));
    assert!(m(json!({"a": {}}), json!({"a": {}})));
    assert!(!m(json!({"a": {}}), json!({})));
}

#[test]
fn equality_against_arrays() {
    let d = json!({"tags": ["a", "b"], "nested": [["a", "b"], "c"]});
    assert!(m(json!({"tags": "a"}), d.clone()));
    assert!(m(json!({"tags": ["a", "b"]}), d.clone()));
    assert!(!m(json!({"tags": ["b", "a"]}), d.clone()));
    assert!(m(json!({"nested": ["a", "b"]}), d.clone()));
    assert!(!m(json!({"nested": "a"}), d.clone()));
    assert!(!m(json!({"tags": {"$ne": "a"}}), d.clone()));
    assert!(m(json!({"tags": {"$in": ["z", "b"]}}), d.clone()));
    assert!(!m(json!({"tags": {"$nin": ["z", "b"]}}), d));
}

#[test]
fn null_matches_missing() {
    assert!(m(json!({"a": null}), json!({})));
    assert!(m(json!({"a": null}), json!({"a": null})));
    assert!(m(json!({"a": null}), json!({"a": [1, null]})));
    assert!(!m(json!({"a": null}), json!({"a": 0})));
    assert!(m(json!({"a": {"$eq": null}}), json!({})));
    assert!(!m(json!({"a": {"$ne": null}}), json!({})));
    assert!(m(json!({"a": {"$ne": null}}), json!({"a": false})));
    assert!(m(json!({"a": {"$in": [null, 1]}}), json!({})));
}

#[test]
fn negations_match_missing() {
    assert!(m(json!({"a": {"$ne": 1}}), json!({})));
    assert!(m(json!({"a": {"$ne": 1}}), json!({"a": 2})));
    assert!(!m(json!({"a": {"$ne": 1}}), json!({"a": 1.0})));
    assert!(m(json!({"a": {"$nin": [1, 2]}}), json!({})));
    assert!(!m(json!({"a": {"$nin": [1, 2]}}), json!({"a": 2})));
    assert!(m(json!({"a": {"$not": {"$gt": 5}}}), json!({})));
    assert!(m(json!({"a": {"$not": {"$gt": 5}}}), json!({"a": 3})));
    assert!(m(json!({"a": {"$not": {"$gt": 5}}}), json!({"a": "x"})));
    assert!(!m(json!({"a": {"$not": {"$gt": 5}}}), json!({"a": 6})));
}

#[test]
fn ranges_stay_in_their_type_bracket() {
    assert!(m(json!({"n": {"$gt": 5}}), json!({"n": 7})));
    assert!(m(json!({"n": {"$gt": 5}}), json!({"n": 5.5})));
    assert!(!m(json!({"n": {"$gt": 5}}), json!({"n": 5})));
    assert!(!m(json!({"n": {"$gt": 5}}), json!({"n": "10"})));
    assert!(!m(json!({"n": {"$gt": 5}}), json!({"n": true})));
    assert!(!m(json!({"n": {"$gt": 5}}), json!({})));
    assert!(m(json!({"n": {"$gte": 5, "$lte": 5}}), json!({"n": 5.0})));
    assert!(!m(json!({"n": {"$gte": 5, "$lt": 5}}), json!({"n": 5})));
    assert!(m(json!({"s": {"$lt": "b"}}), json!({"s": "a"})));
    assert!(!m(json!({"s": {"$lt": "b"}}), json!({"s": 1})));
    assert!(!m(json!({"s": {"$lt": "b"}}), json!({"s": null})));
    assert!(m(json!({"b": {"$gt": false}}), json!({"b": true})));
    assert!(m(json!({"n": {"$gt": 5}}), json!({"n": [1, 9]})));
    assert!(!m(json!({"n": {"$gt": 5}}), json!({"n": [1, "9"]})));
    assert!(m(json!({"n": {"$gt": [1]}}), json!({"n": [1, 2]})));
    assert!(m(json!({"o": {"$gte": {"a": 1}}}), json!({"o": {"a": 2}})));
}

#[test]
fn exists() {
    assert!(m(json!({"a": {"$exists": true}}), json!({"a": null})));
    assert!(!m(json!({"a": {"$exists": true}}), json!({})));
    assert!(m(json!({"a.b": {"$exists": false}}), json!({"a": 1})));
}

#[test]
fn logical_operators() {
    let d = json!({"a": 1, "b": 2});
    assert!(m(json!({"$and": [{"a": 1}, {"b": 2}]}), d.clone()));
    assert!(!m(json!({"$and": [{"a": 1}, {"b": 3}]}), d.clone()));
    assert!(m(json!({"$or": [{"a": 9}, {"b": 2}]}), d.clone()));
    assert!(!m(json!({"$or": [{"a": 9}, {"b": 9}]}), d.clone()));
    assert!(m(json!({"$not": {"a": 9}}), d.clone()));
    assert!(!m(json!({"$not": {"a": 1, "b": 2}}), d.clone()));
    assert!(m(json!({"$not": {"a": 1, "b": 3}}), d.clone()));
    assert!(m(
        json!({"a": 1, "$or": [{"b": 2}], "$not": {"c": {"$exists": true}}}),
        d
    ));
}

#[test]
fn ago_resolves_against_now() {
    assert!(m(json!({"t": {"$ago": 10}}), json!({"t": NOW - 10})));
    assert!(m(json!({"t": {"$lt": {"$ago": 10}}}), json!({"t": NOW - 11})));
    assert!(!m(json!({"t": {"$lt": {"$ago": 10}}}), json!({"t": NOW - 10})));
    assert!(m(json!({"t": {"$in": [1, {"$ago": 0}]}}), json!({"t": NOW})));
    assert!(m(json!({"t": {"$eq": {"$ago": u64::MAX}}}), json!({"t": 0})));
    // Only a lone $ago key is special: anything else is a literal value.
    assert!(m(
        json!({"t": {"$eq": {"$ago": 1, "x": 2}}}),
        json!({"t": {"$ago": 1, "x": 2}})
    ));
}

#[test]
fn heartbeat_filter() {
    let f = json!({"$or": [{"currentPath": {"$ne": "/blog"}}, {"lastSeen": {"$lt": {"$ago": 10000}}}]});
    assert!(m(f.clone(), json!({"currentPath": "/home", "lastSeen": NOW})));
    assert!(m(
        f.clone(),
        json!({"currentPath": "/blog", "lastSeen": NOW - 10_001})
    ));
    assert!(!m(
        f.clone(),
        json!({"currentPath": "/blog", "lastSeen": NOW - 5})
    ));
    assert!(m(f, json!({})));
}

#[test]
fn malformed_filters_name_the_problem() {
    invalid_naming(json!([1]), "array");
    invalid_naming(json!({"$nor": []}), "$nor");
    invalid_naming(json!({"a": {"$regex": "x"}}), "$regex");
    invalid_naming(json!({"a": {"$gt": 1, "x": 2}}), "'a'");
    invalid_naming(json!({"a": {"$in": 1}}), "$in");
    invalid_naming(json!({"a": {"$nin": {}}}), "$nin");
    invalid_naming(json!({"$and": []}), "$and");
    invalid_naming(json!({"$or": {}}), "$or");
    invalid_naming(json!({"$or": [1]}), "object");
    invalid_naming(json!({"$not": 5}), "object");
    invalid_naming(json!({"a": {"$exists": 1}}), "$exists");
    invalid_naming(json!({"a": {"$not": 5}}), "$not");
    invalid_naming(json!({"a": {"$not": {}}}), "$not");
    invalid_naming(json!({"a": {"$not": {"x": 1}}}), "$not");
    invalid_naming(json!({"a": {"$not": {"$ago": 1}}}), "$ago");
    invalid_naming(json!({"a": {"$ago": -1}}), "$ago");
    invalid_naming(json!({"a": {"$gt": {"$ago": 1.5}}}), "$ago");
    invalid_naming(json!({"a": {"$in": [{"$ago": "x"}]}}), "$ago");
    invalid_naming(json!({"a..b": 1}), "a..b");
}

#[test]
fn size_and_depth_are_bounded() {
    let wide: Map<String, Value> = (0..FILTER_NODES_MAX)
        .map(|i| (format!("f{i}"), json!(1)))
        .collect();
    assert!(Filter::parse(&Value::Object(wide.clone())).is_ok());
    let mut wider = wide;
    wider.insert("one_more".into(), json!(1));
    let e = Filter::parse(&Value::Object(wider)).expect_err("too many nodes");
    assert!(matches!(
        e,
        Error::LimitExceeded {
            what: "FILTER_NODES_MAX",
            ..
        }
    ));
    let long_in = json!({"a": {"$in": vec![1; FILTER_NODES_MAX]}});
    assert!(matches!(
        err(long_in),
        Error::LimitExceeded {
            what: "FILTER_NODES_MAX",
            ..
        }
    ));
    let mut deep = json!({"a": 1});
    for _ in 0..DOC_DEPTH_MAX {
        deep = json!({"$not": deep});
    }
    assert!(matches!(
        err(deep),
        Error::LimitExceeded {
            what: "DOC_DEPTH_MAX",
            ..
        }
    ));
}

#[test]
fn conditions_match_single_values() {
    let c = parse_condition(&json!({"$gte": 6})).expect("valid");
    assert!(c.matches_value(Some(&json!(6)), NOW));
    assert!(!c.matches_value(Some(&json!(5)), NOW));
    assert!(!c.matches_value(None, NOW));
    let c = parse_condition(&json!("x")).expect("valid");
    assert!(c.matches_value(Some(&json!("x")), NOW));
    let c = parse_condition(&json!({"$ago": 1})).expect("valid");
    assert!(c.matches_value(Some(&json!(NOW - 1)), NOW));
    assert!(parse_condition(&json!({"$bad": 1})).is_err());
}

proptest! {
    #[test]
    fn random_json_never_panics(spec in arb_json(), d in arb_json()) {
        if let (Ok(f), Value::Object(d)) = (Filter::parse(&spec), d) {
            let _ = f.matches(&d, NOW);
        }
        if let Ok(c) = parse_condition(&spec) {
            let _ = c.matches_value(Some(&spec), NOW);
        }
    }
}
