//! Parsing the server's error bodies: conflicts with their current document,
//! unique violations, transaction conflict lists, plain errors.

use serde_json::{Value, json};

use super::*;

fn bytes(value: Value) -> Vec<u8> {
    serde_json::to_vec(&value).expect("encodes")
}

fn doc(id: &str, version: u64) -> Value {
    json!({"_id": id, "_rev": format!("{version}-abc"), "_version": version, "_seq": 10 + version,
           "_ts": 1000, "n": version})
}

#[test]
fn a_version_conflict_carries_the_current_document() {
    let body = json!({"error": "conflict", "reason": "version_mismatch", "message": "stale", "current": doc("a", 2)});
    let conflict = write_conflict(409, &bytes(body)).expect("a conflict");
    assert_eq!(conflict.reason, ConflictReason::VersionMismatch);
    assert_eq!(conflict.message, "stale");
    let current = conflict.current.expect("current");
    assert_eq!((current.id.as_str(), current.version), ("a", 2));
    assert_eq!(current.get("n"), Some(&json!(2)));
}

#[test]
fn every_reason_parses_and_unknown_ones_are_kept() {
    for code in [
        "version_mismatch",
        "already_exists",
        "not_found",
        "condition_failed",
        "read_conflict",
    ] {
        let body = json!({"error": "conflict", "reason": code, "message": "m", "current": null});
        let conflict = write_conflict(409, &bytes(body)).expect("a conflict");
        assert_eq!(conflict.reason.code(), code);
        assert!(conflict.current.is_none());
    }
    let body = json!({"error": "conflict", "reason": "cosmic_ray", "message": "m"});
    let conflict = write_conflict(409, &bytes(body)).expect("a conflict");
    assert_eq!(conflict.reason, ConflictReason::Unknown("cosmic_ray".into()));
    assert!(!conflict.reason.is_stale_read());
}

#[test]
fn a_unique_violation_is_a_conflict_carrying_the_holder() {
    let body =
        json!({"error": "unique_violation", "index": "by_email", "message": "taken", "current": doc("b", 1)});
    let conflict = write_conflict(409, &bytes(body)).expect("a conflict");
    assert_eq!(
        conflict.reason,
        ConflictReason::UniqueViolation {
            index: Some("by_email".into())
        }
    );
    assert_eq!(conflict.reason.to_string(), "unique_violation (by_email)");
    assert_eq!(conflict.current.map(|d| d.id), Some("b".to_string()));

    let body = json!({"error": "unique_violation", "message": "taken", "current": doc("b", 1)});
    let conflict = write_conflict(409, &bytes(body)).expect("a conflict");
    assert_eq!(conflict.reason, ConflictReason::UniqueViolation { index: None });
    assert!(
        !conflict.reason.is_stale_read(),
        "a fresh read does not free a unique value"
    );
}

#[test]
fn a_write_to_a_missing_document_is_a_not_found_conflict() {
    let body = json!({"error": "not_found", "message": "no such document", "current": null});
    let conflict = write_conflict(404, &bytes(body)).expect("a conflict");
    assert_eq!(conflict.reason, ConflictReason::NotFound);
    assert!(conflict.current.is_none());
}

#[test]
fn other_error_bodies_become_http_errors_with_their_code() {
    let cases = [
        (
            428,
            json!({"error": "precondition_required", "message": "need one"}),
            "precondition_required",
        ),
        (
            400,
            json!({"error": "reserved_field", "message": "_x"}),
            "reserved_field",
        ),
        (
            409,
            json!({"error": "retries_exhausted", "message": "m"}),
            "retries_exhausted",
        ),
        (404, json!({"error": "conflict", "message": "odd"}), "conflict"),
    ];
    for (status, body, code) in cases {
        match write_conflict(status, &bytes(body)) {
            Err(ClientError::Http {
                status: s,
                code: c,
                message,
                ..
            }) => {
                assert_eq!((s, c.as_str()), (status, code));
                assert!(!message.is_empty());
            }
            other => panic!("{status} {code}: {other:?}"),
        }
    }
}

