//! Reads that see one consistent, durable state: snapshots, queries and the
//! change feed. Shared by collections and transactions.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Bound;

use crate::budget::{Budget, Holding, Taken};
use crate::doc::{Document, Meta, Rev};
use crate::error::{Error, Result};
use crate::index::query::{self, KeyRange, Order, Query, QueryPage};
use crate::index::{IndexDef, IndexState};
use crate::limits::{CHANGES_LIMIT_MAX, PAGE_BYTES_MAX, QUERY_SCAN_ENTRIES_MAX, WHOLE_PAGE_BYTES_MAX};
use crate::record::StoredDoc;
use crate::storage::{Direction, Space, StorageRead};

use super::committer::{META_LAST_SEQ, Shared, read_meta_counter};
use super::tx::{changes_key, doc_key};

/// A snapshot and the sequence number it reflects, once that sequence is durable.
pub fn durable_snapshot(shared: &Shared) -> Result<(Box<dyn StorageRead>, u64)> {
    let view = shared.storage.snapshot()?;
    // `last_seq` is written in the same batch as the documents, so the snapshot's
    // own value names exactly the commits it contains.
    let seq = read_meta_counter(&*view, META_LAST_SEQ)?;
    shared.watermark.wait_for(seq)?;
    Ok((view, seq))
}

/// The index `name` of `collection`, if it is ready for queries on a snapshot
/// of the commits up to `snapshot_seq`. A snapshot from before the index was
/// complete would miss entries, or hold those of a dropped index of the same
/// name: `index_building`.
pub fn ready_index(shared: &Shared, collection: &str, name: &str, snapshot_seq: u64) -> Result<IndexDef> {
    // A name no index can have is the caller's mistake, not a missing index.
    crate::index::validate_name(name)?;
    let catalog = shared.catalog.read().unwrap_or_else(|p| p.into_inner());
    let def = catalog
        .get(collection)
        .and_then(|list| list.iter().find(|d| d.name == name))
        .ok_or_else(|| Error::NotFound(format!("index {name} of collection {collection}")))?;
    match def.state {
        IndexState::Ready if def.ready_seq <= snapshot_seq => Ok(def.clone()),
        IndexState::Ready => Err(Error::IndexBuilding {
            name: name.into(),
            backfilled: def.backfilled,
        }),
        IndexState::Building => Err(Error::IndexBuilding {
            name: name.into(),
            backfilled: def.backfilled,
        }),
        IndexState::Failed => Err(Error::InvalidIndex(format!(
            "index {name} failed to build: {}",
            def.failure.as_deref().unwrap_or("unknown reason")
        ))),
        // The committer keeps dropped indexes out of the shared catalog.
        IndexState::Dropping => Err(Error::NotFound(format!(
            "index {name} of collection {collection}"
        ))),
    }
}

/// What a query read: the page, and the key range it consumed (for read sets).
pub struct QueryRead {
    /// The page.
    pub page: QueryPage,
    /// The space the range is in.
    pub space: Space,
    /// The part of the key space the page depends on.
    pub consumed: KeyRange,
}

/// Refuses a page of changes of no change or more than [`CHANGES_LIMIT_MAX`].
pub fn check_changes_limit(limit: usize) -> Result<()> {
    if limit == 0 || limit > CHANGES_LIMIT_MAX {
        return Err(Error::InvalidQuery(format!(
            "limit must be 1 to {CHANGES_LIMIT_MAX}"
        )));
    }
    Ok(())
}

