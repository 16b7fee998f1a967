//! Fuzz entry points. Each function takes arbitrary bytes and must neither panic
//! nor hang, whatever they are; an error answer is fine. `fuzz/fuzz_targets/`
//! wraps each in a libFuzzer target, and `tests/corpus.rs` replays the kept
//! corpus (`fuzz/corpus/<target>/`) through them in the normal test run.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Value, json};
use truce::storage::{Direction, Durability, MemoryStorage, Space, Storage, StorageRead, WriteBatch};
use truce::{Db, Expect, Filter, Options, Query, Update, doc, record};

/// A fuzz entry point: arbitrary bytes in, nothing out; it may only panic on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its directory under `fuzz/corpus/` and its
/// file under `fuzz/fuzz_targets/`.
pub const TARGETS: [(&str, Target); 8] = [
    ("record", record),
    ("recovery", recovery),
    ("filter", filter),
    ("update", update),
    ("document", document),
    ("cursor", cursor),
    ("checkpoint", checkpoint),
    ("json", json),
];

/// A fixed time, so that runs are reproducible.
const NOW_MS: u64 = 1_700_000_000_000;

/// The documents filters and updates are tried on: every JSON type, nested.
fn samples() -> Vec<serde_json::Map<String, Value>> {
    [
        json!({}),
        json!({"a": 1, "b": "x", "c": [1, "2", null, {"d": true}], "e": {"f": {"g": -1.5}}}),
        json!({"a": null, "b": false, "n": 9_007_199_254_740_993_u64, "s": "ü", "arr": []}),
    ]
    .into_iter()
    .filter_map(|v| v.as_object().cloned())
    .collect()
}

/// The storage record decoders: anything that decodes re-encodes to the same bytes.
pub fn record(data: &[u8]) {
    if let Ok(doc) = record::decode_document("x", data) {
        let body = doc::canonical_bytes(&doc.body);
        assert_eq!(
            record::encode_document(&doc.meta, &body),
            data,
            "a document re-encodes as read"
        );
    }
    if let Ok(value) = record::decode_counter(data) {
        assert_eq!(record::encode_counter(value), data);
    }
    if let Ok(stored) = record::decode_idempotency(data) {
        assert_eq!(record::encode_idempotency(&stored), data);
    }
    let _ = record::decode_json(data);
}

/// Bytes as a store image: entries `[space][key length][key][value length: u16
/// LE][value]`. A space byte with its top bit set asks for the value's record
/// checksum to be recomputed, so the fuzzer gets past the CRC and reaches what
/// the engine does with well-sealed nonsense.
pub fn image(data: &[u8]) -> WriteBatch {
    let mut batch = WriteBatch::new();
    let mut rest = data;
    while let [space, key_len, tail @ ..] = rest {
        let key_len = usize::from(*key_len);
        let Some((key, tail)) = tail.split_at_checked(key_len) else {
            break;
        };
        let [lo, hi, tail @ ..] = tail else { break };
        let value_len = usize::from(u16::from_le_bytes([*lo, *hi]));
        let Some((value, tail)) = tail.split_at_checked(value_len) else {
            break;
        };
        let mut value = value.to_vec();
        if space & 0x80 != 0 && value.len() >= 6 {
            let crc = crc32fast::hash(&value[6..]);
            value[2..6].copy_from_slice(&crc.to_le_bytes());
        }
        batch.put(
            Space::ALL[usize::from(space & 0x7f) % Space::ALL.len()],
            key.to_vec(),
            value,
        );
        rest = tail;
    }
    batch
}

/// The inverse of [`image`], for seeds: every entry of `store`, values resealed.
pub fn encode_image(store: &dyn StorageRead) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, space) in Space::ALL.iter().enumerate() {
        let entries = store
            .scan(
                *space,
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
                Direction::Forward,
                usize::MAX,
            )
            .unwrap_or_default();
        for (key, value) in entries {
            let (Ok(key_len), Ok(value_len)) = (u8::try_from(key.len()), u16::try_from(value.len())) else {
                continue;
            };
            out.extend_from_slice(&[i as u8 | 0x80, key_len]);
            out.extend_from_slice(&key);
            out.extend_from_slice(&value_len.to_le_bytes());
            out.extend_from_slice(&value);
        }
    }
    out
}

