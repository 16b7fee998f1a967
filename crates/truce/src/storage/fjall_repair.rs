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
//! fjall 3 journal entries: `Start = 0x01 count:u32 seqno:u64`, items, then
//! `End = 0x03 checksum:u64 "FJL" 0x03`, the checksum being XXH3-64 of the raw
//! item bytes between them.

use std::path::{Path, PathBuf};

const END_TAG: u8 = 3;
const END_TRAILER: &[u8] = b"FJL\x03";
/// Tag, checksum, trailer.
const END_BYTES: usize = 1 + 8 + END_TRAILER.len();
/// Tag, item count, seqno.
const START_BYTES: usize = 1 + 4 + 8;

/// The newest journal file under `dir` and its number (fjall names them `N.jnl`).
pub(super) fn newest_journal(dir: &Path) -> Option<(u64, PathBuf)> {
    let mut newest: Option<(u64, PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).ok()?.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "jnl")
                && let Some(n) = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u64>().ok())
                && newest.as_ref().is_none_or(|(m, _)| n > *m)
            {
                newest = Some((n, p));
            }
        }
    }
    newest
}

/// Whether an End entry ends exactly at `end` in `bytes`.
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
    let len = bytes.iter().rposition(|&b| b != 0).map_or(0, |last| last + 1);
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
/// file beside it as `N.jnl.torn`. Returns whether anything was cut.
pub fn cut_torn_tail(dir: &Path) -> std::io::Result<bool> {
    let Some((_, journal)) = newest_journal(dir) else {
        return Ok(false);
    };
    let bytes = std::fs::read(&journal)?;
    let Some(cut) = torn_tail_cut(&bytes) else {
        return Ok(false);
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
    Ok(true)
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
