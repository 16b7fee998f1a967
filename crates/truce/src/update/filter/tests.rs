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
    Filter::parse(&f)
        .expect("valid filter")
        .matches(&doc(d), NOW, &mut Work::new())
        .expect("within the meter")
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
    // A missing field is null to the inclusive bounds of null, as to $eq
    // (MongoDB's rule); nothing is above or below null.
    for op in ["$gte", "$lte", "$eq"] {
        assert!(m(json!({"n": {op: null}}), json!({})), "{op}");
        assert!(m(json!({"n": {op: null}}), json!({"n": null})), "{op}");
        assert!(!m(json!({"n": {op: null}}), json!({"n": 0})), "{op}");
    }
    for op in ["$gt", "$lt"] {
        assert!(!m(json!({"n": {op: null}}), json!({})), "{op}");
        assert!(!m(json!({"n": {op: null}}), json!({"n": null})), "{op}");
    }
    assert!(!m(json!({"n": {"$gte": 0}}), json!({})));
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
    // What counts, as docs/http.md says: `{"a": 1}` as an element of `$or`
    // is two nodes (the element and its field), so 127 fit and 128 do not;
    // `$in` takes its field, itself and each operand; a value matched whole
    // (an object without operators, `$ago`) adds nothing to its field.
    let or_of = |n: usize| json!({"$or": (0..n).map(|i| json!({"a": i})).collect::<Vec<_>>()});
    assert!(Filter::parse(&or_of(127)).is_ok());
    assert!(matches!(
        err(or_of(128)),
        Error::LimitExceeded {
            what: "FILTER_NODES_MAX",
            ..
        }
    ));
    assert!(Filter::parse(&json!({"a": {"$in": vec![1; FILTER_NODES_MAX - 2]}})).is_ok());
    let whole: Map<String, Value> = (0..FILTER_NODES_MAX)
        .map(|i| match i % 2 {
            0 => (format!("f{i}"), json!({"$ago": 5})),
            _ => (format!("f{i}"), json!({"k": [1, 2, 3], "j": {"x": 1}})),
        })
        .collect();
    assert!(Filter::parse(&Value::Object(whole)).is_ok());
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
    assert!(
        c.matches_value(Some(&json!(6)), NOW, &mut Work::new())
            .expect("within the meter")
    );
    assert!(
        !c.matches_value(Some(&json!(5)), NOW, &mut Work::new())
            .expect("within the meter")
    );
    assert!(
        !c.matches_value(None, NOW, &mut Work::new())
            .expect("within the meter")
    );
    let c = parse_condition(&json!("x")).expect("valid");
    assert!(
        c.matches_value(Some(&json!("x")), NOW, &mut Work::new())
            .expect("within the meter")
    );
    let c = parse_condition(&json!({"$ago": 1})).expect("valid");
    assert!(
        c.matches_value(Some(&json!(NOW - 1)), NOW, &mut Work::new())
            .expect("within the meter")
    );
    assert!(parse_condition(&json!({"$bad": 1})).is_err());
}

proptest! {
    #[test]
    fn random_json_never_panics(spec in arb_json(), d in arb_json()) {
        if let (Ok(f), Value::Object(d)) = (Filter::parse(&spec), d) {
            let _ = f.matches(&d, NOW, &mut Work::new());
        }
        if let Ok(c) = parse_condition(&spec) {
            let _ = c.matches_value(Some(&spec), NOW, &mut Work::new());
        }
    }
}

/// A document whose field `a` holds the numbers `0..n`.
fn counting(n: u64) -> Map<String, Value> {
    doc(json!({"a": (0..n).collect::<Vec<_>>()}))
}

/// An `$or` of `clauses` equality tests of `a`, none of which holds.
fn or_of(clauses: i64) -> Filter {
    let or: Vec<Value> = (1..=clauses).map(|k| json!({"a": -k})).collect();
    Filter::parse(&json!({"$or": or})).expect("valid")
}

#[test]
fn a_filter_that_would_compare_too_much_is_refused() {
    // 30 clauses over 140,001 values (the array and each element): 4.2M steps.
    let big = counting(140_000);
    match or_of(30).matches(&big, NOW, &mut Work::new()) {
        Err(Error::LimitExceeded { what, limit }) => {
            assert_eq!((what, limit), ("FILTER_STEPS_MAX", FILTER_STEPS_MAX));
        }
        other => panic!("expected FILTER_STEPS_MAX, got {other:?}"),
    }
    // 28 clauses fit, and so does the same filter over a small array.
    assert!(
        !or_of(28)
            .matches(&big, NOW, &mut Work::new())
            .expect("within the meter")
    );
    assert!(
        !or_of(30)
            .matches(&counting(1000), NOW, &mut Work::new())
            .expect("within the meter")
    );
}

