//! Secondary indexes: definitions, the entries the committer maintains for each
//! document, and the key ranges queries read.
//!
//! An index entry is stored in [`Space::Index`](crate::storage::Space::Index) under
//! `collection 0x00 index 0x00 value₁ … valueₙ id`, with the id as its value. The
//! values are encoded by [`keys`] so that key order is value order.

pub mod keys;
pub mod query;

use serde_json::Value;

use crate::doc::{self, Body};
use crate::error::{Error, Result};
use crate::limits::{INDEX_FIELD_BYTES_MAX, INDEX_FIELDS_MAX, INDEXES_PER_COLLECTION_MAX};
use crate::update::Path;

/// What an index is declared as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexSpec {
    /// Dotted field paths, in key order.
    pub fields: Vec<String>,
    /// Whether two live documents may not share the same values.
    pub unique: bool,
}

impl IndexSpec {
    /// Refuses what a new declaration may not say, beyond what a stored one is
    /// checked for ([`IndexDef::new`], which definitions declared before these
    /// rules still pass when they are read back): a field listed twice, a
    /// top-level `_` field, which is server metadata that no document body
    /// holds, so such an index would hold nothing, and a field path longer
    /// than [`INDEX_FIELD_BYTES_MAX`].
    pub fn check_declared(&self) -> Result<()> {
        for (i, field) in self.fields.iter().enumerate() {
            if field.len() > INDEX_FIELD_BYTES_MAX {
                return Err(Error::LimitExceeded {
                    what: "INDEX_FIELD_BYTES_MAX",
                    limit: INDEX_FIELD_BYTES_MAX as u64,
                });
            }
            if field.starts_with('_') {
                return Err(Error::InvalidIndex(format!(
                    "field {field:?}: `_` fields are server metadata, which no index holds \
                     (documents come in id order from a query without an index)"
                )));
            }
            if self.fields[..i].contains(field) {
                return Err(Error::InvalidIndex(format!("field {field:?} is listed twice")));
            }
        }
        Ok(())
    }
}

/// Where an index is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexState {
    /// Existing documents are being added; new writes are already maintained.
    Building,
    /// Complete: queries may use it.
    Ready,
    /// Building found two documents that violate uniqueness; the index is unusable.
    Failed,
    /// Dropped: no longer maintained or read, its entries being deleted in the
    /// background. Only the committer knows such an index; its name is taken
    /// until the last entry is gone.
    Dropping,
}

impl IndexState {
    /// The stable name of the state.
    pub fn name(self) -> &'static str {
        match self {
            IndexState::Building => "building",
            IndexState::Ready => "ready",
            IndexState::Failed => "failed",
            IndexState::Dropping => "dropping",
        }
    }

    fn parse(s: &str) -> Option<IndexState> {
        match s {
            "building" => Some(IndexState::Building),
            "ready" => Some(IndexState::Ready),
            "failed" => Some(IndexState::Failed),
            "dropping" => Some(IndexState::Dropping),
            _ => None,
        }
    }
}

/// An index of one collection, as the committer and queries know it.
#[derive(Clone, Debug)]
pub struct IndexDef {
    /// The collection.
    pub collection: String,
    /// The index name (same rules as collection names).
    pub name: String,
    /// What it indexes.
    pub spec: IndexSpec,
    /// Parsed `spec.fields`.
    pub paths: Vec<Path>,
    /// Building, ready or failed.
    pub state: IndexState,
    /// Documents the backfill has walked so far, deleted ones (tombstones,
    /// which add no entry) included: its progress.
    pub backfilled: u64,
    /// Why the index failed, if it did.
    pub failure: Option<String>,
    /// The commit that declared it: which declaration of its name this is
    /// (0 for one declared before this was kept).
    pub declared_seq: u64,
    /// The commit that made it ready: a snapshot older than this does not hold
    /// all its entries (0 until it is ready, and for one made ready before
    /// this was kept).
    pub ready_seq: u64,
    /// How its keys encode objects and arrays: the format it was declared
    /// with (`V1` for one declared before formats were kept).
    pub key_format: keys::KeyFormat,
}

