//! The commit mark: the last commit known durable, recorded outside the
//! storage (`last-commit` in the data directory), so that an open can tell a
//! storage that lost acknowledged commits from one that never had them.
//!
//! The storage's own checks see damage *inside* its files. They cannot see
//! files taken away whole: a journal file removed, or replaced by an older
//! copy, or the space that lists fjall's spaces removed, all open as a
//! smaller database, as if the lost commits had never been made — and the
//! sequence numbers they held are handed out again. The mark is written
//! once a second by a thread of its own (never by the committer, never on a
//! request's path) and when the database closes, each time with the durable
//! watermark: a commit is only in it after its fsync (at open, the last
//! commit recovered, after the storage synced its journal), so after any
//! crash the storage holds at least as much. An open whose storage holds less is
//! refused ([`verify`]): after a clean stop, every loss that reaches the last
//! commit; after a crash, one that reaches back past the last write of the
//! mark. (Commits lost while the last one stays, an older journal file
//! removed, say, are the storage's own checks' business, and not all are
//! caught: `docs/reliability.md`.)
//!
//! The file is 24 bytes, written in place (no rename: nothing of the
//! directory changes) and synced: `TRUCEMK1`, the sequence number and an
//! XXH3-64 of the two, little-endian. A file whose checksum fails (a write
//! torn by a crash, in a sector, is not expected) is reported and ignored:
//! the mark guards against loss, and is never a reason to lose more.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Shared;
use super::committer::{META_LAST_SEQ, read_meta_counter};
use crate::error::{Error, Result};
use crate::storage::{StorageError, StorageRead};

/// The mark's file in the data directory.
pub const COMMIT_MARK_FILE: &str = "last-commit";

/// How often the mark is brought up to the durable watermark.
const COMMIT_MARK_EVERY: Duration = Duration::from_secs(1);

const MAGIC: &[u8; 8] = b"TRUCEMK1";
const MARK_BYTES: usize = 24;

fn encode(seq: u64) -> [u8; MARK_BYTES] {
    let mut bytes = [0; MARK_BYTES];
    bytes[..8].copy_from_slice(MAGIC);
    bytes[8..16].copy_from_slice(&seq.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..16]);
    bytes[16..].copy_from_slice(&sum.to_le_bytes());
    bytes
}