#[test]
fn one_meter_serves_every_filter_it_is_given() {
    let big = counting(140_000);
    let mut work = Work::new();
    // 15 clauses each: 2.1M steps, so the second call runs out.
    assert!(!or_of(15).matches(&big, NOW, &mut work).expect("within the meter"));
    assert!(or_of(15).matches(&big, NOW, &mut work).is_err());
    // Spent for good, however little is asked next.
    assert!(or_of(1).matches(&counting(1), NOW, &mut work).is_err());
    // A `$not` of a filter, or of a condition, that ran out is not a match
    // either, nor is an empty filter.
    for spec in [
        json!({"$not": {"a": -1}}),
        json!({"a": {"$not": {"$eq": -1}}}),
        json!({}),
    ] {
        let f = Filter::parse(&spec).expect("valid");
        assert!(
            f.matches(&counting(1), NOW, &mut Work::new())
                .expect("within the meter")
        );
        assert!(!f.test(&counting(1), NOW, &mut work), "{spec}");
        assert!(f.matches(&counting(1), NOW, &mut work).is_err(), "{spec}");
    }
}

#[test]
fn in_charges_a_binary_search_not_a_scan() {
    // 250 operands over 140,001 values: 8 probes each, 1.1M steps, where
    // a scan of the operands would be 35M.
    let many: Vec<i64> = (1..=250).map(|k| -k).collect();
    for (op, holds) in [("$in", false), ("$nin", true)] {
        let f = Filter::parse(&json!({"a": {op: many}})).expect("valid");
        let found = f.matches(&counting(140_000), NOW, &mut Work::new());
        assert_eq!(found.expect("within the meter"), holds, "{op}");
    }
}

#[test]
fn an_operand_costs_its_size_against_values_of_its_kind_alone() {
    // An array operand of 41 values: against 140,000 numbers (each compared
    // at once) and the array itself, 140,041 steps; against 100,000 arrays,
    // 4.1M.
    let wide = Filter::parse(&json!({"a": vec![0; 40]})).expect("valid");
    assert!(
        !wide
            .matches(&counting(140_000), NOW, &mut Work::new())
            .expect("within the meter")
    );
    let arrays = doc(json!({"a": vec![json!([0]); 100_000]}));
    assert!(wide.matches(&arrays, NOW, &mut Work::new()).is_err());
    // A compare-and-set on a whole array: its length twice, not squared
    // (2,001 × 2,001 steps were charged for one at first).
    let list: Vec<u64> = (0..2000).collect();
    let (d, f) = (
        doc(json!({"list": list})),
        Filter::parse(&json!({"list": list})).expect("valid"),
    );
    let mut work = Work::new();
    for _ in 0..100 {
        assert!(f.matches(&d, NOW, &mut work).expect("within the meter"));
    }
}

#[test]
fn in_finds_numbers_by_value_and_ago_operands_by_the_clock() {
    assert!(m(json!({"a": {"$in": [2, 1.0, "x"]}}), json!({"a": 1})));
    assert!(m(json!({"a": {"$in": [2, 1]}}), json!({"a": 1.0})));
    assert!(m(json!({"a": {"$in": [[1, 2.0]]}}), json!({"a": [1.0, 2]})));
    assert!(!m(json!({"a": {"$nin": [5, 1.0]}}), json!({"a": [3, 1]})));
    assert!(m(
        json!({"t": {"$in": ["x", {"$ago": 10}, 3]}}),
        json!({"t": NOW - 10})
    ));
    assert!(!m(
        json!({"t": {"$in": ["x", {"$ago": 10}]}}),
        json!({"t": NOW - 11})
    ));
    assert!(m(
        json!({"t": {"$in": [{"$ago": 10}]}}),
        json!({"t": [0, NOW - 10]})
    ));
    assert!(m(json!({"t": {"$nin": [{"$ago": 10}]}}), json!({})));
}

proptest! {
    /// `$in` and `$nin` by binary search agree with the definition: equality
    /// with any operand, whatever the operands' order, types and repeats.
    #[test]
    fn in_is_equality_with_any_operand(
        xs in prop::collection::vec(arb_json(), 0..8),
        v in prop::option::of(arb_json()),
        repeat in any::<bool>(),
    ) {
        let mut operands = xs.clone();
        if repeat {
            operands.extend(xs.iter().rev().cloned());
        }
        let Ok(f) = Filter::parse(&json!({"a": {"$in": operands}})) else { return Ok(()) };
        let Ok(not) = Filter::parse(&json!({"a": {"$nin": operands}})) else { return Ok(()) };
        let d = doc(match &v {
            Some(v) => json!({"a": v}),
            None => json!({}),
        });
        let want = operands.iter().any(|x| equals(v.as_ref(), x));
        prop_assert_eq!(f.matches(&d, NOW, &mut Work::new()).expect("within the meter"), want);
        prop_assert_eq!(not.matches(&d, NOW, &mut Work::new()).expect("within the meter"), !want);
    }
}
