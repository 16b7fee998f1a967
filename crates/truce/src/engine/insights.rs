//! Conflict insights: what the committer saw, counted by reason, collection and
//! source, and the hot spots behind it over sliding windows, each with a remedy.
//!
//! The committer collects `Event`s while it evaluates a group and hands them
//! over once per stored group (one lock). Readers take snapshots
//! ([`Db::stats`](super::Db::stats), [`Db::insights`](super::Db::insights)).
//!
//! Memory is bounded whatever the workload: label sets by
//! [`INSIGHT_LABEL_SETS_MAX`], hot spots by one top-K summary (capacity set by
//! [`Options::hot_spots`](super::Options::hot_spots)) per minute for
//! [`HOT_SPOT_MINUTES_KEPT`] minutes, and the last-writer map by
//! [`LAST_WRITERS_MAX`]. Document ids never become metric labels.
//!
//! The top-K summary is Space-Saving (Metwally et al.): a key already tracked
//! counts up; a new key takes the place of the least-counted one and inherits
//! its count as an over-estimate (`error`). Any key with more events than
//! `total / capacity` in a minute is guaranteed to be tracked.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};

use crate::error::{Error, Result};
use crate::limits::{
    COLLECTION_NAME_BYTES_MAX, HOT_SPOT_MINUTES, HOT_SPOT_MINUTES_KEPT, HOT_SPOT_SOURCES_MAX,
    HOT_SPOTS_LIMIT_MAX, HOT_SPOTS_TRACKED_MAX, ID_BYTES_MAX, INSIGHT_LABEL_SETS_MAX, LAST_WRITER_WINDOW_MS,
    LAST_WRITERS_MAX, SOURCE_BYTES_MAX,
};

use super::outcome::BodyForm;

/// Who is writing, and which attempt this is. Conflicts, retries and permanent
/// failures are attributed to it; nothing else depends on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The caller's name for the code path that writes (`Truce-Source`).
    pub source: Option<Arc<str>>,
    /// Which attempt this is, from 1; 0 when the caller did not say.
    pub attempt: u32,
    /// The caller's last attempt, when it said (`Truce-Attempt: n/max`).
    pub attempts_max: Option<u32>,
}

impl Origin {
    /// An origin naming its source: its printable ASCII characters but `"`
    /// and `\` (it becomes a metrics label, written as is), cut to
    /// [`SOURCE_BYTES_MAX`] bytes.
    pub fn source(source: &str) -> Origin {
        let mut cut = String::with_capacity(source.len().min(SOURCE_BYTES_MAX));
        let kept = |c: &char| (c.is_ascii_graphic() || *c == ' ') && *c != '"' && *c != '\\';
        for c in source.chars().filter(kept) {
            if cut.len() + c.len_utf8() > SOURCE_BYTES_MAX {
                break;
            }
            cut.push(c);
        }
        Origin {
            source: (!cut.is_empty()).then(|| cut.into()),
            ..Origin::default()
        }
    }

    /// The same origin on attempt `attempt` of at most `max`.
    pub fn attempt(mut self, attempt: u32, max: Option<u32>) -> Origin {
        self.attempt = attempt;
        self.attempts_max = max;
        self
    }

    /// Whether this request is a retry (attempt 2 or later).
    pub fn is_retry(&self) -> bool {
        self.attempt > 1
    }

    /// Whether the caller said this is its last attempt.
    pub fn is_last_attempt(&self) -> bool {
        self.attempts_max
            .is_some_and(|max| self.attempt >= max && self.attempt > 0)
    }
}

/// The stable codes of every reason a write or transaction is refused, as
/// counted: the five [`ConflictReason`](super::outcome::ConflictReason)s, then a
/// transaction's read conflict and a snapshot too old to validate.
pub const CONFLICT_CODES: [&str; 7] = [
    "version_mismatch",
    "already_exists",
    "not_found",
    "condition_failed",
    "unique_violation",
    "read_conflict",
    "snapshot_too_old",
];

/// Index of `code` in [`CONFLICT_CODES`].
pub(crate) fn conflict_index(code: &str) -> usize {
    CONFLICT_CODES.iter().position(|c| *c == code).unwrap_or(0)
}

/// Position of `not_found` in [`CONFLICT_CODES`].
pub(crate) const NOT_FOUND: usize = 2;
/// Position of `unique_violation` in [`CONFLICT_CODES`].
pub(crate) const UNIQUE_VIOLATION: usize = 4;
/// Position of `read_conflict` in [`CONFLICT_CODES`].
pub(crate) const READ_CONFLICT: usize = 5;
/// Position of `snapshot_too_old` in [`CONFLICT_CODES`].
pub(crate) const SNAPSHOT_TOO_OLD: usize = 6;

/// What a hot spot is: one document, or a range a transaction read.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// A document, by id.
    Document(String),
    /// A key range read by transactions (`index NAME range`, or an id range).
    Range(String),
}

/// What happened at a hot spot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Refused, by index into [`CONFLICT_CODES`]; `numbers_only` when the refused
    /// write differed from the current document in numbers only.
    Conflict { code: usize, numbers_only: bool },
    /// A request that declared itself a retry, at each document it wrote or
    /// was refused at; `counted` at the first of them in each collection,
    /// where the request is counted in the totals and metrics (once).
    Retry { counted: bool },
    /// Refused on the caller's declared last attempt (`counted` as for a
    /// retry).
    PermanentFailure { counted: bool },
    /// A blind full replace of a document another source changed within
    /// [`LAST_WRITER_WINDOW_MS`].
    Overwrite,
    /// Identical to the current document: nothing written.
    NoOp,
    /// `$if` false with `$else: "skip"`.
    Skipped,
    /// `after_commit` increments applied to this counter target while the outbox
    /// was backed up.
    OutboxDeltas(u64),
    /// Changes to a document another request of the same group commit
    /// already changed: writers contend for it, serialized without conflict.
    /// One event counts all such changes of a group by one source.
    Contended(u64),
}

/// What the committer reports to the tracker.
pub(crate) enum Event {
    /// A document changed. `blind_put` names it when the change was a full
    /// replace without a precondition (a possible lost update).
    Changed {
        hash: u64,
        source: Option<Arc<str>>,
        blind_put: Option<(Arc<str>, String)>,
    },
    /// Something worth ranking happened.
    Hot {
        collection: Arc<str>,
        target: Target,
        kind: Kind,
        source: Option<Arc<str>>,
    },
    /// An answer replayed for an idempotency key.
    Replayed,
    /// Documents deleted by the TTL sweeper.
    Expired(u64),
    /// Tombstones purged.
    Purged(u64),
}

