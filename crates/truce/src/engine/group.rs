//! One group commit in the making: the documents it touched (read once, updated
//! in place as requests are evaluated in order), and every other key it writes —
//! index entries, idempotency records, definitions. The change-log entries of
//! a document are made when the group becomes a storage batch, once for its
//! last write in the group, however many requests wrote it.
//!
//! Hot path: `current` and `apply` run for every write.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use crate::doc::{Document, Meta};
use crate::error::Result;
use crate::index::keys::prefix_end;
use crate::index::{IndexDef, IndexState};
use crate::record::{self, StoredDoc};
use crate::storage::{Direction, Space, Storage, StorageRead, WriteBatch};

use super::evaluate::{self, NewState};
use super::tx::changes_key;

/// A document touched by the group.
struct Slot {
    /// Shared with the answers of the group's writes of it.
    current: Held,
    /// Canonical body bytes of `current` if the group wrote it (shared
    /// with the write's answer).
    written: Option<Arc<Vec<u8>>>,
    /// The sequence number of the stored state (tombstones included) the group
    /// read: its change-log entries give way to the group's last write.
    stored_seq: Option<u64>,
    /// Bytes of the stored record the group read (0 when a caller's read
    /// was used instead).
    stored_bytes: usize,
    /// Bytes of the collection name at the start of the document key (the
    /// key is `collection 0x00 id`).
    collection_len: usize,
}

/// A document's state as a group (or a single write's caller, `Seen`)
/// holds it.
pub enum Held {
    /// Decoded (`None`: absent).
    Doc(Option<Arc<Document>>),
    /// Read from storage and verified (checksum, revision hash), its body
    /// not yet decoded: a put or a delete needs only the metadata and the
    /// body's bytes (`Met`), and decoding a large document of many small
    /// values took the committer tens of milliseconds. Decoded the first
    /// time anything asks for the document. Shared with a conflict that
    /// carries it (`Conflict::stored`).
    Record(StoredDoc),
}

impl Held {
    /// Document `key`'s stored state, read and verified but not decoded,
    /// with the bytes of its record.
    pub fn read(storage: &dyn StorageRead, key: &[u8], id: &str) -> Result<(Held, usize)> {
        Ok(match storage.get(Space::Documents, key)? {
            None => (Held::Doc(None), 0),
            Some(record) => {
                let bytes = record.len();
                (Held::Record(StoredDoc::read(id, record)?), bytes)
            }
        })
    }

    /// The metadata of the state, without decoding it.
    pub fn meta(&self) -> Option<&Meta> {
        match self {
            Held::Doc(doc) => doc.as_deref().map(|d| &d.meta),
            Held::Record(stored) => Some(stored.meta()),
        }
    }

    /// The state, decoded, as a document of its own.
    pub fn into_doc(self, id: &str) -> Result<Option<Document>> {
        Ok(match self {
            Held::Doc(doc) => doc.map(Arc::unwrap_or_clone),
            Held::Record(stored) => Some(stored.decode(id)?),
        })
    }

    /// The state, decoding it now if it was not yet.
    pub fn doc(&mut self, id: &str) -> Result<Option<&Arc<Document>>> {
        if let Held::Record(stored) = self {
            *self = Held::Doc(Some(Arc::new(stored.decode(id)?)));
        }
        match self {
            Held::Doc(doc) => Ok(doc.as_ref()),
            Held::Record(_) => unreachable!("decoded just above"),
        }
    }
}

/// A document's stored state met by [`Group::meet_lazily`] (or by a single
/// write's caller, [`Met::new`]): its metadata at once, and its record
/// ([`stored`](evaluate::Current::stored)), from which
/// [`evaluate::decide`] refuses a precondition and tells a put of the same
/// content without decoding it. Only a patch decodes it (a single write's
/// guarded update, `settle_from_durable`). A state an earlier write of the
/// group decoded is used as it is.
pub struct Met<'s> {
    held: &'s mut Held,
    id: &'s str,
}

