//! Truce's own record format: what the engine stores as storage values, with a
//! format version and a checksum, so that bytes read back are verified before use.
//!
//! ```text
//! offset size  field
//! 0      1     format version (RECORD_FORMAT_VERSION)
//! 1      1     kind (RecordKind)
//! 2      4     CRC-32 (IEEE) of every byte from offset 6 on, little-endian
//! 6      ..    payload
//!
//! document payload:
//! 0      8     version  (u64 LE)
//! 8      8     seq      (u64 LE)
//! 16     8     ts_ms    (u64 LE)
//! 24     1     flags    (bit 0: deleted)
//! 25     16    revision hash (u128 LE)
//! 41     ..    canonical JSON body (UTF-8, sorted keys, no whitespace)
//!
//! counter payload (meta values such as the last sequence number):
//! 0      8     value (u64 LE)
//!
//! idempotency payload:
//! 0      16    request fingerprint (u128 LE)
//! 16     8     expires_ms (u64 LE)
//! 24     ..    the stored answer (JSON)
//!
//! JSON payload (index definitions): the JSON text
//! ```

use crate::doc::{Body, Document, Meta, Rev, content_hash};
use crate::storage::StorageError;

/// The record format this build writes and reads. Bumped on any layout change;
/// a record of an unknown version is reported as corrupt rather than misread.
pub const RECORD_FORMAT_VERSION: u8 = 1;

const HEADER_BYTES: usize = 6;
const DOC_FIXED_BYTES: usize = 41;
const FLAG_DELETED: u8 = 1;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A document or tombstone.
    Document = 1,
    /// A single `u64` (sequence numbers, timestamps, format markers).
    Counter = 2,
    /// An idempotency record: request fingerprint, expiry, stored answer.
    Idempotency = 3,
    /// A JSON value (index definitions).
    Json = 4,
}

fn seal(kind: RecordKind, payload_len: usize, write_payload: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload_len);
    out.extend_from_slice(&[RECORD_FORMAT_VERSION, kind as u8, 0, 0, 0, 0]);
    write_payload(&mut out);
    let crc = crc32fast::hash(&out[HEADER_BYTES..]);
    out[2..HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    out
}

fn open(bytes: &[u8], kind: RecordKind) -> Result<&[u8], StorageError> {
    let corrupt = |what: &str| Err(StorageError::Corrupt(what.to_string()));
    if bytes.len() < HEADER_BYTES {
        return corrupt("record shorter than its header");
    }
    if bytes[0] != RECORD_FORMAT_VERSION {
        return corrupt(&format!("unknown record format version {}", bytes[0]));
    }
    if bytes[1] != kind as u8 {
        return corrupt(&format!("record kind {} where {:?} was expected", bytes[1], kind));
    }
    let stored = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
    let payload = &bytes[HEADER_BYTES..];
    if crc32fast::hash(payload) != stored {
        return corrupt("record checksum mismatch");
    }
    Ok(payload)
}

/// Encodes a document (or tombstone) from its metadata and canonical body bytes.
pub fn encode_document(meta: &Meta, canonical_body: &[u8]) -> Vec<u8> {
    seal(
        RecordKind::Document,
        DOC_FIXED_BYTES + canonical_body.len(),
        |out| {
            out.extend_from_slice(&meta.rev.version.to_le_bytes());
            out.extend_from_slice(&meta.seq.to_le_bytes());
            out.extend_from_slice(&meta.ts_ms.to_le_bytes());
            out.push(if meta.deleted { FLAG_DELETED } else { 0 });
            out.extend_from_slice(&meta.rev.hash.to_le_bytes());
            out.extend_from_slice(canonical_body);
        },
    )
}

/// Decodes and verifies a document record: checksum, layout, JSON, and that the
/// revision hash matches the content (which also catches engine bugs).
pub fn decode_document(id: &str, bytes: &[u8]) -> Result<Document, StorageError> {
    let (meta, body_bytes) = decode_document_meta(id, bytes)?;
    decode_body(id, meta, body_bytes)
}

/// The document of `meta` and the body JSON that [`decode_document_meta`]
/// returned with it.
pub fn decode_body(id: &str, meta: Meta, body_bytes: &[u8]) -> Result<Document, StorageError> {
    let body: Body = serde_json::from_slice(body_bytes)
        .map_err(|e| StorageError::Corrupt(format!("document {id:?}: body is not a JSON object: {e}")))?;
    Ok(Document {
        id: id.to_string(),
        meta,
        body,
    })
}

