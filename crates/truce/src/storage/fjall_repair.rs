//! Repair of a torn last journal batch, which fjall refuses to recover from.
//!
//! fjall discards a last batch without its End by itself, but one whose End
//! is there and that fails its checksum, or whose item count does not match
//! its items (a torn write whose later page reached the disk before an
//! earlier one), makes it refuse to open. Such a batch was never
//! acknowledged — its fsync did not finish — so, like PostgreSQL and SQLite
//! treat a bad record at the end of their logs, we drop exactly that batch:
//! after keeping a copy of the journal, cut the newest journal file back to
//! the end of the last whole batch. We only cut when fjall refused the open
//! and [`buried_damage`] found no whole batch after the cut; any other
//! damage is left alone and reported.
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

/// Syncs every journal file under `dir`. An open recovers whatever the
/// journal holds, including batches still in the page cache only (written,
/// and their process killed before their fsync): what the open then serves
/// and records as the last commit (the commit mark) must be on the disk,
/// not lost at the next power cut. PostgreSQL syncs its data directory at
/// the start of a crash recovery for the same reason.
pub fn sync_journals(dir: &Path) -> std::io::Result<()> {
    for (_, path) in journals(dir) {
        std::fs::File::open(&path)?.sync_all()?;
    }
    Ok(())
}

/// The newest journal file under `dir` and its number.
pub(super) fn newest_journal(dir: &Path) -> Option<(u64, PathBuf)> {
    journals(dir).pop()
}

/// How much of a journal file is data: up to its last byte that is not zero
/// (`tail_cut` says why; an End ends in `FJL\x03`, never a zero).
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
             that file at byte {} (truncate -s {} FILE), and remove any newer journal files and the \
             commit mark, `last-commit`",
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
/// does: the file and the offset of its first batch that is not whole.
fn broken_tail(dir: &Path) -> std::io::Result<Option<(PathBuf, Vec<u8>, usize)>> {
    let Some((_, journal)) = newest_journal(dir) else {
        return Ok(None);
    };
    let bytes = std::fs::read(&journal)?;
    Ok(tail_cut(&bytes).map(|at| (journal, bytes, at)))
}

/// Where a journal file's `bytes` must be cut to keep only its whole
/// batches: the start of the first that is not whole, if one is. The
/// file's data ends before the zeroes that follow it: fjall makes each new
/// journal 64 MiB long, `fjall_journal.rs` writes zeroes ahead of its end,
/// and only a reopen shrinks it to its data.
fn tail_cut(bytes: &[u8]) -> Option<usize> {
    first_broken(&bytes[..data_len(bytes)], &mut None)
}

/// Cuts the last batch off the newest journal in `dir`, for an open that
/// fjall refused for it (its checksum fails, or its item count does not
/// match its items: a batch torn by a crash, whose later page reached the
/// disk before an earlier one), keeping a copy of the file beside it as
/// `N.jnl.torn`. Returns the copy's path if anything was cut: nothing is
/// when the newest journal is whole batches (the
/// refusal was about something else).
///
/// Called only after [`buried_damage`] found no whole batch after the first
/// one that is not, so what is cut is the journal's last batch, and no
/// acknowledged commit follows it.
pub fn cut_torn_tail(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let Some((journal, bytes, cut)) = broken_tail(dir)? else {
        return Ok(None);
    };
    let copy = journal.with_extension("jnl.torn");
    std::fs::write(&copy, &bytes)?;
    let file = std::fs::File::options().write(true).open(&journal)?;
    file.set_len(cut as u64)?;
    file.sync_all()?;
    tracing::warn!(
        journal = %journal.display(),
        at = cut,
        dropped_bytes = data_len(&bytes) - cut,
        copy = %copy.display(),
        "dropped a torn, unacknowledged last journal batch that the storage refused to recover"
    );
    Ok(Some(copy))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole batch of one item (`key` → `value`) numbered `seqno`, or
    /// with a checksum that fails.
    fn batch(seqno: u64, key: &[u8], corrupt: bool) -> Vec<u8> {
        let mut item = vec![ITEM_TAG, 0, 0];
        item.extend_from_slice(&7u64.to_le_bytes());
        item.extend_from_slice(&(key.len() as u16).to_le_bytes());
        item.extend_from_slice(&1u32.to_le_bytes());
        item.extend_from_slice(&1u32.to_le_bytes());
        item.extend_from_slice(key);
        item.push(b'v');
        let mut out = vec![START_TAG, 1, 0, 0, 0];
        out.extend_from_slice(&seqno.to_le_bytes());
        out.extend_from_slice(&item);
        let sum = xxhash_rust::xxh3::xxh3_64(&item) ^ u64::from(corrupt);
        out.push(END_TAG);
        out.extend_from_slice(&sum.to_le_bytes());
        out.extend_from_slice(END_TRAILER);
        out
    }

    #[test]
    fn cuts_at_the_first_batch_that_is_not_whole() {
        let first = batch(1, b"first key", false);
        let good = [first.clone(), batch(2, b"second", false)].concat();
        assert_eq!(tail_cut(&good), None);
        let torn = [first.clone(), batch(2, b"second", true)].concat();
        assert_eq!(tail_cut(&torn), Some(first.len()), "a checksum that fails");
        assert_eq!(tail_cut(&batch(1, b"only", true)), Some(0));
        assert_eq!(
            tail_cut(&good[..good.len() - 1]),
            Some(first.len()),
            "an End cut short"
        );
        let mut counted = good.clone();
        counted[first.len() + 1] = 2;
        assert_eq!(
            tail_cut(&counted),
            Some(first.len()),
            "an item count that does not match"
        );
        let older = [first.clone(), batch(1, b"second", false)].concat();
        assert_eq!(
            tail_cut(&older),
            Some(first.len()),
            "a sequence number not above the one before"
        );
        assert_eq!(tail_cut(b""), None);
        // A new journal's data is followed by zeroes up to its preallocated length.
        let zeroes = vec![0; 4096];
        assert_eq!(tail_cut(&[&good[..], &zeroes].concat()), None);
        assert_eq!(tail_cut(&[&torn[..], &zeroes].concat()), Some(first.len()));
        assert_eq!(tail_cut(&zeroes), None);
    }
}
