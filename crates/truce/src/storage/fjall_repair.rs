//! Repair of a torn final journal batch, which fjall refuses to recover from.
//!
//! fjall discards an *incomplete* last batch by itself, but a last batch that is
//! complete in shape and fails its checksum (a torn write whose later page reached
//! the disk before an earlier one) makes it refuse to open. Such a batch was never
//! acknowledged — its fsync did not finish — so, like PostgreSQL and SQLite treat a
//! bad checksum at the end of their logs, we drop exactly that batch: after keeping
//! a copy of the journal, cut the newest journal file back to the end of the
//! previous batch. We only cut when we have verified that the final batch really
//! fails its checksum; any other damage is left alone and reported.
//!
//! Damage anywhere else is worse than an error in fjall: its journal reader
//! takes any entry it cannot decode for the end of the journal and cuts the
//! file there, so one bad byte in the middle silently dropped every later,
//! acknowledged commit, for good. [`buried_damage`] looks for that before
//! fjall opens the journal, and the open is refused instead.
//!
//! fjall 3 journal entries: `Start = 0x01 count:u32 seqno:u64`, then `count`
//! items — `Item = 0x02 value_type:u8 compression:u8 keyspace:u64 key_len:u16
//! value_len:u32 stored_len:u32 key value` or `Clear = 0x04 keyspace:u64` —,
//! then `End = 0x03 checksum:u64 "FJL" 0x03`, the checksum being XXH3-64 of the
//! raw item bytes between them.

use std::path::{Path, PathBuf};

const START_TAG: u8 = 1;
const ITEM_TAG: u8 = 2;
const END_TAG: u8 = 3;
const CLEAR_TAG: u8 = 4;
const END_TRAILER: &[u8] = b"FJL\x03";
/// Tag, checksum, trailer.
const END_BYTES: usize = 1 + 8 + END_TRAILER.len();
/// Tag, item count, seqno.
const START_BYTES: usize = 1 + 4 + 8;
/// Tag, value type, compression, keyspace, key length, value length, stored
/// value length.
const ITEM_HEADER_BYTES: usize = 1 + 1 + 1 + 8 + 2 + 4 + 4;
/// Tag, keyspace.
const CLEAR_BYTES: usize = 1 + 8;

/// The journal files under `dir` with their numbers (fjall names them
/// `N.jnl`), oldest first.
fn journals(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "jnl")
                && let Some(n) = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u64>().ok())
            {
                found.push((n, p));
            }
        }
    }
    found.sort();
    found
}

/// The newest journal file under `dir` and its number.
pub(super) fn newest_journal(dir: &Path) -> Option<(u64, PathBuf)> {
    journals(dir).pop()
}

/// How much of a journal file is data: up to its last byte that is not zero
/// (`torn_tail_cut` says why).
fn data_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1)
}

/// Where the batch that starts at `pos` of `bytes` ends, and its sequence
/// number, if a whole one does: a Start, as many items as it says, and an
/// End whose checksum matches them (which does not cover the Start's
/// sequence number: [`buried_damage`] checks that they go up).
fn batch_end(bytes: &[u8], pos: usize) -> Option<(usize, u64)> {
    let read = |at: usize, n: usize| bytes.get(at..at.checked_add(n)?);
    let number = |at: usize, n: usize| {
        read(at, n).map(|b| {
            b.iter()
                .rev()
                .fold(0u64, |sum, &byte| (sum << 8) | u64::from(byte))
        })
    };
    if *bytes.get(pos)? != START_TAG {
        return None;
    }
    let count = number(pos + 1, 4)?;
    let seqno = number(pos + 5, 8)?;
    let items = pos + START_BYTES;
    let mut at = items;
    for _ in 0..count {
        at = match *bytes.get(at)? {
            ITEM_TAG => {
                let key = number(at + 11, 2)? as usize;
                let stored = number(at + 17, 4)? as usize;
                at.checked_add(ITEM_HEADER_BYTES + key)?.checked_add(stored)?
            }
            CLEAR_TAG => at + CLEAR_BYTES,
            _ => return None,
        };
    }
    let end = at.checked_add(END_BYTES)?;
    let checksum = number(at + 1, 8)?;
    let sound = *bytes.get(at)? == END_TAG
        && read(end - END_TRAILER.len(), END_TRAILER.len())? == END_TRAILER
        && xxhash_rust::xxh3::xxh3_64(bytes.get(items..at)?) == checksum;
    sound.then_some((end, seqno))
}