/// Recovery from a store holding arbitrary bytes: opening either fails with an
/// error or gives a database whose reads, feed, queries and writes answer
/// (errors allowed) without panicking or hanging.
pub fn recovery(data: &[u8]) {
    let store = Arc::new(MemoryStorage::new());
    store
        .apply(image(data), Durability::Immediate)
        .expect("a memory store applies any batch");
    let Ok(db) = Db::open_with_storage(store.clone(), Options::default()) else {
        return;
    };
    let mut ids = BTreeSet::new();
    let docs = store
        .scan(
            Space::Documents,
            std::ops::Bound::Unbounded,
            std::ops::Bound::Unbounded,
            Direction::Forward,
            64,
        )
        .unwrap_or_default();
    for (key, _) in docs {
        if let Some(at) = key.iter().position(|&b| b == 0) {
            ids.insert((
                String::from_utf8_lossy(&key[..at]).into_owned(),
                String::from_utf8_lossy(&key[at + 1..]).into_owned(),
            ));
        }
    }
    let _ = db.changes(None, 0, 100, true);
    for name in db.collections_page(None, 8).0 {
        let Ok(c) = db.collection(&name) else { continue };
        let _ = c.query(&Query::default());
        for def in c.indexes() {
            let _ = c.query(&Query {
                index: Some(def.name.clone()),
                ..Query::default()
            });
        }
        let _ = c.count();
        let _ = db.changes(Some(&name), 0, 100, true);
        let _ = db.changes_after(&name, Some((0, "")), None, 100);
        for counter in c.config().counters {
            let _ = c.recount(&counter.name);
        }
    }
    for (collection, id) in ids {
        if let Ok(c) = db.collection(&collection) {
            let _ = c.get_stored(&id);
            let _ = c.get_json(&id);
            let _ = c.put(&id, json!({"fuzz": 1}), Expect::Any);
        }
    }
    if let Ok(c) = db.collection("fuzz") {
        let _ = c.put("new", json!({"a": 1}), Expect::Any);
    }
}

/// The filter parser, and every parsed filter evaluated on sample documents.
pub fn filter(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(filter) = Filter::parse(&spec) else { return };
    for sample in samples() {
        let _ = filter.matches(&sample, NOW_MS, &mut truce::update::Work::new());
    }
}

/// The update parser, and every parsed update applied to sample documents (and
/// to none, as an upsert): a result is a valid document or an error.
pub fn update(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(update) = Update::parse(&spec) else { return };
    let samples = samples();
    for current in std::iter::once(None).chain(samples.iter().map(Some)) {
        if let Ok(body) = update.apply(current, NOW_MS, &mut truce::update::Work::new()) {
            let _ = doc::validate_body(&body);
        }
    }
}

/// The document validator: a body it accepts has canonical bytes that parse
/// back to the same body and are accepted again.
pub fn document(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(body) = doc::body_from_value(value) else {
        return;
    };
    let Ok(canonical) = doc::validate_body(&body) else {
        return;
    };
    let again: serde_json::Map<String, Value> =
        serde_json::from_slice(&canonical).expect("canonical bytes are JSON");
    assert_eq!(again, body, "canonical bytes read back as the same body");
    assert_eq!(doc::validate_body(&again).ok(), Some(canonical));
}

/// Query cursors (`after`), for id order and for an index, in both orders.
pub fn cursor(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let def = truce::IndexDef::new(
        "c",
        "by_a",
        truce::IndexSpec {
            fields: vec!["a".into()],
            unique: false,
        },
    )
    .expect("a valid index");
    for (index, order) in [(None, truce::Order::Asc), (Some(&def), truce::Order::Desc)] {
        let query = Query {
            index: index.map(|d| d.name.clone()),
            order,
            after: Some(text.to_string()),
            ..Query::default()
        };
        if let Ok(range) = query.range("c", index) {
            let _ = query.remaining(&range, index);
        }
    }
}

/// The RxDB replication checkpoint (`_pull?checkpoint=`).
pub fn checkpoint(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let _ = truce_server::wire::checkpoint(Some(value));
}

/// serde_json's private marker of a raw value.
const RAW_VALUE_KEY: &[u8] = b"$serde_json::private::RawValue";

/// A request body or JSON parameter (`truce_server::wire::json`), against
/// `serde_json`: the same value whenever both read the bytes, and a refusal
/// of bytes `serde_json` reads only for an object that names a key twice.
pub fn json(data: &[u8]) {
    // With the `raw_value` feature (axum turns it on), serde_json's own `Value`
    // reads an object holding only this key as the value it names; ours reads
    // the object as written.
    if data.windows(RAW_VALUE_KEY.len()).any(|w| w == RAW_VALUE_KEY) {
        return;
    }
    match (
        truce_server::wire::json(data),
        serde_json::from_slice::<Value>(data),
    ) {
        (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs, "both read it, differently"),
        (Ok(_), Err(e)) => panic!("read bytes serde_json refuses ({e})"),
        (Err(e), Ok(_)) => assert!(e.to_string().contains("appears twice"), "refused: {e}"),
        (Err(_), Err(_)) => {}
    }
}