/// A document record read and verified (checksum, revision hash), its body
/// not decoded: its metadata and the body's canonical JSON, shared by whoever
/// holds it rather than copied. Decoding a large document of many small
/// values takes milliseconds; replacing it, refusing a write over it or
/// copying it into an answer (`doc::write_stored_json`) needs none of that.
///
/// Its methods that take the document's id take the one it was read with.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredDoc {
    meta: Meta,
    /// The whole record; its body starts at `body_at`.
    record: std::sync::Arc<Vec<u8>>,
    body_at: usize,
}

impl StoredDoc {
    /// Document `id`'s record `record`, verified.
    pub fn read(id: &str, record: Vec<u8>) -> Result<StoredDoc, StorageError> {
        let (meta, body) = decode_document_meta(id, &record)?;
        let body_at = record.len() - body.len();
        Ok(StoredDoc {
            meta,
            record: std::sync::Arc::new(record),
            body_at,
        })
    }

    /// Its metadata.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Its body's canonical JSON (an object's, unless the record was
    /// forged: `doc::is_object_json` tells).
    pub fn body_json(&self) -> &[u8] {
        &self.record[self.body_at..]
    }

    /// The document, decoded.
    pub fn decode(&self, id: &str) -> Result<Document, StorageError> {
        decode_body(id, self.meta, self.body_json())
    }

    /// [`body_json`](Self::body_json), checked to have an object's braces
    /// (`doc::is_object_json`): a forged record's other bytes are refused as
    /// corrupt, as a decoding read would refuse them.
    pub fn object_json(&self, id: &str) -> Result<&[u8], StorageError> {
        let json = self.body_json();
        if !crate::doc::is_object_json(json) {
            return Err(StorageError::Corrupt(format!(
                "document {id:?}: body is not a JSON object"
            )));
        }
        Ok(json)
    }

    /// Appends the document's JSON with its metadata, the bytes
    /// `Document::write_json` writes of it decoded, copied from the body's
    /// (`doc::write_stored_json`; refused as [`object_json`](Self::object_json)
    /// refuses).
    pub fn write_json(&self, id: &str, out: &mut Vec<u8>) -> Result<(), StorageError> {
        crate::doc::write_stored_json(id, &self.meta, self.object_json(id)?, out);
        Ok(())
    }
}

impl std::fmt::Debug for StoredDoc {
    /// Its metadata and the length of its body, not the bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredDoc")
            .field("meta", &self.meta)
            .field("body_bytes", &self.body_json().len())
            .finish()
    }
}

/// [`decode_document`] but for the body's JSON, which is returned as its
/// bytes, unparsed: for a reader of the metadata alone (the tombstone purge).
pub fn decode_document_meta<'a>(id: &str, bytes: &'a [u8]) -> Result<(Meta, &'a [u8]), StorageError> {
    let payload = open(bytes, RecordKind::Document)?;
    if payload.len() < DOC_FIXED_BYTES {
        return Err(StorageError::Corrupt("document record too short".into()));
    }
    let u64_at = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&payload[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&payload[25..41]);
    let flags = payload[24];
    let deleted = flags & FLAG_DELETED != 0;
    let meta = Meta {
        rev: Rev {
            version: u64_at(0),
            hash: u128::from_le_bytes(hash),
        },
        seq: u64_at(8),
        ts_ms: u64_at(16),
        deleted,
    };
    let body_bytes = &payload[DOC_FIXED_BYTES..];
    if flags & !FLAG_DELETED != 0 || meta.rev.version == 0 {
        return Err(StorageError::Corrupt(format!(
            "document {id:?}: bad flags or version"
        )));
    }
    if content_hash(body_bytes, deleted) != meta.rev.hash {
        return Err(StorageError::Corrupt(format!(
            "document {id:?}: revision hash does not match content"
        )));
    }
    Ok((meta, body_bytes))
}

/// Encodes a `u64` meta value.
pub fn encode_counter(value: u64) -> Vec<u8> {
    seal(RecordKind::Counter, 8, |out| {
        out.extend_from_slice(&value.to_le_bytes())
    })
}