/// Runs `q` against `view`, a snapshot of the commits up to `snapshot_seq`.
/// Without an index, reads the collection in id order.
pub fn run_query(
    shared: &Shared,
    view: &dyn StorageRead,
    snapshot_seq: u64,
    collection: &str,
    q: &Query,
) -> Result<QueryRead> {
    let def = q
        .index
        .as_deref()
        .map(|name| ready_index(shared, collection, name, snapshot_seq))
        .transpose()?;
    let limit = q.page_size()?;
    let whole = q.range(collection, def.as_ref())?;
    let range = q.remaining(&whole, def.as_ref())?;
    let space = if def.is_some() {
        Space::Index
    } else {
        Space::Documents
    };
    let direction = match q.order {
        Order::Asc => Direction::Forward,
        Order::Desc => Direction::Reverse,
    };
    let id_offset = collection.len() + 1;
    let mut docs = Vec::with_capacity(limit);
    let mut bytes = 0;
    let mut taken = Taken::new(&shared.pages);
    // The pages being read hold all their memory: this one ends early.
    let mut cut = false;
    let mut last_key = None;
    let mut cursor = range.clone();
    // Tombstones occupy document keys, so an id-order page may need several
    // scans; while they keep coming, each scan reads twice as many entries
    // as the last, up to what the page still needs or
    // `QUERY_SCAN_ENTRIES_MAX`, whichever is more (a page of one after a
    // million tombstones took a million scans).
    let mut take = limit;
    'scan: loop {
        let end = cursor.end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let entries = view.scan(space, Bound::Included(&cursor.start), end, direction, take)?;
        let exhausted = entries.len() < take;
        for (key, value) in entries {
            let (id, stored) = match &def {
                Some(_) => {
                    let id = String::from_utf8_lossy(&value).into_owned();
                    let stored = view.get(Space::Documents, &doc_key(collection, &id))?;
                    (id, stored)
                }
                None => (
                    String::from_utf8_lossy(&key[id_offset..]).into_owned(),
                    Some(value),
                ),
            };
            match direction {
                Direction::Forward => cursor.start = query::successor(&key),
                Direction::Reverse => cursor.end = Some(key.clone()),
            }
            let Some(stored) = stored else { continue };
            let Some((doc, size)) = decode_within(&id, &stored, &mut taken)? else {
                if docs.is_empty() {
                    return Err(Error::PagesOverBudget);
                }
                cut = true;
                break 'scan;
            };
            if doc.is_deleted() {
                taken.give(size);
            } else {
                docs.push(doc);
                bytes += size;
                last_key = Some(key);
                if docs.len() == limit || bytes >= PAGE_BYTES_MAX {
                    break 'scan;
                }
            }
        }
        if exhausted {
            break;
        }
        let need = limit - docs.len();
        take = need.max((take * 2).min(QUERY_SCAN_ENTRIES_MAX));
    }
    // Full: the rest of the range goes on after it (cut by `limit`, by
    // `PAGE_BYTES_MAX` or by the memory of the pages being read).
    let full = cut || docs.len() == limit || bytes >= PAGE_BYTES_MAX;
    let next = if full {
        let declared_seq = def.as_ref().map_or(0, |d| d.declared_seq);
        last_key
            .as_deref()
            .map(|key| query::encode_cursor(q.order, declared_seq, key))
    } else {
        None
    };
    // A full page depends only on the keys up to its last one; a short page on all.
    let consumed = match (&last_key, full, direction) {
        (Some(last), true, Direction::Forward) => KeyRange {
            start: range.start.clone(),
            end: Some(query::successor(last)),
        },
        (Some(last), true, Direction::Reverse) => KeyRange {
            start: last.clone(),
            end: range.end.clone(),
        },
        _ => range,
    };
    Ok(QueryRead {
        page: QueryPage {
            docs,
            next,
            memory: taken.into(),
        },
        space,
        consumed,
    })
}

/// One entry of the change feed: a document at its latest change, held
/// decoded (`Document`) or as stored (`StoredDoc`, [`PageDoc`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Change<D = Document> {
    /// The commit of the change.
    pub seq: u64,
    /// The collection.
    pub collection: String,
    /// The document id.
    pub id: String,
    /// The revision after the change.
    pub rev: Rev,
    /// Whether the change was a delete.
    pub deleted: bool,
    /// The document after the change, when asked for.
    pub doc: Option<D>,
}

/// A page of the change feed, its documents decoded (`Document`) or as
/// stored (`StoredDoc`, [`PageDoc`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ChangesPage<D = Document> {
    /// Changes in commit order; a commit is never split across pages.
    pub changes: Vec<Change<D>>,
    /// Pass this as `since` to continue exactly after this page.
    pub last_seq: u64,
    /// Where the reader's history began, to pass back with `last_seq`
    /// ([`Db::changes_from`](crate::Db::changes_from)): the snapshot of a
    /// read from 0, else what the reader said (`None`: not known).
    pub from: Option<u64>,
    /// What its documents hold of the memory of the pages being read, until
    /// the page is dropped ([`Options::page_memory_bytes`](crate::Options::page_memory_bytes)).
    pub memory: Holding,
}