impl IndexDef {
    /// Validates a new index definition.
    pub fn new(collection: &str, name: &str, spec: IndexSpec) -> Result<IndexDef> {
        doc::validate_collection_name(collection)?;
        validate_name(name)?;
        if spec.fields.is_empty() || spec.fields.len() > INDEX_FIELDS_MAX {
            return Err(Error::InvalidIndex(format!(
                "an index has 1 to {INDEX_FIELDS_MAX} fields"
            )));
        }
        let paths = spec
            .fields
            .iter()
            .map(|f| {
                Path::parse_filter(f)
                    .map_err(|e| e.unless_limit(|e| Error::InvalidIndex(format!("field {f:?}: {e}"))))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(IndexDef {
            collection: collection.into(),
            name: name.into(),
            spec,
            paths,
            state: IndexState::Building,
            backfilled: 0,
            failure: None,
            declared_seq: 0,
            ready_seq: 0,
            key_format: keys::KeyFormat::CURRENT,
        })
    }

    /// The prefix every entry of this index starts with.
    pub fn prefix(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.collection.len() + self.name.len() + 2);
        key.extend_from_slice(self.collection.as_bytes());
        key.push(0);
        key.extend_from_slice(self.name.as_bytes());
        key.push(0);
        key
    }

    /// The encoded values of `body` (without the prefix and id).
    pub fn values(&self, body: &Body) -> Vec<u8> {
        let mut out = Vec::new();
        for path in &self.paths {
            keys::encode_value(&mut out, crate::update::path::get(body, path), self.key_format);
        }
        out
    }

    /// Whether every indexed field of `body` is present (uniqueness only applies then).
    pub fn all_present(&self, body: &Body) -> bool {
        self.paths
            .iter()
            .all(|p| crate::update::path::get(body, p).is_some())
    }

    /// The start of `body`'s entry key: the prefix and the values. Two
    /// documents with the same one collide in a unique index.
    pub fn values_key(&self, body: &Body) -> Vec<u8> {
        let mut key = self.prefix();
        key.extend_from_slice(&self.values(body));
        key
    }

    /// The full entry key of document `id` with `body`.
    pub fn entry_key(&self, id: &str, body: &Body) -> Vec<u8> {
        self.entry_key_of(&self.values(body), id)
    }

    /// The full entry key of document `id` whose [`Self::values`] are `values`.
    pub fn entry_key_of(&self, values: &[u8], id: &str) -> Vec<u8> {
        [&self.prefix(), values, id.as_bytes()].concat()
    }

    /// The definition as stored in the meta space.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "collection": self.collection, "name": self.name, "fields": self.spec.fields,
            "unique": self.spec.unique, "state": self.state.name(), "backfilled": self.backfilled,
            "failure": self.failure, "declared_seq": self.declared_seq, "ready_seq": self.ready_seq,
            "key_format": self.key_format.number(),
        })
    }

    /// Reads a stored definition back.
    pub fn from_json(value: &Value) -> Result<IndexDef> {
        let corrupt = || {
            Error::Storage(crate::storage::StorageError::Corrupt(
                "bad index definition".into(),
            ))
        };
        let text = |k: &str| value.get(k).and_then(Value::as_str).ok_or_else(corrupt);
        let fields = value
            .get("fields")
            .and_then(Value::as_array)
            .ok_or_else(corrupt)?
            .iter()
            .map(|f| f.as_str().map(String::from).ok_or_else(corrupt))
            .collect::<Result<Vec<_>>>()?;
        let unique = value.get("unique").and_then(Value::as_bool).ok_or_else(corrupt)?;
        let mut def = IndexDef::new(text("collection")?, text("name")?, IndexSpec { fields, unique })?;
        def.state = IndexState::parse(text("state")?).ok_or_else(corrupt)?;
        def.backfilled = value.get("backfilled").and_then(Value::as_u64).unwrap_or(0);
        def.failure = value.get("failure").and_then(Value::as_str).map(String::from);
        def.declared_seq = value.get("declared_seq").and_then(Value::as_u64).unwrap_or(0);
        def.ready_seq = value.get("ready_seq").and_then(Value::as_u64).unwrap_or(0);
        def.key_format = match value.get("key_format") {
            None => keys::KeyFormat::V1,
            Some(n) => n
                .as_u64()
                .and_then(keys::KeyFormat::from_number)
                .ok_or_else(corrupt)?,
        };
        Ok(def)
    }

    /// The meta-space key of this definition.
    pub fn meta_key(&self) -> Vec<u8> {
        meta_key(&self.collection, &self.name)
    }
}