/// The events of a write refused on `target` (conflict `code`): the conflict,
/// and the retry and permanent failure `origin`'s attempt makes it.
///
/// `first`: whether this is the request's first refusal in `collection`: a
/// request is one retry, and one permanent failure, however many of its
/// writes were refused (a transaction of three stale writes given up on was
/// counted three times).
pub(crate) fn refused(
    events: &mut Vec<Event>,
    collection: &Arc<str>,
    target: Target,
    code: usize,
    numbers_only: bool,
    origin: &Origin,
    first: bool,
) {
    let hot = |target, kind| Event::Hot {
        collection: Arc::clone(collection),
        target,
        kind,
        source: origin.source.clone(),
    };
    events.push(hot(target.clone(), Kind::Conflict { code, numbers_only }));
    if origin.is_retry() {
        events.push(hot(target.clone(), Kind::Retry { counted: first }));
    }
    if origin.is_last_attempt() {
        events.push(hot(target, Kind::PermanentFailure { counted: first }));
    }
}

/// The hash a document or range is tracked under.
pub(crate) fn target_hash(collection: &str, target: &Target) -> u64 {
    match target {
        Target::Document(id) => key_hash(0, collection, id),
        Target::Range(what) => key_hash(1, collection, what),
    }
}

/// [`target_hash`] of a document, without building its [`Target`].
pub(crate) fn document_hash(collection: &str, id: &str) -> u64 {
    key_hash(0, collection, id)
}

/// XXH3 of `tag collection 0x00 name`, hashed in one call (a streaming XXH3
/// state costs more to set up than a short key costs to hash): written into a
/// stack buffer when it fits, which it does for every id within the limits.
fn key_hash(tag: u8, collection: &str, name: &str) -> u64 {
    const STACK_BYTES: usize = 2 + COLLECTION_NAME_BYTES_MAX + ID_BYTES_MAX;
    let len = 2 + collection.len() + name.len();
    let mut stack = [0u8; STACK_BYTES];
    let mut heap = Vec::new();
    let key: &mut [u8] = if len <= STACK_BYTES {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    key[0] = tag;
    key[1..1 + collection.len()].copy_from_slice(collection.as_bytes());
    key[1 + collection.len()] = 0;
    key[2 + collection.len()..].copy_from_slice(name.as_bytes());
    xxhash_rust::xxh3::xxh3_64(key)
}

/// Counts kept per hot spot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HotCounts {
    /// Refusals, by [`CONFLICT_CODES`] position.
    pub conflicts: [u64; CONFLICT_CODES.len()],
    /// Version conflicts whose refused write differed only in numbers.
    pub numbers_only: u64,
    /// Requests that declared themselves retries.
    pub retries: u64,
    /// Refusals on a declared last attempt.
    pub permanent_failures: u64,
    /// Blind overwrites of another source's recent change.
    pub overwrites: u64,
    /// Writes that changed nothing.
    pub noops: u64,
    /// Conditional writes skipped.
    pub skipped: u64,
    /// `after_commit` increments applied while the outbox was backed up.
    pub outbox_deltas: u64,
    /// Changes to the document by more than one request of a group commit.
    pub contended: u64,
    /// Writes that changed the document while it was tracked.
    pub writes: u64,
}

impl HotCounts {
    /// Every refusal.
    pub fn conflicts_total(&self) -> u64 {
        self.conflicts.iter().sum()
    }

    fn add(&mut self, kind: Kind) {
        match kind {
            Kind::Conflict { code, numbers_only } => {
                self.conflicts[code] += 1;
                self.numbers_only += u64::from(numbers_only);
            }
            Kind::Retry { .. } => self.retries += 1,
            Kind::PermanentFailure { .. } => self.permanent_failures += 1,
            Kind::Overwrite => self.overwrites += 1,
            Kind::NoOp => self.noops += 1,
            Kind::Skipped => self.skipped += 1,
            Kind::OutboxDeltas(n) => self.outbox_deltas += n,
            Kind::Contended(n) => self.contended += n,
        }
    }

    fn merge(&mut self, other: &HotCounts) {
        for (a, b) in self.conflicts.iter_mut().zip(other.conflicts) {
            *a += b;
        }
        self.numbers_only += other.numbers_only;
        self.retries += other.retries;
        self.permanent_failures += other.permanent_failures;
        self.overwrites += other.overwrites;
        self.noops += other.noops;
        self.skipped += other.skipped;
        self.outbox_deltas += other.outbox_deltas;
        self.contended += other.contended;
        self.writes += other.writes;
    }
}

/// What to do about a hot spot: a stable code and one sentence of advice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remedy {
    /// Stable code (docs/insights.md lists every one).
    pub code: &'static str,
    /// What to change.
    pub advice: &'static str,
}