/// A page of one collection's changes after a checkpoint
/// ([`Db::changes_after`](crate::Db::changes_after), or with the documents
/// as stored, [`Db::changes_after_stored`](crate::Db::changes_after_stored)).
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointPage<D = Document> {
    /// Changes in position order, documents included.
    pub changes: Vec<Change<D>>,
    /// Where the reader's history began, to pass back next time
    /// ([`ChangesPage::from`]).
    pub from: Option<u64>,
    /// As [`ChangesPage::memory`].
    pub memory: Holding,
}

/// What ends a page of the change feed: `limit` changes, or `bytes_max` of
/// their documents when they are sent (each rounded up to finish the last
/// commit).
#[derive(Clone, Copy, Debug)]
pub struct Page {
    /// Most changes.
    pub limit: usize,
    /// Bytes of documents past which the page ends (see [`Page::WHOLE`]).
    pub bytes_max: usize,
}

impl Page {
    /// The `bytes_max` of a page that must be whole (bounded by its `limit`
    /// alone): it never ends early, and is refused past
    /// [`WHOLE_PAGE_BYTES_MAX`] of documents ([`whole_page_holds`]).
    pub const WHOLE: usize = usize::MAX;
}

/// `Err(limit_exceeded)` once a page that must be whole holds more than
/// [`WHOLE_PAGE_BYTES_MAX`] bytes of documents (or of answer): checked as
/// it grows, so that it is refused before it is built.
pub fn whole_page_holds(bytes: usize) -> Result<()> {
    if bytes > WHOLE_PAGE_BYTES_MAX {
        return Err(Error::LimitExceeded {
            what: "WHOLE_PAGE_BYTES_MAX",
            limit: WHOLE_PAGE_BYTES_MAX as u64,
        });
    }
    Ok(())
}

/// Changes after `since` up to `upto` (the snapshot's sequence), of one
/// collection or of all, as many as `page` holds and `pages` has room for:
/// a page that may end early ends with the last commit that fits, one that
/// may not (or that no commit fits) is [`Error::PagesOverBudget`].
pub fn read_changes<D: PageDoc>(
    view: &dyn StorageRead,
    (collections, since, upto): (Vec<String>, u64, u64),
    page: Page,
    include_docs: bool,
    pages: &std::sync::Arc<Budget>,
) -> Result<ChangesPage<D>> {
    let Page { limit, bytes_max } = page;
    check_changes_limit(limit)?;
    if since >= upto {
        return Ok(ChangesPage {
            changes: Vec::new(),
            last_seq: since.max(upto),
            from: None,
            memory: Holding::default(),
        });
    }
    // Each collection's log is in commit order; merge them by (seq,
    // collection, id), reading each in growing chunks as the merge reaches it.
    let chunk = limit.min(CHANGES_CHUNK_MAX);
    // One collection's page is all its own: no need to start small.
    let first = if collections.len() == 1 {
        chunk
    } else {
        CHANGES_CHUNK_FIRST
    };
    let mut cursors = Vec::with_capacity(collections.len());
    let mut heads = BinaryHeap::new();
    for (at, name) in collections.into_iter().enumerate() {
        let mut cursor = FeedCursor::new(name, since, upto, first);
        if let Some((seq, id)) = cursor.next(view, chunk)? {
            heads.push(Reverse((seq, cursor.collection.clone(), id, at)));
        }
        cursors.push(cursor);
    }
    let mut changes: Vec<Change<D>> = Vec::new();
    // The documents' bytes, when they are sent.
    let mut bytes = 0;
    let mut taken = Taken::new(pages);
    // Where the last commit's changes begin in the page, and what the
    // page held before them.
    let mut commit_start = (0, 0);
    let full = |changes: &Vec<Change<D>>, bytes: usize| changes.len() >= limit || bytes >= bytes_max;
    let mut last_seq = upto;
    let mut cut = false;
    while let Some(Reverse((seq, coll, id, at))) = heads.pop() {
        let last = changes.last().map(|c| c.seq);
        if full(&changes, bytes) && last != Some(seq) {
            // A full page ends at its last commit, whole.
            cut = true;
            break;
        }
        if let Some((next_seq, next_id)) = cursors[at].next(view, chunk)? {
            heads.push(Reverse((next_seq, coll.clone(), next_id, at)));
        }
        if last != Some(seq) {
            commit_start = (changes.len(), taken.bytes());
        }
        let Some((change, size)) = change_at(view, seq, (coll, id), include_docs.then_some(&mut taken))?
        else {
            // Ends with the last commit that fitted whole, if it may.
            let (start, held) = commit_start;
            if bytes_max == Page::WHOLE || start == 0 {
                return Err(Error::PagesOverBudget);
            }
            changes.truncate(start);
            taken.give(taken.bytes() - held);
            cut = true;
            break;
        };
        if include_docs {
            bytes += size;
            if bytes_max == Page::WHOLE {
                whole_page_holds(bytes)?;
            }
        }
        changes.push(change);
    }
    if cut || (full(&changes, bytes) && heads.is_empty()) {
        last_seq = changes[changes.len() - 1].seq;
    }
    Ok(ChangesPage {
        changes,
        last_seq,
        from: None,
        memory: taken.into(),
    })
}