/// Journal damage with intact commits after it, which opening would drop.
#[derive(Debug, PartialEq, Eq)]
pub struct BuriedDamage {
    /// The journal file where the damage is.
    pub journal: PathBuf,
    /// Its offset: the start of the first batch that is not whole.
    pub at: usize,
    /// The file and offset of the first whole batch found after it.
    pub intact: (PathBuf, usize),
}

impl std::fmt::Display for BuriedDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the journal {} is damaged at byte {}, and intact commits follow it ({} from byte {}); \
             opening would drop them for good, so it is refused. Restore the data directory from a \
             backup; or, to keep only the commits before the damage, copy the directory, then cut \
             that file at byte {} (truncate -s {} FILE) and remove any newer journal files",
            self.journal.display(),
            self.at,
            self.intact.0.display(),
            self.intact.1,
            self.at,
            self.at
        )
    }
}

/// Damage in the journal files under `dir` that is not a torn tail: a
/// batch that is not whole with a whole batch after it, in the same file
/// or a newer one. Only the last batch can be torn by a crash (each is
/// synced before the next is written), so a whole batch after damage is
/// one that was acknowledged. A batch whose sequence number is not above
/// the one before is damaged too: fjall takes each batch's number under
/// its journal's lock, so they only go up, and one lowered made fjall
/// take the batch's writes for older than those they replaced (a stale
/// document served).
pub fn buried_damage(dir: &Path) -> std::io::Result<Option<BuriedDamage>> {
    let mut damage: Option<(PathBuf, usize)> = None;
    let mut last_seqno = None;
    for (_, path) in journals(dir) {
        let bytes = std::fs::read(&path)?;
        let bytes = &bytes[..data_len(&bytes)];
        let mut from = 0;
        if damage.is_none()
            && let Some(at) = first_broken(bytes, &mut last_seqno)
        {
            damage = Some((path.clone(), at));
            from = at + 1;
        }
        if let Some((journal, at)) = &damage
            && let Some(intact) = (from..bytes.len()).find(|&q| batch_end(bytes, q).is_some())
        {
            return Ok(Some(BuriedDamage {
                journal: journal.clone(),
                at: *at,
                intact: (path, intact),
            }));
        }
    }
    Ok(None)
}

/// Where the first batch of `bytes` (a journal file's data) that is not
/// whole starts, or whose sequence number is not above `last_seqno`, the
/// number of the batch before, which it updates as it goes.
fn first_broken(bytes: &[u8], last_seqno: &mut Option<u64>) -> Option<usize> {
    let mut from = 0;
    while from < bytes.len() {
        match batch_end(bytes, from).filter(|&(_, seqno)| last_seqno.is_none_or(|last| seqno > last)) {
            Some((end, seqno)) => {
                from = end;
                *last_seqno = Some(seqno);
            }
            None => return Some(from),
        }
    }
    None
}

/// Where the newest journal under `dir` stops being whole batches, if it
/// does: for the message of an open fjall refused for its last batch.
pub fn broken_tail(dir: &Path) -> Option<(PathBuf, usize)> {
    let (_, journal) = newest_journal(dir)?;
    let bytes = std::fs::read(&journal).ok()?;
    let at = first_broken(&bytes[..data_len(&bytes)], &mut None)?;
    Some((journal, at))
}
fn end_marker_at(bytes: &[u8], end: usize) -> bool {
    end >= END_BYTES
        && bytes[end - END_BYTES] == END_TAG
        && &bytes[end - END_TRAILER.len()..end] == END_TRAILER
}