/// Refuses an entry's values (from [`IndexDef::values`]) over
/// [`INDEX_VALUES_BYTES_MAX`](crate::limits::INDEX_VALUES_BYTES_MAX).
pub fn check_values(values: &[u8]) -> Result<()> {
    let limit = crate::limits::INDEX_VALUES_BYTES_MAX;
    if values.len() > limit {
        return Err(Error::LimitExceeded {
            what: "INDEX_VALUES_BYTES_MAX",
            limit: limit as u64,
        });
    }
    Ok(())
}

/// Checks an index name: the rules of collection names, as `invalid_index`.
pub fn validate_name(name: &str) -> Result<()> {
    doc::validate_collection_name(name).map_err(|_| {
        Error::InvalidIndex(format!(
            "index name {name:?} must match ^[A-Za-z][A-Za-z0-9_-]{{0,63}}$"
        ))
    })
}

/// The meta-space key of index `name` of `collection`.
pub fn meta_key(collection: &str, name: &str) -> Vec<u8> {
    format!("index\0{collection}\0{name}").into_bytes()
}

/// The meta-space prefix of all index definitions.
pub const META_PREFIX: &[u8] = b"index\0";

/// Checks the per-collection index count before adding one more.
pub fn check_count(existing: usize) -> Result<()> {
    if existing >= INDEXES_PER_COLLECTION_MAX {
        return Err(Error::LimitExceeded {
            what: "INDEXES_PER_COLLECTION_MAX",
            limit: INDEXES_PER_COLLECTION_MAX as u64,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(fields: &[&str]) -> IndexSpec {
        IndexSpec {
            fields: fields.iter().map(|f| f.to_string()).collect(),
            unique: false,
        }
    }

    #[test]
    fn a_declaration_names_each_body_field_once() {
        assert!(spec(&["a", "b.c", "b._d"]).check_declared().is_ok());
        for bad in [&["_id"][..], &["a", "_seq"], &["a", "b", "a"]] {
            let err = spec(bad).check_declared().unwrap_err();
            assert!(matches!(err, Error::InvalidIndex(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_declared_field_path_is_bounded() {
        let longest = "é".repeat(INDEX_FIELD_BYTES_MAX / 2);
        assert!(spec(&["a", &longest]).check_declared().is_ok());
        let longer = format!("{longest}x");
        match spec(&["a", &longer]).check_declared() {
            Err(Error::LimitExceeded { what, limit }) => {
                assert_eq!(
                    (what, limit),
                    ("INDEX_FIELD_BYTES_MAX", INDEX_FIELD_BYTES_MAX as u64)
                );
            }
            other => panic!("{other:?}"),
        }
        // Stored before the bound, such a definition still reads back.
        let stored = IndexDef::new("c", "long", spec(&[&longer])).unwrap();
        assert_eq!(IndexDef::from_json(&stored.to_json()).unwrap().spec, stored.spec);
    }

    /// A definition stored before `check_declared` existed still reads back.
    #[test]
    fn stored_definitions_read_back_under_the_old_rules() {
        let stored = IndexDef::new("c", "by_id", spec(&["_id", "_id"])).unwrap();
        let read = IndexDef::from_json(&stored.to_json()).unwrap();
        assert_eq!(read.spec, stored.spec);
    }
}