impl<'s> Met<'s> {
    /// `held`, document `id`'s state, as a write meets it outside a group
    /// (`settle_from_durable`).
    pub fn new(held: &'s mut Held, id: &'s str) -> Met<'s> {
        Met { held, id }
    }
}

impl evaluate::Current for Met<'_> {
    fn meta(&self) -> Option<&Meta> {
        self.held.meta()
    }

    fn doc(&mut self) -> Result<Option<&Arc<Document>>> {
        self.held.doc(self.id)
    }

    fn stored(&self) -> Option<(&str, &StoredDoc)> {
        match &*self.held {
            Held::Record(stored) => Some((self.id, stored)),
            Held::Doc(_) => None,
        }
    }
}

/// The state of one group commit.
pub struct Group<'a> {
    storage: &'a dyn Storage,
    slots: HashMap<Vec<u8>, Slot>,
    others: BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>>,
    /// The last sequence number assigned (the previous group's last at the start).
    pub seq: u64,
    /// The group's commit time.
    pub ts_ms: u64,
    /// Bytes written so far: document records, and every other entry
    /// ([`put`](Self::put): index entries, counters, an idempotency record,
    /// which holds a transaction's whole answer; an entry put twice in one
    /// group counts twice, an overcount that only closes the group sooner).
    pub bytes: usize,
    /// Bytes of the documents its requests' ops met, each op's own (a group
    /// of requests on one large document evaluates it once for each).
    pub met: usize,
    /// Steps its requests' filters took (`update::Work`).
    pub filter_steps: u64,
}