/// The remedy rules, in the order they are tried (docs/insights.md).
pub fn remedy(target: &Target, c: &HotCounts, outbox_backed_up: bool) -> Remedy {
    let conflicts = c.conflicts_total();
    let version = c.conflicts[0];
    let duplicates = c.noops + c.skipped;
    if matches!(target, Target::Range(_)) && c.conflicts[READ_CONFLICT] > 0 {
        return Remedy {
            code: "narrow_range",
            advice: "transactions that read this range are invalidated by every write inside it: \
                     read a narrower range (a tighter filter or a more selective index) or read the documents by id",
        };
    }
    if version > 0 && c.numbers_only * 2 >= version {
        return Remedy {
            code: "use_update_operators",
            advice: "writers race to replace numbers in this document: send $inc (or $max/$min) so the change \
                     runs at the serialization point, or keep the number in a counter cache",
        };
    }
    if c.overwrites > 0 && c.overwrites * 2 >= c.overwrites + conflicts {
        return Remedy {
            code: "send_version",
            advice: "different sources overwrite this document blindly within a minute of each other (likely \
                     lost updates): send _version or If-Match, or use update operators",
        };
    }
    if duplicates > 0 && duplicates * 2 >= duplicates + c.writes {
        return Remedy {
            code: "deduplicate_writes",
            advice: "most writes to this document change nothing: a client sends duplicates; send them less \
                     often or guard them with $if and $else: \"skip\" (the heartbeat pattern)",
        };
    }
    if c.outbox_deltas > 0 && outbox_backed_up {
        return Remedy {
            code: "counter_target_hot",
            advice: "this counter target absorbs many after_commit increments and the outbox is backing up: \
                     split the counter (e.g. per day or per shard) or lower the number of sources per target",
        };
    }
    let missing = c.conflicts[NOT_FOUND];
    if missing > 0 && missing * 2 >= conflicts {
        return Remedy {
            code: "write_missing_document",
            advice: "most writes failed because this document does not exist (a PATCH without $upsert, a DELETE \
                     or a must-exist precondition of an absent document): create it first, send $upsert: true, \
                     or stop writing it once it is deleted; this is not contention",
        };
    }
    let taken = c.conflicts[UNIQUE_VIOLATION];
    if taken > 0 && taken * 2 >= conflicts {
        return Remedy {
            code: "unique_value_taken",
            advice: "most writes were refused because a unique index already holds the value they write, for \
                     another document: a duplicate, not a race, and a retry will fail again; look the value up \
                     first (a query on the index), or write another value",
        };
    }
    if conflicts > 0 {
        return Remedy {
            code: "reduce_contention",
            advice: "many writers race for this document: use update operators for the fields they change, \
                     split it into documents written by fewer writers, and retry with backoff and full jitter",
        };
    }
    if c.contended > 0 {
        return Remedy {
            code: "split_if_throughput_bound",
            advice: "many writers change this document at once and are serialized without conflicts: nothing \
                     to fix; if its write rate ever limits you, split it (e.g. a sharded counter)",
        };
    }
    Remedy {
        code: "none",
        advice: "no change needed yet",
    }
}

/// One tracked key of a minute's summary.
#[derive(Clone, Debug)]
struct Entry {
    collection: Arc<str>,
    target: Target,
    /// Events counted for this key (an over-estimate by at most `error`).
    score: u64,
    error: u64,
    counts: HotCounts,
    sources: Vec<(Option<Arc<str>>, u64)>,
    /// Events counted under a source that may be others' (see
    /// [`Entry::count_source`]): the most any named count over-states.
    other_sources: u64,
}

impl Entry {
    /// Counts `n` events of `source`. Past [`HOT_SPOT_SOURCES_MAX`] sources,
    /// a new one takes the place of the one with the fewest events and its
    /// count, plus its own (Space-Saving, as the hot spots themselves are
    /// kept): the count it took may be another source's, and
    /// `other_sources` adds those up, so each named count over-states by at
    /// most that. A source with more than a fifth of the events is always
    /// named. (The first ones seen kept their places for good: four callers
    /// with one event each hid one with fifty; and a newcomer started from
    /// its own count alone fell out again at the next one-off source.)
    fn count_source(&mut self, source: Option<&Arc<str>>, n: u64) {
        if let Some((_, count)) = self.sources.iter_mut().find(|(s, _)| s.as_ref() == source) {
            *count += n;
        } else if self.sources.len() < HOT_SPOT_SOURCES_MAX {
            self.sources.push((source.cloned(), n));
        } else if let Some(fewest) = self.sources.iter_mut().min_by_key(|(_, count)| *count) {
            self.other_sources += fewest.1;
            *fewest = (source.cloned(), fewest.1 + n);
        }
    }

    fn bytes(&self) -> usize {
        let target = match &self.target {
            Target::Document(s) | Target::Range(s) => s.capacity(),
        };
        std::mem::size_of::<Entry>()
            + target
            + self.sources.capacity() * std::mem::size_of::<(Option<Arc<str>>, u64)>()
    }
}

/// One minute's top-K summary.
struct Minute {
    index: u64,
    entries: HashMap<u64, Entry>,
}

impl Minute {
    fn record(
        &mut self,
        capacity: usize,
        hash: u64,
        collection: &Arc<str>,
        target: Target,
        kind: Kind,
        source: Option<&Arc<str>>,
    ) {
        let entry = match self.entries.entry(hash) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(_) => {
                // Space-Saving: a new key in a full summary replaces the
                // least-counted one and starts from its count, so no key's count
                // is ever under-estimated.
                let floor = if self.entries.len() >= capacity {
                    let (&evict, least) = self
                        .entries
                        .iter()
                        .min_by_key(|(_, e)| e.score)
                        .expect("a full summary has entries");
                    let floor = least.score;
                    self.entries.remove(&evict);
                    floor
                } else {
                    0
                };
                self.entries
                    .entry(hash)
                    .or_insert_with(|| Entry::new(collection, target, floor))
            }
        };
        // An event standing for several occurrences weighs as many.
        let weight = match kind {
            Kind::Contended(n) => n,
            _ => 1,
        };
        entry.score += weight;
        entry.counts.add(kind);
        entry.count_source(source, weight);
    }
}

impl Entry {
    fn new(collection: &Arc<str>, target: Target, floor: u64) -> Entry {
        Entry {
            collection: Arc::clone(collection),
            target,
            score: floor,
            error: floor,
            counts: HotCounts::default(),
            sources: Vec::new(),
            other_sources: 0,
        }
    }
}

/// Which counted family a labelled count belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Refusals (with a reason).
    Conflicts,
    /// Requests that declared themselves retries.
    Retries,
    /// Refusals on a declared last attempt.
    PermanentFailures,
    /// Blind overwrites of another source's recent change.
    Overwrites,
}

type LabelKey = (Family, &'static str, Arc<str>, Arc<str>);

/// A fixed-bucket histogram.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// Upper bounds of the buckets (the last bucket, `+Inf`, is implied).
    pub bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more than `bounds`.
    pub counts: Vec<u64>,
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }
}

