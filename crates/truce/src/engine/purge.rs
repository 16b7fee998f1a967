//! Tombstone purge, the part readers share: where each collection's purge
//! has got to (its horizon), stored in the meta space in the commit that
//! purges, and the check that refuses a reader that could have missed a
//! purged delete.
//!
//! A collection configured with `tombstones.keep_seconds` has its tombstones
//! removed once they are that old: the document record and its change-log
//! entry go, in one commit of the committer's own (`committer/background.rs`,
//! `purge_tombstones`). A reader that could have missed one of their
//! deletes is refused ([`Error::HistoryPurged`]) rather than shown a history
//! with holes ([`check`]); from 0 (a reader that holds nothing) the feed is
//! whole.

use std::ops::Bound;

use crate::error::{Error, Result};
use crate::record;
use crate::storage::{Space, StorageRead};

/// Meta-space prefix of each collection's horizon: `purged 0x00 collection`
/// → `{"seq", "id"}`, the change-log position of the last entry purged.
pub const HORIZON_PREFIX: &[u8] = b"purged\0";

/// Meta-space key of the highest horizon of every collection (a counter
/// record): what the feed of every collection is checked against.
pub const HORIZON_MAX: &[u8] = b"purged_max";

/// The meta-space key of `collection`'s horizon.
pub fn horizon_key(collection: &str) -> Vec<u8> {
    [HORIZON_PREFIX, collection.as_bytes()].concat()
}

/// A collection's horizon as stored.
pub fn encode_horizon(seq: u64, id: &str) -> Vec<u8> {
    record::encode_json(&serde_json::json!({"seq": seq, "id": id}))
}

/// The change-log position `(seq, id)` of the last entry of `collection`
/// purged, if any was.
pub fn horizon(view: &dyn StorageRead, collection: &str) -> Result<Option<(u64, String)>> {
    let Some(bytes) = view.get(Space::Meta, &horizon_key(collection))? else {
        return Ok(None);
    };
    let value = record::decode_json(&bytes)?;
    match (value["seq"].as_u64(), value["id"].as_str()) {
        (Some(seq), Some(id)) => Ok(Some((seq, id.to_string()))),
        _ => Err(Error::Storage(crate::storage::StorageError::Corrupt(format!(
            "the tombstone purge horizon of {collection:?} is not {{\"seq\", \"id\"}}"
        )))),
    }
}

/// Refuses a reader of the feed of `collection` (`None`: every collection)
/// at position `at` — a whole commit, `(seq, None)`, or a place within one,
/// `(seq, Some(id))` (an RxDB checkpoint) — whose history began at commit
/// `from`, when a tombstone it may not have seen was purged.
///
/// The reader holds a document only from a read of it that came after its
/// start; a delete that committed before that read left a tombstone the
/// reader's later pages pass, or (when purged) a document it never holds. So
/// what it can miss is the purge of a delete after `from`, at a position
/// after `at`: refused while the horizon is past both. A reader from 0 holds
/// nothing (`at` 0); one whose start is not known (`from` `None`) is not
/// checked. The feed of every collection is checked against the highest
/// horizon of all.
pub fn check(
    view: &dyn StorageRead,
    collection: Option<&str>,
    at: (u64, Option<&str>),
    from: Option<u64>,
) -> Result<()> {
    let Some(from) = from.filter(|_| is_checked(at.0, from)) else {
        return Ok(());
    };
    let (seq, id) = match collection {
        Some(c) => match horizon(view, c)? {
            Some((seq, id)) => (seq, Some(id)),
            None => return Ok(()),
        },
        None => match view.get(Space::Meta, HORIZON_MAX)? {
            Some(bytes) => (record::decode_counter(&bytes)?, None),
            None => return Ok(()),
        },
    };
    let reached = match (at.1, id.as_deref()) {
        (Some(at_id), Some(id)) => (at.0, at_id) >= (seq, id),
        _ => at.0 >= seq,
    };
    if from >= seq || reached {
        return Ok(());
    }
    Err(Error::HistoryPurged {
        since: at.0,
        purged: seq,
    })
}

/// Whether [`check`] looks at the horizon for a reader at commit `at`
/// whose history began at `from`: not for one that holds nothing (`at` 0),
/// nor for one whose start is not known.
pub fn is_checked(at: u64, from: Option<u64>) -> bool {
    at > 0 && from.is_some()
}

/// The bound after which a collection's purge goes on when this process has
/// not looked yet: past its horizon, since every entry up to it was looked at
/// (each one before it was live, or purged).
pub fn resume_after(view: &dyn StorageRead, collection: &str) -> Result<Bound<Vec<u8>>> {
    Ok(match horizon(view, collection)? {
        Some((seq, id)) => Bound::Excluded(super::tx::changes_key(collection.as_bytes(), seq, id.as_bytes())),
        None => Bound::Included(super::tx::changes_key(collection.as_bytes(), 0, b"")),
    })
}