/// The sequence number a mark's bytes record, if they are a whole mark.
fn decode(bytes: &[u8]) -> Option<u64> {
    let bytes: &[u8; MARK_BYTES] = bytes.try_into().ok()?;
    let sum = u64::from_le_bytes(bytes[16..].try_into().ok()?);
    (bytes[..8] == *MAGIC && xxhash_rust::xxh3::xxh3_64(&bytes[..16]) == sum)
        .then(|| u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")))
}

/// What the mark in a data directory says.
enum Found {
    /// There is none (a database made before marks, or by a backup).
    Absent,
    /// There is one that cannot be read or does not decode (logged).
    Unreadable,
    /// The last commit it records.
    At(u64),
}

fn read(dir: &Path) -> Found {
    let path = dir.join(COMMIT_MARK_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Found::Absent,
        Err(e) => {
            tracing::warn!(file = %path.display(), "cannot read the commit mark, so it is not checked: {e}");
            return Found::Unreadable;
        }
    };
    match decode(&bytes) {
        Some(seq) => Found::At(seq),
        None => {
            tracing::warn!(
                file = %path.display(),
                bytes = bytes.len(),
                "the commit mark is not whole, so it is not checked (it is written anew)"
            );
            Found::Unreadable
        }
    }
}

/// What comparing a storage with its commit mark found ([`lost_commits`]).
#[derive(Debug, PartialEq, Eq)]
pub enum MarkCheck {
    /// The storage holds every commit the mark records (or there is no mark).
    Held,
    /// There is a mark, but it cannot be read or does not decode: nothing
    /// was compared.
    Unreadable,
    /// The storage lost commits: why, for the refusal.
    Lost(String),
}

/// Refuses `storage`, the database in `dir`, if it holds fewer commits than
/// the mark there records: it lost acknowledged ones ([`lost_commits`]).
/// `Db::open` calls this before its committer starts.
pub fn verify(dir: &Path, storage: &dyn StorageRead) -> Result<()> {
    match lost_commits(dir, storage)? {
        MarkCheck::Lost(why) => Err(Error::Storage(StorageError::Corrupt(why))),
        MarkCheck::Held | MarkCheck::Unreadable => Ok(()),
    }
}

/// Compares `storage`, the database in `dir`, with the mark there; an error
/// only where the storage cannot be read (`truce check` tells the two
/// apart: `commits_lost`, or damage).
pub fn lost_commits(dir: &Path, storage: &dyn StorageRead) -> Result<MarkCheck> {
    let marked = match read(dir) {
        Found::Absent => return Ok(MarkCheck::Held),
        Found::Unreadable => return Ok(MarkCheck::Unreadable),
        Found::At(seq) => seq,
    };
    let last = read_meta_counter(storage, META_LAST_SEQ)?;
    if last >= marked {
        return Ok(MarkCheck::Held);
    }
    let file = dir.join(COMMIT_MARK_FILE);
    Ok(MarkCheck::Lost(format!(
        "{}: {} records that commits up to seq {marked} were made durable, but the storage holds \
         commits only up to seq {last}: it lost acknowledged commits (a journal file removed, cut or \
         replaced by an older copy, or a space's files removed). If a backup was just copied into \
         this directory, the mark is the replaced database's: remove {} (a restore should replace the \
         whole directory). Otherwise restore the data directory from a backup, replacing the whole \
         directory; or, to open it with what it holds and accept the loss, remove the mark",
        dir.display(),
        file.display(),
        file.display()
    )))
}

/// The thread that keeps the mark: brought up to the durable watermark
/// every [`COMMIT_MARK_EVERY`], and a last time when the database closes.
pub(super) struct MarkKeeper {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MarkKeeper {
    /// Writes the mark in `dir` at the durable watermark of `shared` (the
    /// last commit recovered, synced by the storage's open: `FjallStorage`
    /// syncs its journal files before it answers), then keeps it on a
    /// thread of its own. `None`, logged, where the mark cannot be kept (its
    /// file not writable, say): the database opens as it did before there
    /// was a mark, and only this check is lost.
    pub(super) fn start(dir: &Path, shared: Arc<Shared>) -> Option<MarkKeeper> {
        let path = dir.join(COMMIT_MARK_FILE);
        let started = Mark::open(dir)
            .and_then(|mut mark| mark.write(shared.watermark.durable_seq()).map(|()| mark))
            .and_then(|mark| {
                let (stop, stopped) = std::sync::mpsc::channel();
                std::thread::Builder::new()
                    .name("truce-mark".into())
                    .spawn(move || keep(mark, &shared, &stopped))
                    .map(|thread| MarkKeeper {
                        stop: Some(stop),
                        thread: Some(thread),
                    })
            });
        match started {
            Ok(keeper) => Some(keeper),
            Err(e) => {
                tracing::error!(
                    file = %path.display(),
                    "cannot keep the commit mark, so an open cannot tell whether commits were lost: {e}"
                );
                None
            }
        }
    }
}

impl Drop for MarkKeeper {
    /// Writes the last mark (the committer has answered everything by then)
    /// and waits for it.
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn keep(mut mark: Mark, shared: &Shared, stopped: &Receiver<()>) {
    loop {
        let closing = match stopped.recv_timeout(COMMIT_MARK_EVERY) {
            Err(RecvTimeoutError::Timeout) => false,
            Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
        };
        if let Err(e) = mark.write(shared.watermark.durable_seq()) {
            // The storage's own syncs fail on such a disk too; the mark
            // is tried again at its next turn.
            tracing::warn!(file = %mark.path.display(), "cannot write the commit mark: {e}");
        }
        if closing {
            return;
        }
    }
}

/// The mark's file, open for writing, and what it last recorded.
struct Mark {
    path: PathBuf,
    file: std::fs::File,
    written: Option<u64>,
}

impl Mark {
    fn open(dir: &Path) -> std::io::Result<Mark> {
        let path = dir.join(COMMIT_MARK_FILE);
        let existed = match std::fs::symlink_metadata(&path) {
            // A link is not followed: writing through it rewrote a file
            // outside the data directory (a review's probe).
            Ok(meta) if !meta.file_type().is_file() => {
                return Err(std::io::Error::other("it is not a regular file"));
            }
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        let mut file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if !existed {
            // The file's name must survive a crash as its content does.
            std::fs::File::open(dir)?.sync_all()?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(Mark {
            path,
            file,
            written: decode(&bytes),
        })
    }

    /// Records `seq` and syncs it, if it is not what the file holds.
    fn write(&mut self, seq: u64) -> std::io::Result<()> {
        if self.written == Some(seq) {
            return Ok(());
        }
        self.file.seek(std::io::SeekFrom::Start(0))?;
        self.file.write_all(&encode(seq))?;
        self.file.set_len(MARK_BYTES as u64)?;
        self.file.sync_data()?;
        self.written = Some(seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_reads_back_and_a_damaged_one_is_not_a_mark() {
        let bytes = encode(1_234_567);
        assert_eq!(decode(&bytes), Some(1_234_567));
        for at in 0..MARK_BYTES {
            let mut damaged = bytes;
            damaged[at] ^= 1;
            assert_eq!(decode(&damaged), None, "a flip at byte {at}");
        }
        assert_eq!(decode(&bytes[..MARK_BYTES - 1]), None);
        assert_eq!(decode(&[bytes.as_slice(), &[0]].concat()), None);
        assert_eq!(decode(b""), None);
    }
}