/// The change at a change-log position: the document's state now (which is
/// the state that change wrote: the position moves with every later write),
/// with the document itself when it is to count against `taken`, and what
/// it counts ([`PageDoc::within`]; `Ok(None)` when there is no room for it).
/// Without it, the body is not decoded.
fn change_at<D: PageDoc>(
    view: &dyn StorageRead,
    seq: u64,
    (collection, id): (String, String),
    taken: Option<&mut Taken>,
) -> Result<Option<(Change<D>, usize)>> {
    let stored = view
        .get(Space::Documents, &doc_key(&collection, &id))?
        .ok_or_else(|| corrupt("change without document"))?;
    let (meta, doc, size) = match taken {
        Some(taken) => match D::within(&id, stored, taken)? {
            Some((doc, meta, size)) => (meta, Some(doc), size),
            None => return Ok(None),
        },
        None => (
            crate::record::decode_document_meta(&id, &stored)?.0,
            None,
            stored.len(),
        ),
    };
    Ok(Some((
        Change {
            seq,
            collection,
            id,
            rev: meta.rev,
            deleted: meta.deleted,
            doc,
        },
        size,
    )))
}

/// How a page holds each document it reads ([`Change::doc`]): implemented
/// here for `Document` and `StoredDoc` only (sealed).
pub trait PageDoc: Sized + sealed::Sealed {
    /// Document `id` of its record `stored`, once `taken` has room for what
    /// it holds (`Ok(None)`, and nothing taken, when it has not), with its
    /// metadata and what it counts against a page's bytes.
    fn within(id: &str, stored: Vec<u8>, taken: &mut Taken) -> Result<Option<(Self, Meta, usize)>>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::Document {}
    impl Sealed for crate::record::StoredDoc {}
}

/// Decoded (`decode_within`).
impl PageDoc for Document {
    fn within(id: &str, stored: Vec<u8>, taken: &mut Taken) -> Result<Option<(Self, Meta, usize)>> {
        Ok(decode_within(id, &stored, taken)?.map(|(doc, size)| {
            let meta = doc.meta;
            (doc, meta, size)
        }))
    }
}

/// As stored, verified but not decoded, for a reader that copies its bytes
/// into an answer: it holds, and counts, its stored bytes.
impl PageDoc for StoredDoc {
    fn within(id: &str, stored: Vec<u8>, taken: &mut Taken) -> Result<Option<(Self, Meta, usize)>> {
        let size = stored.len();
        let doc = StoredDoc::read(id, stored)?;
        if !taken.take(size) {
            return Ok(None);
        }
        let meta = *doc.meta();
        Ok(Some((doc, meta, size)))
    }
}

/// A stored document decoded for a page, once `taken` has room for what it
/// may take decoded (`doc::decoded_size_bound` of its JSON: `Ok(None)`, and
/// nothing decoded or taken, when it has not), holding what it does take
/// (`page_bytes`), which is returned with it.
fn decode_within(id: &str, stored: &[u8], taken: &mut Taken) -> Result<Option<(Document, usize)>> {
    let (meta, body) = crate::record::decode_document_meta(id, stored)?;
    let bound = stored.len().max(crate::doc::decoded_size_bound(body));
    if !taken.take(bound) {
        return Ok(None);
    }
    let doc = crate::record::decode_body(id, meta, body)?;
    let size = page_bytes(&doc, stored.len());
    debug_assert!(size <= bound, "{size} past its bound {bound}");
    taken.give(bound.saturating_sub(size));
    Ok(Some((doc, size)))
}

/// What a document counts against a page's bytes (`PAGE_BYTES_MAX`,
/// `WHOLE_PAGE_BYTES_MAX`): its stored bytes, or what it takes in memory
/// decoded when that is more.
fn page_bytes(doc: &Document, stored: usize) -> usize {
    stored.max(crate::doc::decoded_size(&doc.body))
}