#[test]
fn a_body_that_is_not_a_truce_error_keeps_its_text() {
    match http_error(502, b"<html>Bad Gateway</html>") {
        ClientError::Http {
            status: 502,
            code,
            message,
            ..
        } => {
            assert_eq!(code, UNKNOWN_CODE);
            assert_eq!(message, "<html>Bad Gateway</html>");
        }
        other => panic!("{other:?}"),
    }
    let long = "x".repeat(5000);
    match http_error(500, long.as_bytes()) {
        ClientError::Http { message, .. } => assert_eq!(message.len(), ERROR_TEXT_CHARS_MAX),
        other => panic!("{other:?}"),
    }
    assert!(matches!(write_conflict(409, b""), Err(ClientError::Http { .. })));
}

#[test]
fn a_malformed_current_document_is_a_decode_error() {
    let body =
        json!({"error": "conflict", "reason": "version_mismatch", "message": "m", "current": {"_id": 1}});
    assert!(matches!(
        write_conflict(409, &bytes(body)),
        Err(ClientError::Decode { .. })
    ));
}

#[test]
fn a_transaction_conflict_names_every_failed_op() {
    let body = json!({"error": "conflict", "message": "2 operation(s) did not hold", "conflicts": [
        {"index": 0, "c": "accounts", "id": "a", "reason": "version_mismatch", "current": doc("a", 4)},
        {"index": 2, "c": "accounts", "id": "b", "reason": "already_exists", "current": doc("b", 1)},
        {"index": 3, "c": "users", "id": "u", "reason": "unique_violation", "current": doc("v", 1)},
        {"index": 5, "c": "accounts", "id": "z", "reason": "not_found", "current": null},
    ]});
    let tx = tx_conflict(409, &bytes(body)).expect("a tx conflict");
    assert_eq!(tx.message, "2 operation(s) did not hold");
    let summary: Vec<(usize, &str, &str, &str, Option<u64>)> = tx
        .conflicts
        .iter()
        .map(|c| {
            (
                c.index,
                c.c.as_str(),
                c.id.as_str(),
                c.reason.code(),
                c.current.as_ref().map(|d| d.version),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, "accounts", "a", "version_mismatch", Some(4)),
            (2, "accounts", "b", "already_exists", Some(1)),
            (3, "users", "u", "unique_violation", Some(1)),
            (5, "accounts", "z", "not_found", None),
        ]
    );
}

#[test]
fn malformed_transaction_conflicts_are_errors() {
    let not_a_list = json!({"error": "conflict", "message": "m", "conflicts": {"index": 0}});
    assert!(matches!(
        tx_conflict(409, &bytes(not_a_list)),
        Err(ClientError::Decode { .. })
    ));
    let no_id = json!({"error": "conflict", "message": "m",
                       "conflicts": [{"index": 0, "c": "a", "reason": "not_found", "current": null}]});
    assert!(matches!(
        tx_conflict(409, &bytes(no_id)),
        Err(ClientError::Decode { .. })
    ));
    let bad_index = json!({"error": "conflict", "message": "m",
                           "conflicts": [{"index": -1, "c": "a", "id": "x", "reason": "not_found"}]});
    assert!(matches!(
        tx_conflict(409, &bytes(bad_index)),
        Err(ClientError::Decode { .. })
    ));
    let no_list = json!({"error": "conflict", "reason": "version_mismatch", "message": "m"});
    assert!(matches!(
        tx_conflict(409, &bytes(no_list)),
        Err(ClientError::Http { status: 409, .. })
    ));
    let bad_request = json!({"error": "invalid_transaction", "message": "no ops"});
    match tx_conflict(400, &bytes(bad_request)) {
        Err(ClientError::Http {
            status: 400, code, ..
        }) => assert_eq!(code, "invalid_transaction"),
        other => panic!("{other:?}"),
    }
}