/// Commits per group: powers of two up to the batch limit.
const GROUP_SIZE_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];
/// Seconds a group's write and fsync took.
const FSYNC_SECONDS_BOUNDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A snapshot of the engine's counters.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// Commits that wrote something.
    pub commits: u64,
    /// Group commits stored (one fsync each).
    pub groups: u64,
    /// Document changes (created, updated, deleted).
    pub writes: u64,
    /// Writes that changed nothing.
    pub noops: u64,
    /// Conditional writes skipped.
    pub skipped: u64,
    /// Answers replayed for an idempotency key.
    pub replays: u64,
    /// Documents deleted by the TTL sweeper.
    pub ttl_deleted: u64,
    /// Tombstones purged (`tombstones.keep_seconds`).
    pub tombstones_purged: u64,
    /// Requests waiting for the committer now.
    pub queue_depth: u64,
    /// Seconds the committer has spent polling its empty queue before
    /// blocking, or for more requests to fill a group
    /// (`Options::commit_poll`): CPU it used while waiting.
    pub commit_poll_seconds: f64,
    /// `after_commit` increments waiting in the outbox.
    pub outbox_entries: u64,
    /// Age of the oldest waiting increment, in ms.
    pub outbox_oldest_age_ms: Option<u64>,
    /// Commits per group.
    pub group_size: Histogram,
    /// Seconds each group's write and fsync took.
    pub fsync_seconds: Histogram,
    /// Labelled counts: family, reason (conflicts only, else ""), collection,
    /// source ("" when none was sent; `_other` past the label bound).
    pub labelled: Vec<(Family, &'static str, String, String, u64)>,
    /// Keys tracked by the hot-spot summaries now, over every minute kept.
    pub tracked_keys: u64,
    /// Approximate bytes the tracker holds.
    pub tracker_bytes: u64,
}

/// One hot spot over a window.
#[derive(Clone, Debug, PartialEq)]
pub struct HotSpot {
    /// Collection.
    pub collection: String,
    /// Document or range.
    pub target: Target,
    /// Events counted (conflicts, retries, permanent failures, overwrites, no-ops,
    /// skips, backed-up counter deltas, contended writes), an over-estimate by
    /// at most `error`.
    pub score: u64,
    /// How much `score` may over-count.
    pub error: u64,
    /// The counts behind the score.
    pub counts: HotCounts,
    /// Events by source, most first (`None`: no source sent); at most
    /// [`HOT_SPOT_SOURCES_MAX`] per minute, the rest in `other_sources`.
    pub sources: Vec<(Option<String>, u64)>,
    /// Events from sources not listed.
    pub other_sources: u64,
    /// Events per second over the window.
    pub rate_per_s: f64,
    /// What to do about it.
    pub remedy: Remedy,
}

/// The hot spots over a window.
#[derive(Clone, Debug, PartialEq)]
pub struct InsightsReport {
    /// The window asked for, in seconds.
    pub window_s: u64,
    /// Seconds the minutes counted cover: the window and up to a minute more
    /// (less on a server started since).
    pub covered_s: f64,
    /// The hottest first.
    pub hot_spots: Vec<HotSpot>,
}

/// Everything the tracker holds, behind one lock.
struct Tracker {
    started: Instant,
    capacity: usize,
    minutes: VecDeque<Minute>,
    labelled: HashMap<LabelKey, u64>,
    last_writers: HashMap<u64, (Option<Arc<str>>, Instant)>,
    commits: u64,
    groups: u64,
    writes: u64,
    noops: u64,
    skipped: u64,
    replays: u64,
    ttl_deleted: u64,
    tombstones_purged: u64,
    group_size: Histogram,
    fsync_seconds: Histogram,
}

/// The engine's counters and hot-spot tracker, shared by the committer and readers.
pub struct Insights {
    tracker: std::sync::Mutex<Tracker>,
    /// Requests waiting for the committer.
    pub(crate) queue_depth: AtomicUsize,
    /// Nanoseconds the committer has spent polling its empty queue.
    polled_ns: AtomicU64,
}

fn empty() -> Arc<str> {
    Arc::from("")
}