/// Change-log entries of each collection a page of every collection fetches
/// first: it reads only this many from each that it does not reach.
const CHANGES_CHUNK_FIRST: usize = 16;

/// Most change-log entries of one collection a feed read fetches at a time
/// (each fetch doubles the last, from [`CHANGES_CHUNK_FIRST`]).
const CHANGES_CHUNK_MAX: usize = 256;

/// One collection's change log from `since` (exclusive) to `upto`
/// (inclusive), read a chunk at a time.
pub(crate) struct FeedCursor {
    collection: String,
    prefix: Vec<u8>,
    start: Bound<Vec<u8>>,
    end: Vec<u8>,
    buffered: std::collections::VecDeque<(u64, String)>,
    /// How many entries the next fetch asks for.
    want: usize,
    done: bool,
}

impl FeedCursor {
    /// The changes after sequence `since`.
    fn new(collection: String, since: u64, upto: u64, first: usize) -> FeedCursor {
        let start = Bound::Included(changes_key(collection.as_bytes(), since + 1, b""));
        FeedCursor::from(collection, start, upto, first)
    }

    /// The changes from `start`, a bound on positions within the collection.
    pub(crate) fn from(collection: String, start: Bound<Vec<u8>>, upto: u64, first: usize) -> FeedCursor {
        let prefix = doc_key(&collection, "");
        FeedCursor {
            start,
            end: changes_key(collection.as_bytes(), upto + 1, b""),
            collection,
            prefix,
            buffered: Default::default(),
            want: first,
            done: false,
        }
    }

    /// The next `(seq, id)`, reading more entries (at most `chunk`) when none
    /// is left.
    pub(crate) fn next(&mut self, view: &dyn StorageRead, chunk: usize) -> Result<Option<(u64, String)>> {
        if self.buffered.is_empty() && !self.done {
            let chunk = self.want.min(chunk);
            self.want = (self.want * 2).min(CHANGES_CHUNK_MAX);
            let entries = view.scan(
                Space::Changes,
                self.start.as_ref().map(Vec::as_slice),
                Bound::Excluded(&self.end),
                Direction::Forward,
                chunk,
            )?;
            self.done = entries.len() < chunk;
            for (key, _) in &entries {
                let seq = seq_at(key, self.prefix.len())?;
                let id = String::from_utf8_lossy(&key[self.prefix.len() + 8..]).into_owned();
                self.buffered.push_back((seq, id));
            }
            if let Some((last, _)) = entries.into_iter().last() {
                self.start = Bound::Excluded(last);
            }
        }
        Ok(self.buffered.pop_front())
    }
}

/// Which collections' change logs moved after a commit, so that the feed of
/// every collection reads the logs of those alone: finding every collection's
/// log took one seek each, and at 100,000 collections a page of that feed
/// took 194 ms (release build). Kept by the committer for the commits since
/// the database was opened; a read from before that finds the collections in
/// storage. A read takes the collections that moved after its position, in
/// the order of their last commits, not every collection written since.
#[derive(Default)]
pub struct FeedHeads {
    /// The last commit when the database was opened.
    opened: u64,
    /// Each collection written since, by name: its number in `names`.
    numbers: foldhash::HashMap<String, usize>,
    /// By number: each collection's name and last commit.
    names: Vec<(String, u64)>,
    /// (last commit, number) of each collection written since.
    by_seq: std::collections::BTreeSet<(u64, usize)>,
}

impl FeedHeads {
    /// Records that the database opened after commit `seq`.
    pub fn opened(&mut self, seq: u64) {
        *self = FeedHeads {
            opened: seq,
            ..FeedHeads::default()
        };
    }

    /// Records that commit `seq` (and those since the last call) wrote to
    /// the change logs of `collections`.
    pub fn wrote(&mut self, collections: &[Vec<u8>], seq: u64) {
        for c in collections {
            let c = String::from_utf8_lossy(c);
            match self.numbers.get(&*c) {
                Some(&n) => {
                    let last = std::mem::replace(&mut self.names[n].1, seq);
                    self.by_seq.remove(&(last, n));
                    self.by_seq.insert((seq, n));
                }
                None => {
                    let n = self.names.len();
                    self.numbers.insert(c.to_string(), n);
                    self.names.push((c.into_owned(), seq));
                    self.by_seq.insert((seq, n));
                }
            }
        }
    }

