//! Tombstone purge, the part readers share: where each collection's purge
//! has got to (its horizon), stored in the meta space in the commit that
//! purges, and the check that refuses a feed position before it.
//!
//! A collection configured with `tombstones.keep_seconds` has its tombstones
//! removed once they are that old: the document record and its change-log
//! entry go, in one commit of the committer's own (`committer/background.rs`,
//! `purge_tombstones`). A reader of the feed from a position before the last
//! entry purged could have missed a delete, so it is refused
//! ([`Error::HistoryPurged`]) rather than shown a history with holes; from 0
//! (a reader that holds nothing) the feed is whole.

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
/// from position `since`, a whole commit, when tombstones after it were
/// purged: a reader there has seen every change up to and including commit
/// `since`, so the purge of anything in a later commit could hide a delete.
pub fn check_since(view: &dyn StorageRead, collection: Option<&str>, since: u64) -> Result<()> {
    if since == 0 {
        return Ok(());
    }
    let purged = match collection {
        Some(c) => horizon(view, c)?.map(|(seq, _)| seq),
        None => match view.get(Space::Meta, HORIZON_MAX)? {
            Some(bytes) => Some(record::decode_counter(&bytes)?),
            None => None,
        },
    };
    match purged {
        Some(purged) if purged > since => Err(Error::HistoryPurged { since, purged }),
        _ => Ok(()),
    }
}

/// [`check_since`] for a position within a commit, `(seq, id)` (an RxDB
/// checkpoint): a reader there has seen commit `seq` up to document `id`.
pub fn check_after(view: &dyn StorageRead, collection: &str, after: (u64, &str)) -> Result<()> {
    if after.0 == 0 {
        return Ok(());
    }
    match horizon(view, collection)? {
        Some((seq, id)) if (seq, id.as_str()) > after => Err(Error::HistoryPurged {
            since: after.0,
            purged: seq,
        }),
        _ => Ok(()),
    }
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
