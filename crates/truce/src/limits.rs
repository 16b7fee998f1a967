//! Every bound the engine enforces, as a named constant with its unit last.
//!
//! Each number says why it is what it is. A limit that is hit becomes a typed
//! [`Error`](crate::Error) with a stable code, never a panic or an unbounded queue.

/// Largest document, measured as its canonical JSON encoding. Same order as
/// Firestore (1 MiB) and well under MongoDB (16 MiB): big enough for real records,
/// small enough that one document never dominates a commit batch.
pub const DOC_SIZE_BYTES_MAX: usize = 1024 * 1024;

/// Deepest nesting of objects and arrays in a document. Firestore allows 20,
/// MongoDB 100; 32 keeps recursive code (hashing, operators, filters) far from
/// stack exhaustion while allowing realistic nesting.
pub const DOC_DEPTH_MAX: usize = 32;

/// Deepest nesting of an update (its operators, paths and operands), as deep
/// as JSON text is parsed (serde_json's limit): an update built in code past
/// it is refused before anything walks it recursively. Its operands were
/// cloned, serialized and applied on the committer's thread first, and one
/// nested tens of thousands of levels could exhaust that thread's stack.
pub const UPDATE_DEPTH_MAX: usize = 128;

/// Longest document id, in bytes of UTF-8 (API.md).
pub const ID_BYTES_MAX: usize = 512;

/// Longest collection name, in bytes (API.md: `^[A-Za-z][A-Za-z0-9_-]{0,63}$`).
pub const COLLECTION_NAME_BYTES_MAX: usize = 64;

/// Most field paths one update may touch, over all its operators. An update is a
/// description of a change, not a bulk load; 256 paths is far beyond any
/// hand-written update and bounds the committer's work per request.
pub const UPDATE_PATHS_MAX: usize = 256;

/// Most nodes (operators, fields, list elements) in one filter. Filters run on
/// the committer for every `$if`, so their cost must be bounded.
pub const FILTER_NODES_MAX: usize = 256;

/// Most steps the filters of one request may take (`update::filter::Work`):
/// each `$if`, and each condition `$pull` tests array elements with, over
/// all the ops of a transaction. A step is about one comparison of two
/// scalars, ~8 ns on a release build here (an `$if` of 28 equality tests
/// over 140,000 numbers, 3.9M steps, made a `PATCH` 32 ms slower), so this
/// is some 30 ms of the committer, during which no other write commits:
/// about three times what storing a 1 MiB document takes. A filter tests
/// each array element, so a filter of [`FILTER_NODES_MAX`] nodes over a
/// large array would take far more: a `$pull` and an `$if` with a 120-value
/// `$in` over 140,000 elements took 119 ms before `$in` became a binary
/// search (18 ms after), and a transaction of 15 of them 1.8 s. A `$pull` of
/// one condition over that array takes 140,000 steps.
pub const FILTER_STEPS_MAX: u64 = 4_000_000;

/// Most segments in a dotted path; a path cannot be deeper than a document.
pub const PATH_SEGMENTS_MAX: usize = DOC_DEPTH_MAX;

/// Most write requests the committer takes into one group commit. Bounds the
/// latency the first request of a batch waits for the last one to be evaluated
/// (about 2 µs each, so a full batch is a few ms).
pub const COMMIT_BATCH_REQUESTS_MAX: usize = 4096;