/// Where the newest journal must be cut to drop a final batch that fails its
/// checksum; `None` if the final batch is sound (or the file is not understood).
///
/// The journal's data ends before the zeroes that follow it: fjall makes each
/// new journal 64 MiB long, `fjall_journal.rs` writes zeroes ahead of its end,
/// and only a reopen shrinks it to its data. An End entry ends in `FJL\x03`,
/// never a zero, so a complete final batch ends at the last byte that is not one.
fn torn_tail_cut(bytes: &[u8]) -> Option<usize> {
    let len = data_len(bytes);
    let bytes = &bytes[..len];
    if !end_marker_at(bytes, len) {
        return None; // Incomplete tails are fjall's own business.
    }
    let batch_start = (0..len - END_BYTES)
        .rev()
        .find(|&end| end == 0 || end_marker_at(bytes, end))?;
    let items = bytes.get(batch_start + START_BYTES..len - END_BYTES)?;
    let stored = u64::from_le_bytes(
        bytes[len - END_BYTES + 1..len - END_TRAILER.len()]
            .try_into()
            .ok()?,
    );
    (xxhash_rust::xxh3::xxh3_64(items) != stored).then_some(batch_start)
}

/// Cuts a torn final batch off the newest journal in `dir`, keeping a copy of the
/// file beside it as `N.jnl.torn`. Returns the copy's path if anything was cut.
pub fn cut_torn_tail(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let Some((_, journal)) = newest_journal(dir) else {
        return Ok(None);
    };
    let bytes = std::fs::read(&journal)?;
    let Some(cut) = torn_tail_cut(&bytes) else {
        return Ok(None);
    };
    let copy = journal.with_extension("jnl.torn");
    std::fs::write(&copy, &bytes)?;
    let file = std::fs::File::options().write(true).open(&journal)?;
    file.set_len(cut as u64)?;
    file.sync_all()?;
    tracing::warn!(
        journal = %journal.display(),
        dropped_bytes = bytes.len() - cut,
        copy = %copy.display(),
        "dropped a torn, unacknowledged final journal batch that failed its checksum"
    );
    Ok(Some(copy))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(items: &[u8], corrupt: bool) -> Vec<u8> {
        let mut out = vec![1, 1, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0];
        out.extend_from_slice(items);
        let sum = xxhash_rust::xxh3::xxh3_64(items) ^ u64::from(corrupt);
        out.push(END_TAG);
        out.extend_from_slice(&sum.to_le_bytes());
        out.extend_from_slice(END_TRAILER);
        out
    }

    #[test]
    fn cuts_only_a_final_batch_that_fails_its_checksum() {
        let good = [batch(b"first items", false), batch(b"second", false)].concat();
        assert_eq!(torn_tail_cut(&good), None);
        let torn = [batch(b"first items", false), batch(b"second", true)].concat();
        assert_eq!(torn_tail_cut(&torn), Some(batch(b"first items", false).len()));
        assert_eq!(torn_tail_cut(&batch(b"only", true)), Some(0));
        assert_eq!(
            torn_tail_cut(&good[..good.len() - 1]),
            None,
            "incomplete tails are left to fjall"
        );
        assert_eq!(torn_tail_cut(b""), None);
        // A new journal's data is followed by zeroes up to its preallocated length.
        let zeroes = vec![0; 4096];
        assert_eq!(torn_tail_cut(&[&good[..], &zeroes].concat()), None);
        assert_eq!(
            torn_tail_cut(&[&torn[..], &zeroes].concat()),
            Some(batch(b"first items", false).len())
        );
        assert_eq!(torn_tail_cut(&zeroes), None);
    }
}