/// Decodes and verifies a `u64` meta value.
pub fn decode_counter(bytes: &[u8]) -> Result<u64, StorageError> {
    let payload = open(bytes, RecordKind::Counter)?;
    let word: [u8; 8] = payload
        .try_into()
        .map_err(|_| StorageError::Corrupt("counter record is not 8 bytes".into()))?;
    Ok(u64::from_le_bytes(word))
}

/// A stored idempotency record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// Fingerprint of the request the key was first used with.
    pub fingerprint: u128,
    /// When the key may be forgotten, ms since the epoch.
    pub expires_ms: u64,
    /// The first answer, as stored.
    pub answer: Vec<u8>,
}

/// Encodes an idempotency record.
pub fn encode_idempotency(record: &IdempotencyRecord) -> Vec<u8> {
    seal(RecordKind::Idempotency, 24 + record.answer.len(), |out| {
        out.extend_from_slice(&record.fingerprint.to_le_bytes());
        out.extend_from_slice(&record.expires_ms.to_le_bytes());
        out.extend_from_slice(&record.answer);
    })
}

/// Decodes and verifies an idempotency record.
pub fn decode_idempotency(bytes: &[u8]) -> Result<IdempotencyRecord, StorageError> {
    let payload = open(bytes, RecordKind::Idempotency)?;
    if payload.len() < 24 {
        return Err(StorageError::Corrupt("idempotency record too short".into()));
    }
    let mut fingerprint = [0u8; 16];
    fingerprint.copy_from_slice(&payload[..16]);
    let mut expires = [0u8; 8];
    expires.copy_from_slice(&payload[16..24]);
    Ok(IdempotencyRecord {
        fingerprint: u128::from_le_bytes(fingerprint),
        expires_ms: u64::from_le_bytes(expires),
        answer: payload[24..].to_vec(),
    })
}

/// Encodes a JSON value.
pub fn encode_json(value: &serde_json::Value) -> Vec<u8> {
    let text = serde_json::to_vec(value).unwrap_or_default();
    seal(RecordKind::Json, text.len(), |out| out.extend_from_slice(&text))
}

/// Decodes and verifies a JSON value.
pub fn decode_json(bytes: &[u8]) -> Result<serde_json::Value, StorageError> {
    let payload = open(bytes, RecordKind::Json)?;
    serde_json::from_slice(payload).map_err(|e| StorageError::Corrupt(format!("JSON record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Meta, Vec<u8>) {
        let body = br#"{"a":1}"#.to_vec();
        let meta = Meta {
            rev: Rev::compute(7, &body, false),
            seq: 42,
            ts_ms: 1_700_000_000_000,
            deleted: false,
        };
        (meta, body)
    }

    #[test]
    fn document_round_trip() {
        let (meta, body) = sample();
        let doc = decode_document("x", &encode_document(&meta, &body)).unwrap();
        assert_eq!(doc.meta, meta);
        assert_eq!(doc.body["a"], 1);
    }

    #[test]
    fn every_flipped_bit_and_truncation_is_detected() {
        let (meta, body) = sample();
        let bytes = encode_document(&meta, &body);
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    decode_document("x", &bad).is_err(),
                    "flip of byte {i} bit {bit} not detected"
                );
            }
        }
        for len in 0..bytes.len() {
            assert!(
                decode_document("x", &bytes[..len]).is_err(),
                "truncation to {len} not detected"
            );
        }
    }

    #[test]
    fn idempotency_and_json_round_trip() {
        let record = IdempotencyRecord {
            fingerprint: 7 << 100,
            expires_ms: 9,
            answer: b"{}".to_vec(),
        };
        assert_eq!(decode_idempotency(&encode_idempotency(&record)).unwrap(), record);
        let value = serde_json::json!({"a": [1, 2]});
        assert_eq!(decode_json(&encode_json(&value)).unwrap(), value);
        assert!(decode_json(&encode_idempotency(&record)).is_err());
    }

    #[test]
    fn counters_round_trip_and_kinds_do_not_mix() {
        assert_eq!(decode_counter(&encode_counter(u64::MAX)).unwrap(), u64::MAX);
        let (meta, body) = sample();
        assert!(decode_counter(&encode_document(&meta, &body)).is_err());
        assert!(decode_document("x", &encode_counter(1)).is_err());
    }
}