/// Most bytes of encoded records in one group commit. A batch closes early once it
/// passes this, so one fsync never carries more than a few ms of sequential write
/// (the disk writes about 1.3 GB/s).
pub const COMMIT_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Most bytes of documents the requests of one group commit may meet (each
/// op's document, as often as ops meet it: the committer evaluates it for
/// each), past which the group closes early, as it does past
/// [`COMMIT_BATCH_BYTES_MAX`] written and [`FILTER_STEPS_MAX`] filtered: every
/// request of a group waits for all of them. Requests that write nothing (a
/// `$set` of the value already there) or little (an `$inc`) on a 1 MiB
/// document take a few ms each, and a group held 4,096 of them. As many
/// bytes as one transaction may meet ([`TX_READ_BYTES_MAX`]), but of stored
/// documents only: a group's documents are not measured by their values.
pub const COMMIT_BATCH_MET_BYTES_MAX: usize = TX_READ_BYTES_MAX;

/// Most write requests waiting for the committer. Past this a write fails at once
/// with [`Error::Overloaded`](crate::Error::Overloaded) (HTTP 429) instead of
/// queueing without bound; two full batches keep the committer busy while
/// clients back off.
pub const COMMIT_QUEUE_REQUESTS_MAX: usize = 2 * COMMIT_BATCH_REQUESTS_MAX;

/// How long the committer polls its empty queue before it blocks, in µs, by
/// default ([`Options::commit_poll`](crate::Options::commit_poll)). About one
/// group's store on a disk of ~5,000 fsyncs/s plus an HTTP round trip: a
/// writer waiting for the previous group's answer is back within it, and
/// finds the committer awake (`engine/poll.rs`; measured in
/// `docs/benchmarks-log.md`, "Polling before blocking").
pub const COMMIT_POLL_US_DEFAULT: u64 = 200;

/// Longest poll window a database accepts, in µs: beyond a millisecond a
/// blocked committer's wake-up is no longer the cost that matters, and the
/// CPU spent polling is.
pub const COMMIT_POLL_US_MAX: u64 = 1000;

/// Most fields in one index. Compound keys beyond a handful are a schema smell and
/// make every entry long.
pub const INDEX_FIELDS_MAX: usize = 8;

/// Longest field path an index declares, in bytes of UTF-8. A declaration
/// stays in memory while it stands and every listing of the collection's
/// indexes shows it: without a bound, an audit's index over a 15 MB field
/// path took a release server (63bbe06, 2026-12-07, its VmRSS) from 66 to
/// 186 MB resident, and five of them to 780 MB, for good. Firestore bounds a field path at 1,500 bytes; a
/// document's own field names are not bounded, but one longer than this
/// cannot be indexed.
pub const INDEX_FIELD_BYTES_MAX: usize = 1024;

/// Largest collection configuration a declaration may store (its TTL, its
/// counters with their `where` filters, whose values may be of any size;
/// measured as `_config` shows it, in JSON). It stays in memory while it
/// stands, and each of its counters is evaluated on every write of the
/// collection: the sixteen counters [`COUNTERS_PER_COLLECTION_MAX`] allows
/// may take 4 KiB each (a `where` of some 100 UUIDs), a handful of them far
/// more; a filter of 15 MB of values may not.
pub const CONFIG_BYTES_MAX: usize = 64 * 1024;

/// Collections a database holds by default
/// ([`Options::collections_max`](crate::Options::collections_max)): a write
/// that would add one more is refused. Collections are made by their first
/// write and never removed, and each keeps its name in memory several times
/// over (the committer's registry, the readers' copy, the feed's heads), so a
/// client that writes to a collection per user or per request would
/// otherwise grow the server's memory and its listing without bound.
pub const COLLECTIONS_DEFAULT: usize = 100_000;

/// Most collections [`Options::collections_max`](crate::Options::collections_max)
/// may allow: at ~270 bytes each resident (`scripts/many-collections`), a
/// million take ~260 MiB.
pub const COLLECTIONS_MAX: usize = 1_000_000;

/// Most indexes per collection. Every write maintains every index of its
/// collection in the committer, so each one costs all writers.
pub const INDEXES_PER_COLLECTION_MAX: usize = 32;

/// Bytes of values one document puts into one index, as encoded (a string
/// takes its UTF-8 bytes plus 3, a number 25; see `index/keys.rs`): a write
/// past it is refused, an index built over a document past it fails. With
/// the index's prefix and the id, every entry key then fits in a query
/// cursor ([`CURSOR_KEY_BYTES_MAX`]), so a query can page through any index.
/// PostgreSQL (2,704 bytes per B-tree entry) and DynamoDB (1,024 bytes of
/// sort key) refuse such writes too.
pub const INDEX_VALUES_BYTES_MAX: usize = 3072;

/// The longest key a query cursor may carry (hex-encoded in the cursor).
pub const CURSOR_KEY_BYTES_MAX: usize = 4096;

// An index entry: `collection \0 name \0`, the values, the id.
const _: () = assert!(
    2 * COLLECTION_NAME_BYTES_MAX + 2 + INDEX_VALUES_BYTES_MAX + ID_BYTES_MAX <= CURSOR_KEY_BYTES_MAX
);

/// Most entries one scan of a query reads when the page needs fewer: scans
/// grow to it while tombstones (deleted documents, which keep their key for
/// the change feed) fill them. Small, as each entry of an id-order query is a
/// whole document: a page of one reads at most 16 of them (16 MiB, one
/// page's bytes).
pub const QUERY_SCAN_ENTRIES_MAX: usize = 16;

/// Largest page a query returns; bigger reads page with cursors.
pub const QUERY_LIMIT_MAX: usize = 1000;

/// Bytes of stored documents past which a page of a query or of a feed with
/// documents ends early (it holds at least one): a query then gives a `next`
/// cursor, the change feed ends with the commit it is in, a pull gives its
/// checkpoint. Without it a page of 10,000 documents of 1 MiB each was built
/// whole in memory for one request.
pub const PAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Bytes of documents a page that must be whole may hold: one bounded by
/// its `limit` alone, for clients that take a page shorter than their batch
/// for the end of the feed (RxDB's `_pull`, CouchDB's `_changes` and
/// `_all_docs`). Past this the request is refused (`limit_exceeded`) as
/// soon as the page passes it, instead of being built: 10,000 documents of
/// 1 MiB would have been 10 GB for one request. The client lowers its batch
/// size. Four pages of [`PAGE_BYTES_MAX`].
pub const WHOLE_PAGE_BYTES_MAX: usize = 4 * PAGE_BYTES_MAX;

/// Default memory for the pages being read at once (queries, feeds, pulls),
/// counted as pages bound theirs (a document's stored bytes, or its decoded
/// size when more) from the document read until the page is dropped: three
/// or four pages of [`WHOLE_PAGE_BYTES_MAX`] (each may pass it by one
/// document's bound, `doc::decoded_size_bound`), thousands of ordinary
/// ones. Past it a
/// page that may end early does (it holds at least one document, or one
/// commit), and one that may not, or that holds nothing yet, is refused
/// with [`Error::PagesOverBudget`](crate::Error::PagesOverBudget); a page
/// read alone always fits. Ten pulls of such documents at once peaked at
/// 11.6 GB before pages counted decoded sizes, and at 700 MB after.
pub const PAGE_MEMORY_BYTES_DEFAULT: usize = 256 * 1024 * 1024;

/// Documents the index backfill adds per commit: small enough that writers
/// queued behind a backfill step wait well under a millisecond more.
pub const BACKFILL_CHUNK_DOCS: usize = 256;

/// Entries a dropped index loses per commit, for the same reason: each step
/// is one group's worth of deletions, never the whole index at once.
pub const INDEX_PURGE_CHUNK_ENTRIES: usize = 1024;

/// Most operations in one transaction (as DynamoDB's TransactWriteItems allows 100
/// and Firestore 500; a bit more, still far from dominating a group commit).
pub const TX_OPS_MAX: usize = 1000;

/// Most point reads plus range reads one transaction may record. Validation walks
/// the read set for every write committed since the snapshot, so it must be bounded.
pub const TX_READ_SET_ENTRIES_MAX: usize = 10_000;

/// Most bytes of documents one transaction may write.
pub const TX_WRITE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Most bytes of documents the ops of one transaction may meet (the current
/// state of each op's document, which the committer holds, evaluates and a
/// `check` or a conflict answers with), each counting its stored bytes or
/// what its values take decoded (`doc::decoded_len_size`), whichever is
/// more — but a put or a delete outside collections with indexes, counters or a TTL
/// counts its stored bytes only, unless it reads the body after all (a
/// conflict's answer, a no-op's confirmation), whether it decodes it or an
/// earlier write of the group did: it replaces the document without
/// decoding it. A thousand checks of 1 MiB
/// documents held a gigabyte in the committer and in the answer, and 17
/// `$inc`s on documents of 375,000 small numbers (16 MiB stored, 255 MiB
/// decoded) held every other writer 1.5 s.
pub const TX_READ_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Longest a transaction may live from its snapshot to its commit, in ms. Must be
/// well inside [`RECENT_WRITES_RETAIN_MS`] so a live transaction can always be validated.
pub const TX_LIFETIME_MS_MAX: u64 = 10_000;

/// How long the committer keeps the keys of recent commits to validate
/// transactions against, in ms (Convex-style write log).
pub const RECENT_WRITES_RETAIN_MS: u64 = 30_000;

/// Most bytes of keys the recent-writes log holds (each key once, however often
/// written); past this the keys written longest ago are forgotten early, and
/// transactions whose snapshot is older than those writes fail with a retryable
/// outcome.
pub const RECENT_WRITES_BYTES_MAX: usize = 32 * 1024 * 1024;

/// Longest idempotency key, in bytes (API.md: 1..255 characters).
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// Default time an idempotency key is remembered, in ms (24 h, API.md).
pub const IDEMPOTENCY_RETENTION_MS_DEFAULT: u64 = 24 * 60 * 60 * 1000;

/// Expired idempotency keys purged per maintenance commit, so purging never
/// delays writers by more than a short commit.
pub const IDEMPOTENCY_PURGE_BATCH_MAX: usize = 1000;

/// Default reserve of free space on the data directory's filesystem, in
/// bytes: below it writes that add data are refused (`engine/disk.rs`). It is
/// room for what goes on without a client's write: the journal's next file
/// (up to 64 MiB, filled ahead), memtable flushes (8 MiB per keyspace) and the
/// compactions that follow them, TTL sweeps and deletes.
pub const MIN_FREE_DISK_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// How long the committer waits for work before doing maintenance, in ms.
pub const COMMITTER_IDLE_MS: u64 = 1000;

/// Most changes one change-feed read returns.
pub const CHANGES_LIMIT_MAX: usize = 10_000;

/// Most counters one collection may declare: each is evaluated on every write of
/// the collection, in the committer.
pub const COUNTERS_PER_COLLECTION_MAX: usize = 16;

/// Longest TTL, in seconds (ten years): beyond that a TTL is a mistake.
pub const TTL_SECONDS_MAX: u64 = 10 * 365 * 24 * 3600;

/// Documents the TTL sweeper looks at per tick, over all TTL collections
/// (which take turns, each going on where its last turn stopped), and the
/// most it deletes then, in one commit: a sweep never delays writers by more
/// than a short commit, however many TTL collections there are (an empty
/// collection's turn counts as one document). A pass over a collection of N
/// documents takes N / 2,000 ticks of [`BACKGROUND_TICK_MS`] (the tick while
/// any collection has a TTL) when it is the only one; readers and writers
/// treat an expired document as gone meanwhile.
pub const TTL_SWEEP_SCAN_DOCS: usize = 2000;
/// See [`TTL_SWEEP_SCAN_DOCS`].
pub const TTL_SWEEP_DELETES_MAX: usize = 500;

/// Longest a collection may keep its tombstones before they are purged
/// (`tombstones.keep_seconds`), in seconds: ten years, as [`TTL_SECONDS_MAX`].
pub const TOMBSTONE_KEEP_SECONDS_MAX: u64 = TTL_SECONDS_MAX;

/// Change-log entries the tombstone purge looks at per maintenance pass
/// (about once a second, [`COMMITTER_IDLE_MS`]; at the next background tick
/// while the last pass stopped at [`TOMBSTONE_PURGES_MAX`]), over all collections that
/// purge theirs (which take turns, each going on where its last turn
/// stopped), the bytes of document records it reads for them, and the most
/// it purges then, in one commit of its own: the purge never delays writers
/// by more than a short commit. Each entry looked at is one read of its
/// document's record, whose checksums are verified and whose body is not
/// parsed; live documents count as much as tombstones.
pub const TOMBSTONE_PURGE_SCAN_ENTRIES: usize = 2000;
/// See [`TOMBSTONE_PURGE_SCAN_ENTRIES`].
pub const TOMBSTONE_PURGE_READ_BYTES: usize = 4 * 1024 * 1024;
/// See [`TOMBSTONE_PURGE_SCAN_ENTRIES`].
pub const TOMBSTONE_PURGES_MAX: usize = 1000;

/// How often the committer sweeps expired documents and drains the counter
/// outbox when there is something to do, in ms. Longer coalesces more
/// `after_commit` increments per write; shorter lowers their lag.
pub const BACKGROUND_TICK_MS: u64 = 50;

/// Outbox entries drained in one commit: 10,000 increments become at most one
/// write per target.
pub const OUTBOX_DRAIN_ENTRIES_MAX: usize = 10_000;

/// Longest `Truce-Source` name kept, in bytes; longer ones are cut. Sources
/// become metric labels, so they must stay short.
pub const SOURCE_BYTES_MAX: usize = 64;

/// Distinct (family, reason, collection, source) label sets counted; the rest
/// are counted under `_other`. Bounds the size of `/metrics` whatever clients send.
pub const INSIGHT_LABEL_SETS_MAX: usize = 1024;

/// The longest insights window, in minutes (one hour).
pub const HOT_SPOT_MINUTES: u64 = 60;

/// Minutes of hot-spot counts kept: a window reaches into the minute it
/// starts in, so the longest takes one more than [`HOT_SPOT_MINUTES`].
pub const HOT_SPOT_MINUTES_KEPT: u64 = HOT_SPOT_MINUTES + 1;

/// Keys each minute's hot-spot summary tracks by default. With
/// [`HOT_SPOT_MINUTES_KEPT`] minutes kept this bounds the tracker to 7,808 entries (a few MiB) whatever the number of
/// conflicting documents; any key with more than 1/128 of a minute's events is
/// guaranteed to be among them.
pub const HOT_SPOTS_TRACKED_DEFAULT: usize = 128;

/// Largest configurable per-minute hot-spot capacity.
pub const HOT_SPOTS_TRACKED_MAX: usize = 4096;

/// Most hot spots one insights answer lists.
pub const HOT_SPOTS_LIMIT_MAX: usize = 100;

/// Sources counted per hot spot and minute; events from further sources are
/// counted together.
pub const HOT_SPOT_SOURCES_MAX: usize = 4;

/// A blind overwrite of a document another source changed within this window is
/// counted as a likely lost update.
pub const LAST_WRITER_WINDOW_MS: u64 = 60_000;

/// Documents whose last writer is remembered for overwrite detection. When full
/// of recent writes the map is cleared rather than grown.
pub const LAST_WRITERS_MAX: usize = 65_536;

/// The outbox counts as backed up once its oldest increment waited this long
/// (the drain runs every [`BACKGROUND_TICK_MS`]); only then do counter targets
/// show up as hot spots.
pub const OUTBOX_BACKED_UP_MS: u64 = 1000;

/// Highest commit sequence number recovery accepts. At a million commits a
/// second, 2^62 takes 146,000 years: a stored `last_seq` above it is corrupt, and
/// counting on from it could overflow.
pub const COMMIT_SEQ_MAX: u64 = 1 << 62;

/// Entries a backup copies per write into its new data directory (each write
/// is one durable batch there): bounds the backup's memory whatever the
/// database's size. See [`BACKUP_CHUNK_BYTES`].
pub const BACKUP_CHUNK_ENTRIES: usize = 4096;

/// Bytes (keys and values) past which a backup's write is cut short of
/// [`BACKUP_CHUNK_ENTRIES`].
pub const BACKUP_CHUNK_BYTES: usize = 8 << 20;

/// Entries a backup reads from the snapshot at a time, and so how often it
/// looks whether it was asked to stop, and reports its progress: at most
/// 64 documents of up to a MiB each are held beyond the batch being written.
pub const BACKUP_SCAN_ENTRIES: usize = 64;

/// Entries a consistency check (`Db::check`, `truce check`) reads from a space
/// at once: with documents of at most [`DOC_SIZE_BYTES_MAX`], at most 256 MiB
/// held, and a few MiB for documents of usual sizes.
pub const CHECK_CHUNK_ENTRIES: usize = 256;

/// Problems a consistency check lists (it counts every one): a database
/// damaged throughout would otherwise make a report as large as itself.
pub const CHECK_PROBLEMS_MAX: usize = 1000;