    /// The collections with changes after `since`, if this knows them all
    /// (`since` is not before the database was opened).
    pub fn collections_after(&self, since: u64) -> Option<Vec<String>> {
        (since >= self.opened).then(|| {
            self.by_seq
                .range((since.saturating_add(1), 0)..)
                .map(|&(_, n)| self.names[n].0.clone())
                .collect()
        })
    }
}

/// Every collection with an entry in the change log, in name order: one short
/// scan per collection, each starting past the previous one's entries.
pub fn feed_collections(view: &dyn StorageRead) -> Result<Vec<String>> {
    let mut collections = Vec::new();
    let mut start: Option<Vec<u8>> = Some(Vec::new());
    while let Some(from) = start {
        let Some((key, _)) = view
            .scan(
                Space::Changes,
                Bound::Included(&from),
                Bound::Unbounded,
                Direction::Forward,
                1,
            )?
            .pop()
        else {
            break;
        };
        let name_len = key
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| corrupt("change key"))?;
        collections.push(String::from_utf8_lossy(&key[..name_len]).into_owned());
        // Past every key that starts with `name 0x00`.
        start = crate::index::keys::prefix_end(&key[..=name_len]);
    }
    Ok(collections)
}

fn corrupt(what: &str) -> Error {
    Error::Storage(crate::storage::StorageError::Corrupt(format!(
        "change feed: bad {what}"
    )))
}

/// The sequence number of a change-log key whose collection prefix is
/// `offset` bytes long.
fn seq_at(key: &[u8], offset: usize) -> Result<u64> {
    key.get(offset..offset + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| corrupt("sequence"))
}

/// Changes of `collection` after position `after` (a `(seq, id)` checkpoint;
/// `None` = from the start), up to `upto`, at most `limit`, documents included.
/// Positions are unique per document, so iterating by them never skips or
/// repeats a document, even within one commit.
pub fn read_changes_after<D: PageDoc>(
    view: &dyn StorageRead,
    (collection, after, upto): (&str, Option<(u64, &str)>, u64),
    limit: usize,
    pages: &std::sync::Arc<Budget>,
) -> Result<(Vec<Change<D>>, Holding)> {
    if limit == 0 || limit > CHANGES_LIMIT_MAX {
        return Err(Error::InvalidQuery(format!(
            "limit must be 1 to {CHANGES_LIMIT_MAX}"
        )));
    }
    let start = match after {
        Some((seq, id)) => Bound::Excluded(changes_key(collection.as_bytes(), seq, id.as_bytes())),
        None => Bound::Included(doc_key(collection, "")),
    };
    let chunk = limit.min(CHANGES_CHUNK_MAX);
    let mut cursor = FeedCursor::from(collection.to_string(), start, upto, chunk);
    // Bounded by `limit` alone: RxDB takes a page shorter than its batch for
    // the end, and its live stream would then go on past what it skipped.
    // Refused past `WHOLE_PAGE_BYTES_MAX` instead, or when the pages being
    // read have no room for it.
    let mut changes = Vec::new();
    let mut bytes = 0;
    let mut taken = Taken::new(pages);
    while changes.len() < limit
        && let Some((seq, id)) = cursor.next(view, chunk)?
    {
        let (change, size) = change_at(view, seq, (collection.to_string(), id), Some(&mut taken))?
            .ok_or(Error::PagesOverBudget)?;
        bytes += size;
        whole_page_holds(bytes)?;
        changes.push(change);
    }
    Ok((changes, taken.into()))
}

/// Calls `visit` with every stored document of `collection` in `view`
/// (tombstones included), in id order, reading in chunks.
pub fn for_each_document(
    view: &dyn StorageRead,
    collection: &str,
    mut visit: impl FnMut(Document) -> Result<()>,
) -> Result<()> {
    const CHUNK: usize = 1024;
    let base = doc_key(collection, "");
    let end = crate::index::keys::prefix_end(&base);
    let mut start = Bound::Included(base.clone());
    loop {
        let end_ref = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let entries = view.scan(
            Space::Documents,
            start.as_ref().map(Vec::as_slice),
            end_ref,
            Direction::Forward,
            CHUNK,
        )?;
        for (key, value) in &entries {
            let id = String::from_utf8_lossy(&key[base.len()..]);
            visit(crate::record::decode_document(&id, value)?)?;
        }
        match entries.last() {
            Some((key, _)) if entries.len() == CHUNK => start = Bound::Excluded(key.clone()),
            _ => return Ok(()),
        }
    }
}