impl Insights {
    /// A tracker keeping the `capacity` hottest keys per minute.
    pub fn new(capacity: usize) -> Result<Insights> {
        if capacity == 0 || capacity > HOT_SPOTS_TRACKED_MAX {
            return Err(Error::LimitExceeded {
                what: "HOT_SPOTS_TRACKED_MAX",
                limit: HOT_SPOTS_TRACKED_MAX as u64,
            });
        }
        Ok(Insights {
            tracker: std::sync::Mutex::new(Tracker {
                started: Instant::now(),
                capacity,
                minutes: VecDeque::new(),
                labelled: HashMap::new(),
                last_writers: HashMap::new(),
                commits: 0,
                groups: 0,
                writes: 0,
                noops: 0,
                skipped: 0,
                replays: 0,
                ttl_deleted: 0,
                tombstones_purged: 0,
                group_size: Histogram::new(GROUP_SIZE_BOUNDS),
                fsync_seconds: Histogram::new(FSYNC_SECONDS_BOUNDS),
            }),
            queue_depth: AtomicUsize::new(0),
            polled_ns: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in one group's events: `requests` were evaluated into `commits`
    /// new sequence numbers, and storing took `fsync` (`None`: nothing written).
    pub(crate) fn absorb(
        &self,
        events: &mut Vec<Event>,
        requests: usize,
        commits: u64,
        fsync: Option<Duration>,
    ) {
        if events.is_empty() && fsync.is_none() {
            return;
        }
        let mut t = self.lock();
        let now = Instant::now();
        t.commits += commits;
        if let Some(took) = fsync {
            t.groups += 1;
            t.group_size.observe(requests as f64);
            t.fsync_seconds.observe(took.as_secs_f64());
        }
        for event in events.drain(..) {
            t.absorb_one(event, now);
        }
    }

    /// Adds one wait's polling to the committer's total (`engine/poll.rs`).
    pub(crate) fn add_polled(&self, polled: Duration) {
        if !polled.is_zero() {
            self.polled_ns
                .fetch_add(polled.as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// The counters now; `outbox` is the engine's (entries, oldest ms).
    pub(crate) fn stats(&self, outbox: (u64, Option<u64>), now_ms: u64) -> Stats {
        let t = self.lock();
        let mut labelled: Vec<_> = t
            .labelled
            .iter()
            .map(|((family, reason, coll, source), n)| {
                (*family, *reason, coll.to_string(), source.to_string(), *n)
            })
            .collect();
        labelled.sort_by(|a, b| (a.0 as u8, a.1, &a.2, &a.3).cmp(&(b.0 as u8, b.1, &b.2, &b.3)));
        let tracked: Vec<&Entry> = t.minutes.iter().flat_map(|m| m.entries.values()).collect();
        Stats {
            commits: t.commits,
            groups: t.groups,
            writes: t.writes,
            noops: t.noops,
            skipped: t.skipped,
            replays: t.replays,
            ttl_deleted: t.ttl_deleted,
            tombstones_purged: t.tombstones_purged,
            queue_depth: self.queue_depth.load(Ordering::Relaxed) as u64,
            commit_poll_seconds: self.polled_ns.load(Ordering::Relaxed) as f64 / 1e9,
            outbox_entries: outbox.0,
            outbox_oldest_age_ms: outbox.1.map(|oldest| now_ms.saturating_sub(oldest)),
            group_size: t.group_size.clone(),
            fsync_seconds: t.fsync_seconds.clone(),
            labelled,
            tracked_keys: tracked.len() as u64,
            tracker_bytes: t.bytes() as u64,
        }
    }

    /// The `limit` hottest keys of the collections `shown` accepts over the
    /// last `window` (at most [`HOT_SPOT_MINUTES`]), counted by whole
    /// minutes, so over up to a minute more; `outbox_backed_up` enables the
    /// counter-target rule.
    pub(crate) fn report(
        &self,
        window: Duration,
        limit: usize,
        shown: &dyn Fn(&str) -> bool,
        outbox_backed_up: bool,
    ) -> Result<InsightsReport> {
        let window_s = window.as_secs();
        if !(1..=HOT_SPOT_MINUTES * 60).contains(&window_s) {
            return Err(Error::InvalidQuery(format!(
                "window is 1 to {} seconds",
                HOT_SPOT_MINUTES * 60
            )));
        }
        if limit == 0 || limit > HOT_SPOTS_LIMIT_MAX {
            return Err(Error::InvalidQuery(format!(
                "limit is 1 to {HOT_SPOTS_LIMIT_MAX}"
            )));
        }
        let t = self.lock();
        let elapsed = t.started.elapsed();
        // Every minute the window reaches into, the one it starts in
        // included: they cover the window and up to a minute more.
        let first = elapsed.as_secs().saturating_sub(window_s) / 60;
        let mut merged: HashMap<u64, Entry> = HashMap::new();
        for minute in t.minutes.iter().filter(|m| m.index >= first) {
            for (hash, entry) in &minute.entries {
                match merged.get_mut(hash) {
                    None => {
                        merged.insert(*hash, entry.clone());
                    }
                    Some(into) => {
                        into.score += entry.score;
                        into.error += entry.error;
                        into.counts.merge(&entry.counts);
                        for (source, n) in &entry.sources {
                            into.count_source(source.as_ref(), *n);
                        }
                        into.other_sources += entry.other_sources;
                    }
                }
            }
        }
        let covered_s = (elapsed.as_secs_f64() - (first * 60) as f64).max(1.0);
        // The caller's `shown` runs after the tracker is let go: the
        // committer takes it after every group, so a slow one stalled every
        // commit, and one that wrote (or asked for insights) deadlocked.
        drop(t);
        let mut entries: Vec<Entry> = merged.into_values().filter(|e| shown(&e.collection)).collect();
        // Ties in a fixed order, so rows do not swap places between two
        // reports of the same counts, nor a limit cut among them by chance.
        entries.sort_by(|a, b| {
            b.score
                .cmp(&a.score)
                .then_with(|| a.collection.cmp(&b.collection))
                .then_with(|| a.target.cmp(&b.target))
        });
        let hot_spots = entries
            .into_iter()
            .take(limit)
            .map(|mut e| {
                e.sources.sort_by_key(|s| std::cmp::Reverse(s.1));
                HotSpot {
                    remedy: remedy(&e.target, &e.counts, outbox_backed_up),
                    collection: e.collection.to_string(),
                    rate_per_s: e.score as f64 / covered_s,
                    target: e.target,
                    score: e.score,
                    error: e.error,
                    counts: e.counts,
                    sources: e
                        .sources
                        .into_iter()
                        .map(|(s, n)| (s.map(|s| s.to_string()), n))
                        .collect(),
                    other_sources: e.other_sources,
                }
            })
            .collect();
        Ok(InsightsReport {
            window_s,
            covered_s,
            hot_spots,
        })
    }
}

impl Tracker {
    fn minute(&mut self, now: Instant) -> &mut Minute {
        let index = now.saturating_duration_since(self.started).as_secs() / 60;
        if self.minutes.back().is_none_or(|m| m.index != index) {
            self.minutes.push_back(Minute {
                index,
                entries: HashMap::new(),
            });
        }
        while self
            .minutes
            .front()
            .is_some_and(|m| m.index + HOT_SPOT_MINUTES_KEPT <= index)
        {
            self.minutes.pop_front();
        }
        self.minutes.back_mut().expect("just pushed")
    }

    fn label(
        &mut self,
        family: Family,
        reason: &'static str,
        collection: &Arc<str>,
        source: Option<&Arc<str>>,
    ) {
        let source = source.cloned().unwrap_or_else(empty);
        let key = (family, reason, Arc::clone(collection), source);
        if let Some(n) = self.labelled.get_mut(&key) {
            *n += 1;
        } else if self.labelled.len() < INSIGHT_LABEL_SETS_MAX {
            self.labelled.insert(key, 1);
        } else {
            let other: Arc<str> = Arc::from("_other");
            *self
                .labelled
                .entry((family, reason, Arc::clone(&other), other))
                .or_insert(0) += 1;
        }
    }

    fn hot(
        &mut self,
        collection: &Arc<str>,
        target: Target,
        kind: Kind,
        source: Option<&Arc<str>>,
        now: Instant,
    ) {
        match kind {
            Kind::Conflict { code, .. } => {
                self.label(Family::Conflicts, CONFLICT_CODES[code], collection, source)
            }
            Kind::Retry { counted: true } => self.label(Family::Retries, "", collection, source),
            Kind::PermanentFailure { counted: true } => {
                self.label(Family::PermanentFailures, "", collection, source)
            }
            Kind::Retry { counted: false } | Kind::PermanentFailure { counted: false } => {}
            Kind::Overwrite => self.label(Family::Overwrites, "", collection, source),
            Kind::NoOp => self.noops += 1,
            Kind::Skipped => self.skipped += 1,
            Kind::OutboxDeltas(_) | Kind::Contended(_) => {}
        }
        if matches!(&target, Target::Range(what) if what.is_empty()) {
            // A snapshot too old names no document or range.
            return;
        }
        let hash = target_hash(collection, &target);
        let capacity = self.capacity;
        self.minute(now)
            .record(capacity, hash, collection, target, kind, source);
    }

    fn absorb_one(&mut self, event: Event, now: Instant) {
        match event {
            Event::Replayed => self.replays += 1,
            Event::Expired(n) => self.ttl_deleted += n,
            Event::Purged(n) => self.tombstones_purged += n,
            Event::Hot {
                collection,
                target,
                kind,
                source,
            } => self.hot(&collection, target, kind, source.as_ref(), now),
            Event::Changed {
                hash,
                source,
                blind_put,
            } => {
                self.writes += 1;
                let window = Duration::from_millis(LAST_WRITER_WINDOW_MS);
                // Only named sources can overwrite one another: writes without a
                // source (most embedded ones) skip the map and cost nothing here.
                let previous = match &source {
                    Some(_) => self.remember_writer(hash, source.clone(), now),
                    None => None,
                };
                if let (Some((collection, id)), Some((Some(before), at)), Some(now_source)) =
                    (blind_put, previous, source.as_ref())
                    && before != *now_source
                    && now.saturating_duration_since(at) <= window
                {
                    self.hot(
                        &collection,
                        Target::Document(id),
                        Kind::Overwrite,
                        Some(now_source),
                        now,
                    );
                }
                if let Some(entry) = self.minute(now).entries.get_mut(&hash) {
                    entry.counts.writes += 1;
                }
            }
        }
    }

    /// Records who changed document `hash` last, returning who did before.
    fn remember_writer(
        &mut self,
        hash: u64,
        source: Option<Arc<str>>,
        now: Instant,
    ) -> Option<(Option<Arc<str>>, Instant)> {
        if self.last_writers.len() >= LAST_WRITERS_MAX && !self.last_writers.contains_key(&hash) {
            let window = Duration::from_millis(LAST_WRITER_WINDOW_MS);
            self.last_writers
                .retain(|_, (_, at)| now.saturating_duration_since(*at) <= window);
            if self.last_writers.len() >= LAST_WRITERS_MAX {
                // Everything is recent: forget it all rather than grow. Overwrites
                // in the next moments may go unnoticed; memory stays bounded.
                self.last_writers.clear();
            }
        }
        self.last_writers.insert(hash, (source, now))
    }

    fn bytes(&self) -> usize {
        let entries: usize = self
            .minutes
            .iter()
            .map(|m| {
                m.entries.capacity() * (std::mem::size_of::<u64>() + 8)
                    + m.entries.values().map(Entry::bytes).sum::<usize>()
            })
            .sum();
        let labels = self.labelled.capacity() * (std::mem::size_of::<LabelKey>() + 16);
        let writers =
            self.last_writers.capacity() * (std::mem::size_of::<(u64, (Option<Arc<str>>, Instant))>() + 8);
        entries + labels + writers
    }
}

/// Whether a refused full replace (`new`: its body and canonical JSON)
/// differs from the current document only in numbers: same fields, and every
/// differing value a number on both sides. Read from the form the conflict
/// holds the current body in, neither decoded nor encoded for this.
pub(crate) fn numbers_only(new: (&crate::doc::Body, &[u8]), current: BodyForm<'_>) -> bool {
    match current {
        BodyForm::Decoded(current) => numbers_only_values(new.0, current),
        BodyForm::Canonical(current) => numbers_only_json(new.1, current),
    }
}

/// [`numbers_only`] of two decoded bodies, walking their values.
fn numbers_only_values(new: &crate::doc::Body, current: &crate::doc::Body) -> bool {
    use serde_json::Value;
    fn same_shape(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(_), Value::Number(_)) => true,
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_shape(v, w)))
            }
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same_shape(v, w))
            }
            (a, b) => a == b,
        }
    }
    // A body holds no `_` field.
    new.len() == current.len()
        && new
            .iter()
            .all(|(k, v)| current.get(k).is_some_and(|w| same_shape(v, w)))
        && new != current
}

