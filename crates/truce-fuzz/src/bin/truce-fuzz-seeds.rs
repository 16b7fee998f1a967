//! Writes the seed inputs of every fuzz target into `fuzz/corpus/<target>/seed-*`
//! (or the directory given as the first argument): valid inputs the fuzzer
//! mutates from, and that `tests/corpus.rs` replays.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use truce::storage::MemoryStorage;
use truce::{CollectionConfig, Db, Expect, IndexSpec, Meta, Options, Rev, Update, record};

fn write(dir: &Path, target: &str, seeds: Vec<Vec<u8>>) {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir).expect("create the corpus directory");
    for (i, seed) in seeds.into_iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("write a seed");
    }
}

fn texts(values: &[serde_json::Value]) -> Vec<Vec<u8>> {
    values.iter().map(|v| v.to_string().into_bytes()).collect()
}

/// A store after a little of everything: documents, a tombstone, an index,
/// counters of both modes, TTL, an idempotency key, a transaction.
fn store_image() -> Vec<u8> {
    let store = Arc::new(MemoryStorage::new());
    let db = Db::open_with_storage(store.clone(), Options::default()).expect("open");
    let orders = db.collection("orders").expect("collection");
    let config = json!({"ttl": {"field": "t", "seconds": 60}, "counters": [
        {"name": "n", "group_by": "g", "where": {"s": "ok"}, "target": {"c": "m", "field": "n"}, "mode": "in_commit"},
        {"name": "a", "group_by": "g", "target": {"c": "m", "field": "a"}, "mode": "after_commit"}]});
    orders
        .set_config(CollectionConfig::from_json(&config).expect("config"))
        .expect("set config");
    let spec = IndexSpec {
        fields: vec!["g".into()],
        unique: false,
    };
    orders.create_index("by_g", spec).expect("index");
    for i in 0..4 {
        let body = json!({"g": format!("g{}", i % 2), "s": "ok", "t": 4_000_000_000_000_u64, "i": i});
        orders
            .put(&format!("o{i}"), body, Expect::Absent)
            .expect("put")
            .expect("new");
    }
    orders
        .delete("o3", Expect::Any)
        .expect("delete")
        .expect("deleted");
    let inc = Update::parse(&json!({"$inc": {"i": 1}})).expect("update");
    orders
        .patch_idempotent("key-1", "o1", inc, Expect::Any)
        .expect("patch")
        .expect("patched");
    let mut tx = db.begin().expect("begin");
    tx.put("orders", "o9", json!({"g": "g1"}), Expect::Absent)
        .expect("tx put");
    tx.delete("orders", "o0", Expect::Any).expect("tx delete");
    tx.commit().expect("commit").expect("committed");
    drop(db);
    truce_fuzz::encode_image(&*store)
}

fn main() {
    let dir: PathBuf = std::env::args().nth(1).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus"),
        PathBuf::from,
    );
    let body = br#"{"a":[1,{"b":null}],"s":"x"}"#;
    let meta = Meta {
        rev: Rev::compute(3, body, false),
        seq: 7,
        ts_ms: 1_700_000_000_000,
        deleted: false,
    };
    let idempotency = record::IdempotencyRecord {
        fingerprint: 42,
        expires_ms: 9,
        answer: br#"{"seq":1}"#.to_vec(),
    };
    write(
        &dir,
        "record",
        vec![
            record::encode_document(&meta, body),
            record::encode_counter(17),
            record::encode_idempotency(&idempotency),
            record::encode_json(&json!({"collection": "c", "name": "i", "fields": ["a"]})),
        ],
    );
    write(&dir, "recovery", vec![store_image(), Vec::new()]);
    let filters = [
        json!({"a": 1}),
        json!({"$or": [{"currentPath": {"$ne": "/blog"}}, {"lastSeen": {"$lt": {"$ago": 10000}}}]}),
        json!({"c.3.d": {"$exists": true}, "b": {"$in": ["x", 2]}, "$and": [{"e.f.g": {"$gte": -2}}]}),
        json!({"a": {"$not": {"$gt": 0}}, "n": {"$nin": [1, null]}}),
    ];
    write(&dir, "filter", texts(&filters));
    let updates = [
        json!({"$set": {"currentPath": "/blog"}, "$currentDate": {"lastSeen": true}, "$upsert": true,
               "$else": "skip", "$if": {"currentPath": {"$ne": "/blog"}}}),
        json!({"$inc": {"a": 1, "e.f.g": 0.5}, "$mul": {"n": 2}, "$min": {"x": 3}, "$max": {"y": "z"}}),
        json!({"$push": {"c": 4}, "$addToSet": {"arr": [1]}, "$pull": {"c": null}, "$unset": {"b": ""}}),
        json!({"$setOnInsert": {"new": {"deep": [1]}}, "$upsert": true, "$rename": {"a": "b"}}),
    ];
    write(&dir, "update", texts(&updates));
    let documents = [
        json!({"name": "x", "n": 1.5, "big": 18_446_744_073_709_551_615_u64, "list": [true, null, {"k": "ü"}]}),
        json!({"a": {"b": {"c": {"d": [[[]]]}}}}),
        json!({}),
    ];
    write(&dir, "document", texts(&documents));
    write(
        &dir,
        "cursor",
        vec![
            // An index entry of `c`/`by_a`, read descending; an id of `c`,
            // ascending (the target's two queries); an id-order key that is
            // too short; a cursor from before cursors named their order.
            b"desc-630062795f610004610001".to_vec(),
            b"asc-63006964".to_vec(),
            b"asc-6300".to_vec(),
            b"630062795f610004610001".to_vec(),
            b"zz".to_vec(),
        ],
    );
    let checkpoints = [
        json!({"seq": 12, "id": "a"}),
        json!(null),
        json!({"seq": -1, "id": 3}),
    ];
    write(&dir, "checkpoint", texts(&checkpoints));
    write(
        &dir,
        "json",
        vec![
            br#"{"_version": 0, "_version": 5, "a": [1, 2.5, "x", null, true]}"#.to_vec(),
            br#"{"a": {"k": 1}, "b": {"k": 1}, "c": [{"k": 1}, {"k": 1}]}"#.to_vec(),
            br#"{"$inc": {"n": 1}, "$upsert": true}"#.to_vec(),
            br#"[{"s": "\u00fc\ud83d\ude00"}, -0, 1e-7, 18446744073709551616]"#.to_vec(),
            br#"{"a": 1,}"#.to_vec(),
        ],
    );
    println!("seeds written under {}", dir.display());
}