impl<'a> Group<'a> {
    /// A new group after commit `last_seq`, at time `ts_ms`.
    pub fn new(storage: &'a dyn Storage, last_seq: u64, ts_ms: u64) -> Group<'a> {
        Group {
            storage,
            slots: HashMap::new(),
            others: BTreeMap::new(),
            seq: last_seq,
            ts_ms,
            bytes: 0,
            met: 0,
            filter_steps: 0,
        }
    }

    /// The current state of document `key` (tombstones included), read from storage
    /// the first time the group touches it.
    pub fn current(&mut self, key: &[u8], id: &str) -> Result<Option<&Arc<Document>>> {
        Self::load(&mut self.slots, self.storage, key, id, None)?
            .current
            .doc(id)
    }

    /// [`current`](Self::current) for an op of a request, counting the
    /// bytes of the state it answers in [`met`](Self::met). With `seen` (the
    /// stored state as its caller read it, unchanged since), the group's own
    /// write if it has one, else that, without reading storage (and with no
    /// size: such a write writes, and its new state counts in `bytes`).
    pub fn meet(&mut self, key: &[u8], id: &str, seen: Option<Held>) -> Result<Option<&Arc<Document>>> {
        let slot = Self::load(&mut self.slots, self.storage, key, id, seen)?;
        self.met += slot.written.as_ref().map_or(slot.stored_bytes, |c| c.len());
        slot.current.doc(id)
    }

    /// [`meet`](Self::meet), but the document is not decoded (`Held::Record`,
    /// [`Met`]). Only for a put or a delete whose new state [`Group::apply`]
    /// will not compare with the old one (no indexes in its collection); the
    /// committer also leaves out collections with a TTL or counters, which
    /// read the old body anyway.
    pub fn meet_lazily<'s>(&'s mut self, key: &[u8], id: &'s str, seen: Option<Held>) -> Result<Met<'s>> {
        let slot = Self::load(&mut self.slots, self.storage, key, id, seen)?;
        self.met += slot.written.as_ref().map_or(slot.stored_bytes, |c| c.len());
        Ok(Met {
            held: &mut slot.current,
            id,
        })
    }

    /// The canonical body bytes of the group's last write of document
    /// `key`, if it wrote it.
    pub fn written_bytes(&self, key: &[u8]) -> Option<Arc<Vec<u8>>> {
        self.slots.get(key).and_then(|s| s.written.clone())
    }

    /// The bytes of document `key` as [`current_bytes`](Self::current_bytes)
    /// counts them, without decoding it.
    pub fn stored_bytes_lazily(&mut self, key: &[u8], id: &str) -> Result<usize> {
        Self::load(&mut self.slots, self.storage, key, id, None)?;
        Ok(self.current_bytes(key))
    }

    /// The slot of document `key` in `slots`, made the first time the group
    /// touches it from `seen` (the stored state as a caller read it) if
    /// given, else from storage, undecoded ([`Held::read`]).
    fn load<'s>(
        slots: &'s mut HashMap<Vec<u8>, Slot>,
        storage: &dyn Storage,
        key: &[u8],
        id: &str,
        seen: Option<Held>,
    ) -> Result<&'s mut Slot> {
        if !slots.contains_key(key) {
            let (held, stored_bytes) = match seen {
                Some(held) => (held, 0),
                None => Held::read(storage, key, id)?,
            };
            return Ok(slots.entry(key.to_vec()).or_insert(Slot {
                stored_seq: held.meta().map(|m| m.seq),
                current: held,
                written: None,
                stored_bytes,
                collection_len: 0,
            }));
        }
        Ok(slots.get_mut(key).expect("checked just above"))
    }

    /// Bytes of the state of document `key` that [`current`](Self::current)
    /// answers: the group's own write of it, else the stored record read.
    pub fn current_bytes(&self, key: &[u8]) -> usize {
        self.slots
            .get(key)
            .map_or(0, |s| s.written.as_ref().map_or(s.stored_bytes, |c| c.len()))
    }

    /// A non-document key as the group sees it: its own writes, else storage.
    pub fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.others.get(&(space, key.to_vec())) {
            Some(value) => Ok(value.clone()),
            None => Ok(self.storage.get(space, key)?),
        }
    }

    /// Writes (or with `None` removes) a non-document key.
    pub fn put(&mut self, space: Space, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.bytes += key.len() + value.as_ref().map_or(0, Vec::len);
        self.others.insert((space, key), value);
    }

    /// The id of a live entry of a unique index with `prefix` (index prefix and
    /// values) held by a document other than `id`, as the group sees the index,
    /// passing over the holders `gone` says are gone (past their TTL).
    pub fn unique_holder(
        &mut self,
        collection: &str,
        prefix: &[u8],
        id: &str,
        gone: &dyn Fn(&Document) -> bool,
    ) -> Result<Option<String>> {
        for holder in self.unique_holders(prefix, id)? {
            match self.current(&super::tx::doc_key(collection, &holder), &holder)? {
                Some(doc) if gone(doc) => continue,
                _ => return Ok(Some(holder)),
            }
        }
        Ok(None)
    }

    /// Every holder [`Self::unique_holder`] looks through, in index order.
    fn unique_holders(&self, prefix: &[u8], id: &str) -> Result<Vec<String>> {
        let mut holders = Vec::new();
        let end = prefix_end(prefix);
        let end_bound = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let own = (Space::Index, prefix.to_vec());
        let own_end = end.clone().map(|e| (Space::Index, e));
        let group_range = match &own_end {
            Some(e) => self.others.range(own.clone()..e.clone()),
            None => self.others.range(own.clone()..),
        };
        for ((space, _), value) in group_range {
            if let (Space::Index, Some(holder)) = (space, value) {
                let holder = String::from_utf8_lossy(holder).into_owned();
                if holder != id {
                    holders.push(holder);
                }
            }
        }
        let mut start = Bound::Included(prefix.to_vec());
        loop {
            let start_ref = start.as_ref().map(Vec::as_slice);
            let entries = self
                .storage
                .scan(Space::Index, start_ref, end_bound, Direction::Forward, 16)?;
            let Some((last, _)) = entries.last() else {
                return Ok(holders);
            };
            start = Bound::Excluded(last.clone());
            for (key, holder) in &entries {
                let removed = self
                    .others
                    .get(&(Space::Index, key.clone()))
                    .is_some_and(Option::is_none);
                let holder = String::from_utf8_lossy(holder);
                if !removed && holder != id && !holders.iter().any(|h| *h == holder) {
                    holders.push(holder.into_owned());
                }
            }
            if entries.len() < 16 {
                return Ok(holders);
            }
        }
    }

    /// Stores a new state of document `key` of `collection`, maintaining
    /// `indexes`; pushes every key whose change a transaction could have read
    /// onto `written`. The change-log entries are made once per document, by
    /// [`Group::into_batch`], for the group's last write of it.
    pub fn apply(
        &mut self,
        collection: &str,
        key: &[u8],
        state: NewState,
        indexes: &[IndexDef],
        written: &mut Vec<(Space, Vec<u8>)>,
    ) {
        if !indexes.is_empty() {
            let id = &state.doc.id;
            // Decoded: a written document was met first, and only
            // `meet_lazily` leaves it undecoded, which the committer does
            // not use where there are indexes (nor `stored_bytes_lazily`,
            // which only measures). A record that verified but does not
            // decode is corrupt storage; the committer's unwinding marks
            // the database failed.
            let previous = match self.slots.get_mut(key) {
                Some(slot) => slot
                    .current
                    .doc(id)
                    .unwrap_or_else(|e| panic!("an index's previous state: {e}")),
                None => None,
            };
            let old_live = previous.filter(|d| !d.is_deleted()).map(|d| &d.body);
            let new_live = (!state.doc.is_deleted()).then_some(&state.doc.body);
            let mut index_writes = Vec::new();
            // A failed index is neither read nor held to the values' limit
            // (`INDEX_VALUES_BYTES_MAX`): its entries wait for its drop,
            // and a document's written now could pass the storage's
            // largest key (an entry over 65,535 bytes panicked the
            // committer).
            for def in indexes.iter().filter(|d| d.state != IndexState::Failed) {
                let old_entry = old_live.map(|body| def.entry_key(id, body));
                let new_entry = new_live.map(|body| def.entry_key(id, body));
                if old_entry != new_entry {
                    index_writes.extend(old_entry.map(|old| (old, None)));
                    index_writes.extend(new_entry.map(|new| (new, Some(id.as_bytes().to_vec()))));
                } else if let Some(entry) = new_entry.filter(|_| def.state == IndexState::Ready) {
                    // The entry stays, but what it points to changed: a
                    // transaction that read the index over it (and was
                    // given the document, or filtered it out) read the old
                    // state, as surely as a read of the document itself.
                    // Only a ready index is read (a query of another is
                    // refused), so only its entries are logged: each costs
                    // the recent-writes log's room, which bounds how old a
                    // snapshot may be validated.
                    written.push((Space::Index, entry));
                }
            }
            for (entry, value) in index_writes {
                written.push((Space::Index, entry.clone()));
                self.put(Space::Index, entry, value);
            }
        }
        written.push((Space::Documents, key.to_vec()));
        self.bytes += key.len() + state.canonical.len();
        // The group's own map copies the key only for a document new to it.
        match self.slots.get_mut(key) {
            Some(slot) => {
                slot.current = Held::Doc(Some(state.doc));
                slot.written = Some(state.canonical);
                slot.collection_len = collection.len();
            }
            None => {
                self.slots.insert(
                    key.to_vec(),
                    Slot {
                        current: Held::Doc(Some(state.doc)),
                        written: Some(state.canonical),
                        stored_seq: None,
                        stored_bytes: 0,
                        collection_len: collection.len(),
                    },
                );
            }
        }
    }

    /// Whether the group has anything to store.
    pub fn is_empty(&self) -> bool {
        self.others.is_empty() && self.slots.values().all(|s| s.written.is_none())
    }

    /// The collections whose change feeds the group writes to, each once.
    pub fn collections(&self) -> Vec<Vec<u8>> {
        let mut seen: foldhash::HashSet<&[u8]> = Default::default();
        for (key, slot) in &self.slots {
            if slot.written.is_some() {
                seen.insert(&key[..slot.collection_len]);
            }
        }
        seen.into_iter().map(<[u8]>::to_vec).collect()
    }

    /// The storage batch of everything the group wrote.
    pub fn into_batch(self) -> WriteBatch {
        let mut batch = WriteBatch::new();
        for (key, slot) in self.slots {
            if let (Some(canonical), Held::Doc(Some(doc))) = (&slot.written, &slot.current) {
                let (collection, id) = (&key[..slot.collection_len], &key[slot.collection_len + 1..]);
                if let Some(old_seq) = slot.stored_seq {
                    batch.remove(Space::Changes, changes_key(collection, old_seq, id));
                }
                batch.put(
                    Space::Changes,
                    changes_key(collection, doc.meta.seq, id),
                    Vec::new(),
                );
                batch.put(
                    Space::Documents,
                    key,
                    record::encode_document(&doc.meta, canonical),
                );
            }
        }
        for ((space, key), value) in self.others {
            match value {
                Some(value) => batch.put(space, key, value),
                None => batch.remove(space, key),
            }
        }
        batch
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use crate::CollectionConfig;
    use crate::storage::{MemoryStorage, Space, Storage, WriteBatch};
    use crate::{Db, Durability, Error, Expect, IndexSpec, Options};

    /// Stores, as document `id` of `collection`, a record of `body` whose
    /// checksum and revision hash hold, whatever `body` is: only a read that
    /// decodes the body can tell a body that is not an object's JSON.
    pub(crate) fn forge_body(storage: &MemoryStorage, collection: &str, id: &str, body: &[u8]) {
        let meta = crate::Meta {
            rev: crate::Rev::compute(2, body, false),
            seq: 1,
            ts_ms: 0,
            deleted: false,
        };
        let mut batch = WriteBatch::default();
        batch.put(
            Space::Documents,
            crate::engine::tx::doc_key(collection, id),
            crate::record::encode_document(&meta, body),
        );
        storage.apply(batch, Durability::Immediate).unwrap();
    }

    /// Every entry a group stores counts in its bytes, not only document
    /// records: an idempotency record holds a transaction's whole answer,
    /// documents included, and the group's bound
    /// (`COMMIT_BATCH_BYTES_MAX`) and the disk's reserve must see it.
    #[test]
    fn every_entry_a_group_stores_counts_in_its_bytes() {
        let storage = MemoryStorage::new();
        let mut group = super::Group::new(&storage, 0, 0);
        group.put(Space::Idempotency, b"key".to_vec(), Some(vec![0; 1000]));
        group.put(Space::Index, b"entry".to_vec(), None);
        assert_eq!(group.bytes, 3 + 1000 + 5);
    }

    fn forge(storage: &MemoryStorage, collection: &str, id: &str) {
        forge_body(storage, collection, id, b"{not json");
    }

    fn corrupt<T: std::fmt::Debug>(result: crate::Result<T>) -> bool {
        matches!(result, Err(Error::Storage(_)))
    }

    /// A put or a delete never decodes the state it replaces
    /// (`Held::Record`), even to answer a conflict (but checks that its body
    /// has an object's braces); one whose collection has indexes or a TTL,
    /// or a patch, does.
    #[test]
    fn a_put_or_a_delete_replaces_a_state_it_never_decodes() {
        let storage = Arc::new(MemoryStorage::new());
        let db = Db::open_with_storage(storage.clone(), Options::default()).unwrap();
        let plain = db.collection("plain").unwrap();

        forge(&storage, "plain", "p");
        let written = plain.put("p", json!({"n": 1}), Expect::Any).unwrap().unwrap();
        assert_eq!(written.doc.version(), 3);
        assert_eq!(plain.get("p").unwrap().unwrap().body["n"], 1);

        forge(&storage, "plain", "d");
        let deleted = plain.delete("d", Expect::Any).unwrap().unwrap();
        assert!(deleted.doc.is_deleted());
        assert_eq!(deleted.doc.version(), 3);

        // With a precondition that holds: the caller's own read, before the
        // queue (`settle_from_durable`), is undecoded too, and so is what it
        // hands the committer (`Seen`).
        forge(&storage, "plain", "v");
        let written = plain
            .put("v", json!({"n": 2}), Expect::Version(2))
            .unwrap()
            .unwrap();
        assert_eq!(written.doc.version(), 3);
        forge(&storage, "plain", "dv");
        assert!(
            plain
                .delete("dv", Expect::Version(2))
                .unwrap()
                .unwrap()
                .doc
                .is_deleted()
        );

        // A conflict carries the record undecoded, once it has an object's
        // braces (`Conflict::stored`): without them it is refused, by the
        // caller's read and by the committer's (a batch is not tried
        // before the queue); with them it is carried, as a `GET` copies it,
        // and refused when decoded.
        forge_body(&storage, "plain", "braced", b"{not json}");
        let carried = plain
            .put("braced", json!({"n": 1}), Expect::Version(1))
            .unwrap()
            .unwrap_err();
        assert_eq!(carried.current_meta().map(|(_, m)| m.version()), Some(2));
        assert!(corrupt(carried.current()));
        forge(&storage, "plain", "absent");
        assert!(corrupt(plain.put("absent", json!({"n": 1}), Expect::Absent)));
        forge(&storage, "plain", "stale");
        assert!(corrupt(plain.put("stale", json!({"n": 1}), Expect::Version(1))));
        let put = |id: &str, expect| crate::TxOp::Put {
            collection: "plain".into(),
            id: id.into(),
            body: json!({"n": 1}),
            expect,
        };
        for expect in [Expect::Absent, Expect::Version(1)] {
            assert!(corrupt(db.batch(vec![put("stale", expect)], None)));
        }
        forge(&storage, "plain", "queued");
        assert!(
            db.batch(vec![put("queued", Expect::Version(2))], None)
                .unwrap()
                .is_ok()
        );
        // A patch works on the body.
        forge(&storage, "plain", "patched");
        assert!(corrupt(plain.patch(
            "patched",
            crate::Update::parse(&json!({"$set": {"n": 1}})).unwrap(),
            Expect::Any
        )));

        let indexed = db.collection("indexed").unwrap();
        indexed
            .create_index(
                "by_n",
                IndexSpec {
                    fields: vec!["n".into()],
                    unique: false,
                },
            )
            .unwrap();
        forge(&storage, "indexed", "i");
        assert!(corrupt(indexed.put("i", json!({"n": 1}), Expect::Any)));

        let expiring = db.collection("expiring").unwrap();
        expiring
            .set_config(CollectionConfig::from_json(&json!({"ttl": {"field": "at", "seconds": 60}})).unwrap())
            .unwrap();
        forge(&storage, "expiring", "e");
        assert!(corrupt(expiring.put("e", json!({"n": 1}), Expect::Any)));
    }

    /// A document met undecoded is the stored state to the rest of its
    /// group: its metadata at once, its body decoded when asked (and a
    /// record that does not decode refused then).
    #[test]
    fn a_document_met_undecoded_is_the_stored_state_to_the_rest_of_its_group() {
        use crate::engine::evaluate::Current;
        let storage = Arc::new(MemoryStorage::new());
        let db = Db::open_with_storage(storage.clone(), Options::default()).unwrap();
        let c = db.collection("c").unwrap();
        let stored = c.put("d", json!({"n": 1}), Expect::Absent).unwrap().unwrap().doc;
        forge(&storage, "c", "forged");
        drop(db);

        let key = crate::engine::tx::doc_key("c", "d");
        let mut group = super::Group::new(&*storage, stored.meta.seq, 0);
        let met = group.meet_lazily(&key, "d", None).unwrap();
        assert_eq!(met.meta(), Some(&stored.meta));
        assert!(matches!(met.held, super::Held::Record(_)));
        assert_eq!(group.met, group.current_bytes(&key));
        assert!(group.met > 0);
        // Met again: still undecoded, and counted again.
        assert!(matches!(
            group.meet_lazily(&key, "d", None).unwrap().held,
            super::Held::Record(_)
        ));
        assert_eq!(group.met, 2 * group.current_bytes(&key));
        let current = group.current(&key, "d").unwrap().unwrap();
        assert_eq!(current.body, stored.body);
        assert_eq!(current.meta, stored.meta);
        assert!(matches!(group.slots[&key].current, super::Held::Doc(Some(_))));
        // Met again, decoded before: used as it is, and counted by its
        // stored bytes as the first time.
        let mut met = group.meet_lazily(&key, "d", None).unwrap();
        assert_eq!(met.doc().unwrap().map(|d| d.meta), Some(stored.meta));
        assert_eq!(group.met, 3 * group.current_bytes(&key));

        let forged = crate::engine::tx::doc_key("c", "forged");
        assert!(
            group
                .meet_lazily(&forged, "forged", None)
                .unwrap()
                .meta()
                .is_some()
        );
        assert!(corrupt(group.current(&forged, "forged")));

        // Absent: nothing to decode.
        let absent = crate::engine::tx::doc_key("c", "absent");
        let mut met = group.meet_lazily(&absent, "absent", None).unwrap();
        assert!(met.meta().is_none());
        assert!(met.doc().unwrap().is_none());
    }

    /// A put of the stored content over a document met undecoded is a
    /// no-op found from the stored bytes: nothing is decoded, and the answer
    /// is the put's own body and bytes with the stored metadata. Other
    /// content writes, decoding nothing either.
    #[test]
    fn a_put_of_the_stored_content_met_undecoded_decodes_nothing() {
        use crate::engine::evaluate::{self, CommitClock, WriteOp};
        let storage = Arc::new(MemoryStorage::new());
        let db = Db::open_with_storage(storage.clone(), Options::default()).unwrap();
        let c = db.collection("c").unwrap();
        let body = json!({"n": 1, "s": ["x", {"y": null}]});
        let stored = c.put("d", body.clone(), Expect::Absent).unwrap().unwrap().doc;
        // Through the database: settled from durable state (a precondition)
        // and in the committer (none), each answering with its own bytes.
        for expect in [Expect::Version(1), Expect::Any] {
            let same = c.put("d", body.clone(), expect).unwrap().unwrap();
            assert_eq!((same.effect, &*same.doc), (crate::Effect::NoOp, &*stored));
            assert!(
                same.canonical.is_some(),
                "{expect:?}: found from the stored bytes"
            );
        }
        drop(db);

        let key = crate::engine::tx::doc_key("c", "d");
        let put = |value: serde_json::Value| {
            let body = crate::doc::body_from_value(value).unwrap();
            let canonical = crate::doc::canonical_bytes(&body);
            WriteOp::Put { body, canonical }
        };
        let clock = CommitClock {
            seq: stored.meta.seq + 1,
            ts_ms: 0,
        };
        let mut group = super::Group::new(&*storage, stored.meta.seq, 0);
        for (value, effect) in [
            (body, crate::Effect::NoOp),
            (json!({"n": 2}), crate::Effect::Updated),
        ] {
            let mut op = put(value);
            let mut met = group.meet_lazily(&key, "d", None).unwrap();
            let work = &mut crate::update::Work::new();
            let (answer, state) =
                evaluate::evaluate("d", &mut op, Expect::Any, &mut met, &clock, work).unwrap();
            let written = answer.unwrap();
            assert_eq!(written.effect, effect);
            assert!(matches!(met.held, super::Held::Record(_)), "not decoded");
            if effect == crate::Effect::NoOp {
                assert!(state.is_none());
                assert_eq!(*written.doc, *stored);
                let bytes = crate::doc::canonical_bytes(&stored.body);
                assert_eq!(written.canonical.as_deref(), Some(&bytes), "its own bytes");
            } else {
                assert_eq!(state.unwrap().doc.version(), 2);
            }
        }
    }
}