/// [`numbers_only`] of two canonical encodings (keys sorted, no `_` keys),
/// walked in step: the same bytes but for the numbers, one of which
/// differs. Held to [`numbers_only_values`] by a property test.
fn numbers_only_json(new: &[u8], current: &[u8]) -> bool {
    let starts_number = |b: u8| b == b'-' || b.is_ascii_digit();
    let number_len = |json: &[u8]| {
        json.iter()
            .take_while(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
            .count()
    };
    let (mut i, mut j, mut differs) = (0, 0, false);
    let (mut in_string, mut escaped) = (false, false);
    while i < new.len() && j < current.len() {
        let b = new[i];
        if !in_string && starts_number(b) && starts_number(current[j]) {
            let (n, m) = (number_len(&new[i..]), number_len(&current[j..]));
            differs |= new[i..i + n] != current[j..j + m];
            (i, j) = (i + n, j + m);
            continue;
        }
        if b != current[j] {
            return false;
        }
        if escaped {
            escaped = false;
        } else if in_string && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            in_string = !in_string;
        }
        (i, j) = (i + 1, j + 1);
    }
    i == new.len() && j == current.len() && differs
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_position_constants_name_their_codes() {
        assert_eq!(CONFLICT_CODES[NOT_FOUND], "not_found");
        assert_eq!(CONFLICT_CODES[READ_CONFLICT], "read_conflict");
        assert_eq!(CONFLICT_CODES[SNAPSHOT_TOO_OLD], "snapshot_too_old");
    }
    use super::*;

    fn coll() -> Arc<str> {
        Arc::from("c")
    }

    /// A source becomes a metrics label written as is: a `"` or `\` in it
    /// would break every scrape.
    #[test]
    fn a_source_keeps_what_a_label_can_hold() {
        let kept = |s: &str| Origin::source(s).source.map(|s| s.to_string());
        assert_eq!(kept("transferFunds"), Some("transferFunds".into()));
        assert_eq!(kept("a\"b\\c d\u{1}é"), Some("abc d".into()));
        assert_eq!(kept("\"\\"), None);
        assert_eq!(kept(&"x".repeat(100)).map(|s| s.len()), Some(SOURCE_BYTES_MAX));
    }

    #[test]
    fn key_hash_is_xxh3_of_the_joined_key_on_the_stack_and_off_it() {
        let long_range = "r".repeat(2 * ID_BYTES_MAX);
        for (tag, collection, name) in [
            (0, "c", "a"),
            (0, "counters", "hot"),
            (0, "c", "x".repeat(ID_BYTES_MAX).as_str()),
            (1, "c", long_range.as_str()),
        ] {
            let mut joined = vec![tag];
            joined.extend_from_slice(collection.as_bytes());
            joined.push(0);
            joined.extend_from_slice(name.as_bytes());
            assert_eq!(
                key_hash(tag, collection, name),
                xxhash_rust::xxh3::xxh3_64(&joined)
            );
        }
        assert_ne!(key_hash(0, "ab", "c"), key_hash(0, "a", "bc"));
        assert_ne!(
            document_hash("c", "r"),
            target_hash("c", &Target::Range("r".into()))
        );
    }

    fn conflict(id: &str, source: &str) -> Event {
        Event::Hot {
            collection: coll(),
            target: Target::Document(id.into()),
            kind: Kind::Conflict {
                code: 0,
                numbers_only: false,
            },
            source: Some(Arc::from(source)),
        }
    }

    #[test]
    fn a_million_distinct_documents_stay_within_the_configured_size() {
        let insights = Insights::new(64).unwrap();
        let mut events = Vec::with_capacity(10_000);
        for chunk in 0..100 {
            for i in 0..10_000 {
                events.push(conflict(&format!("doc-{chunk}-{i}"), "s"));
            }
            insights.absorb(&mut events, 1, 0, None);
        }
        let stats = insights.stats((0, None), 0);
        assert!(stats.tracked_keys <= 64, "tracked {}", stats.tracked_keys);
        // 64 entries with short ids, the label map and the summary's table.
        assert!(
            stats.tracker_bytes < 64 * 1024,
            "tracker holds {} bytes",
            stats.tracker_bytes
        );
        let conflicts: u64 = stats.labelled.iter().map(|l| l.4).sum();
        assert_eq!(conflicts, 1_000_000);
    }

    /// Puts the tracker's start `ago` before now, as if it had run that long.
    fn started_ago(insights: &Insights, ago: Duration) {
        insights.lock().started = Instant::now()
            .checked_sub(ago)
            .expect("the clock goes back that far");
    }

    fn hot(report: &InsightsReport) -> Vec<String> {
        report
            .hot_spots
            .iter()
            .map(|h| format!("{:?}", h.target))
            .collect()
    }

    #[test]
    fn a_window_covers_every_minute_it_reaches_into() {
        let insights = Insights::new(16).unwrap();
        started_ago(&insights, Duration::from_secs(55));
        insights.absorb(&mut vec![conflict("early", "s")], 1, 0, None);
        // 61 s in: the conflict of 6 s ago is in the last minute, though in
        // the minute before the current one.
        started_ago(&insights, Duration::from_secs(61));
        let report = insights
            .report(Duration::from_secs(60), 10, &|_| true, false)
            .unwrap();
        assert_eq!(
            hot(&report),
            vec![format!("{:?}", Target::Document("early".into()))]
        );
        // (Bands wide enough for a test thread descheduled a while.)
        assert!((61.0..70.0).contains(&report.covered_s), "{}", report.covered_s);
        // The longest window reaches into 61 minutes, and they are kept.
        started_ago(&insights, Duration::from_secs(3630));
        insights.absorb(&mut vec![conflict("late", "s")], 1, 0, None);
        let report = insights
            .report(Duration::from_secs(3600), 10, &|_| true, false)
            .unwrap();
        assert_eq!(report.hot_spots.len(), 2, "{:?}", hot(&report));
        assert!(
            (3630.0..3639.0).contains(&report.covered_s),
            "{}",
            report.covered_s
        );
        // Past it, the first minute is out of every window, and dropped.
        started_ago(&insights, Duration::from_secs(3670));
        insights.absorb(&mut vec![conflict("later", "s")], 1, 0, None);
        // (Only minutes with events are kept: the next is the "late" one's.)
        assert_eq!(insights.lock().minutes.front().map(|m| m.index), Some(60));
        let report = insights
            .report(Duration::from_secs(3600), 10, &|_| true, false)
            .unwrap();
        assert!(
            !hot(&report).iter().any(|h| h.contains("early")),
            "{:?}",
            hot(&report)
        );
    }

    #[test]
    fn a_heavy_key_survives_a_flood_of_distinct_ones() {
        let insights = Insights::new(16).unwrap();
        let mut events = Vec::new();
        for i in 0..20_000 {
            events.push(conflict(&format!("noise-{i}"), "s"));
            if i % 10 == 0 {
                events.push(conflict("hot", "s"));
            }
        }
        insights.absorb(&mut events, 1, 0, None);
        let report = insights
            .report(Duration::from_secs(60), 1, &|_| true, false)
            .unwrap();
        assert_eq!(report.hot_spots[0].target, Target::Document("hot".into()));
        assert!(report.hot_spots[0].score >= 2000);
    }

    #[test]
    fn label_sets_are_bounded() {
        let insights = Insights::new(8).unwrap();
        let mut events: Vec<Event> = (0..INSIGHT_LABEL_SETS_MAX + 100)
            .map(|i| conflict("d", &format!("source-{i}")))
            .collect();
        insights.absorb(&mut events, 1, 0, None);
        let stats = insights.stats((0, None), 0);
        assert_eq!(stats.labelled.len(), INSIGHT_LABEL_SETS_MAX + 1);
        let other = stats.labelled.iter().find(|l| l.3 == "_other").unwrap();
        assert_eq!(other.4, 100);
    }

    #[test]
    fn remedies_follow_the_documented_rules() {
        let doc = Target::Document("d".into());
        let mut c = HotCounts::default();
        c.conflicts[0] = 10;
        c.numbers_only = 6;
        assert_eq!(remedy(&doc, &c, false).code, "use_update_operators");
        c.numbers_only = 2;
        assert_eq!(remedy(&doc, &c, false).code, "reduce_contention");
        // Writes of a document that is not there are no contention.
        let mut absent = HotCounts::default();
        absent.conflicts[NOT_FOUND] = 3;
        assert_eq!(remedy(&doc, &absent, false).code, "write_missing_document");
        absent.conflicts[0] = 4;
        assert_eq!(remedy(&doc, &absent, false).code, "reduce_contention");
        // Nor are writes of a value a unique index holds.
        let mut taken = HotCounts::default();
        taken.conflicts[UNIQUE_VIOLATION] = 2;
        assert_eq!(remedy(&doc, &taken, false).code, "unique_value_taken");
        taken.conflicts[0] = 3;
        assert_eq!(remedy(&doc, &taken, false).code, "reduce_contention");
        let mut c = HotCounts {
            overwrites: 5,
            ..HotCounts::default()
        };
        assert_eq!(remedy(&doc, &c, false).code, "send_version");
        c.overwrites = 0;
        c.noops = 8;
        c.writes = 2;
        assert_eq!(remedy(&doc, &c, false).code, "deduplicate_writes");
        let mut c = HotCounts::default();
        c.conflicts[READ_CONFLICT] = 3;
        assert_eq!(
            remedy(&Target::Range("index by_x range".into()), &c, false).code,
            "narrow_range"
        );
        let c = HotCounts {
            outbox_deltas: 100,
            ..HotCounts::default()
        };
        assert_eq!(remedy(&doc, &c, true).code, "counter_target_hot");
        assert_eq!(remedy(&doc, &c, false).code, "none");
        let c = HotCounts {
            contended: 50,
            writes: 60,
            ..HotCounts::default()
        };
        assert_eq!(remedy(&doc, &c, false).code, "split_if_throughput_bound");
    }

    #[test]
    fn numbers_only_compares_fields_and_values() {
        let body = |v: serde_json::Value| crate::doc::body_from_value(v).unwrap();
        // Both forms of the current body answer each case.
        let numbers_only = |new, current| {
            let (new, current) = (body(new), body(current));
            let canonical = [&new, &current].map(crate::doc::canonical_bytes);
            let by_values = numbers_only((&new, &canonical[0]), BodyForm::Decoded(&current));
            let by_json = numbers_only((&new, &canonical[0]), BodyForm::Canonical(&canonical[1]));
            assert_eq!(by_values, by_json, "{new:?} against {current:?}");
            by_json
        };
        use serde_json::json;
        assert!(numbers_only(
            json!({"n": 2, "name": "a"}),
            json!({"n": 1, "name": "a"})
        ));
        assert!(numbers_only(
            json!({"a": [1, {"x": -2.5}], "s": "1"}),
            json!({"a": [10, {"x": 3e40}], "s": "1"})
        ));
        // Another string, another key, a missing field, no change at all.
        assert!(!numbers_only(
            json!({"n": 2, "name": "b"}),
            json!({"n": 1, "name": "a"})
        ));
        assert!(!numbers_only(json!({"n": 2, "m": 1}), json!({"n": 1})));
        assert!(!numbers_only(json!({"n": 2}), json!({"n": 1, "m": 1})));
        assert!(!numbers_only(json!({"m": 2}), json!({"n": 1})));
        assert!(!numbers_only(json!({"n": 1}), json!({"n": 1})));
        // Digits in a string are text; a number against anything else, or
        // arrays of other lengths, differ in shape.
        assert!(!numbers_only(json!({"s": "12"}), json!({"s": "13"})));
        assert!(!numbers_only(json!({"s": "a\\\"1"}), json!({"s": "a\\\"2"})));
        assert!(!numbers_only(json!({"n": 1}), json!({"n": "1"})));
        assert!(!numbers_only(json!({"n": 1}), json!({"n": null})));
        assert!(!numbers_only(json!({"a": [1, 2]}), json!({"a": [1]})));
        assert!(!numbers_only(json!({"a": [1]}), json!({"a": [1, 2]})));
    }

    /// The walk over canonical bytes answers as the walk over decoded
    /// values: for a body against itself with some of its numbers changed,
    /// and against another body.
    #[test]
    fn numbers_only_answers_as_the_decoded_bodies_compare() {
        use proptest::prelude::*;
        use serde_json::Value;
        /// `value` with its numbers replaced, in order, by `by`'s (`None`:
        /// kept), after its last one by none.
        fn renumber(value: &Value, by: &mut impl Iterator<Item = Option<Value>>) -> Value {
            match value {
                Value::Number(_) => by.next().flatten().unwrap_or_else(|| value.clone()),
                Value::Array(items) => Value::Array(items.iter().map(|v| renumber(v, by)).collect()),
                Value::Object(map) => {
                    Value::Object(map.iter().map(|(k, v)| (k.clone(), renumber(v, by))).collect())
                }
                other => other.clone(),
            }
        }
        let body = || {
            prop::collection::btree_map(
                "[a-z_\"\\\\0-9]{0,3}",
                crate::doc::tests::punctuated_values(),
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().filter(|(k, _)| !k.starts_with('_')).collect()))
        };
        let number = prop_oneof![
            any::<i64>().prop_map(Value::from),
            (-1e20..1e20_f64)
                .prop_filter("not -0", |f| *f != 0.0)
                .prop_map(Value::from),
        ];
        let numbers = prop::collection::vec(prop::option::of(number), 0..40);
        // How often each answer came: both must.
        let seen = [
            std::sync::atomic::AtomicUsize::new(0),
            std::sync::atomic::AtomicUsize::new(0),
        ];
        proptest!(|(current in body(), other in body(), numbers in numbers)| {
            let renumbered = renumber(&current, &mut numbers.into_iter());
            for new in [renumbered, other] {
                let (n, c) = (
                    crate::doc::body_from_value(new).unwrap(),
                    crate::doc::body_from_value(current.clone()).unwrap(),
                );
                let reference = numbers_only_values(&n, &c);
                let walked = numbers_only_json(&crate::doc::canonical_bytes(&n), &crate::doc::canonical_bytes(&c));
                prop_assert_eq!(walked, reference, "{:?} against {:?}", n, c);
                seen[usize::from(walked)].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let seen = seen.map(|n| n.into_inner());
        assert!(seen[0] > 0 && seen[1] > 0, "false and true answers: {seen:?}");
    }

    #[test]
    fn origins_cut_sources_and_read_attempts() {
        let long = "x".repeat(200);
        assert_eq!(Origin::source(&long).source.unwrap().len(), SOURCE_BYTES_MAX);
        assert_eq!(Origin::source("").source, None);
        let o = Origin::source("a").attempt(3, Some(3));
        assert!(o.is_retry() && o.is_last_attempt());
        assert!(!Origin::source("a").attempt(1, None).is_last_attempt());
    }
}
