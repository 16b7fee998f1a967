//! Writing zeroes ahead of fjall's journal, so its fdatasync writes data only.
//!
//! fjall makes each journal file with `set_len`: a sparse file. Every append
//! then lands in a hole, the file system allocates blocks, and the next
//! fdatasync must write the inode too — on ext4 a second synchronous write
//! before the data's, about 40 % more time per sync on this machine (the
//! benchmark's probe: sparse against preallocated). PostgreSQL fills its WAL
//! segments with zeroes before use for the same reason.
//!
//! So before each batch the committer writes, this makes sure the next stretch
//! of the active journal is real zeroes (written and synced a chunk at a time,
//! [`ZERO_AHEAD_BYTES`]). It cannot change what the journal holds:
//!
//! - it only ever writes zeroes into a hole, which reads as zeroes already —
//!   the file system is asked first (`SEEK_DATA`), and a range holding any data
//!   is left alone;
//! - it runs under the lock `FjallStorage::apply` holds until its batch is in
//!   the journal, and nothing else appends to the journal (fjall's flushes
//!   write tables, and a journal rotation syncs the old file and creates the
//!   next one empty: `journal::writer::Writer::rotate` in fjall 3.1; check it
//!   again when fjall moves), so no append can land between that check and
//!   the write;
//! - it never changes a file's length.
//!
//! It only decides *where* to write from an estimate of how far fjall has
//! appended (an upper bound of each batch's encoded size); a wrong estimate
//! costs speed (a sync over a hole now and then), never data. Where the file
//! system cannot report holes (`SEEK_DATA` says everything is data) it writes
//! nothing; after a failure of its own (a full disk) it stops until the
//! storage is reopened. Linux only; elsewhere a no-op.

use std::path::Path;

#[cfg(target_os = "linux")]
use super::fjall_repair::newest_journal;

/// Zeroes written ahead of the journal's end at a time.
pub const ZERO_AHEAD_BYTES: u64 = 1024 * 1024;

/// The journal file being written, and how far it is known to be filled.
#[cfg(target_os = "linux")]
struct Active {
    id: u64,
    path: std::path::PathBuf,
    file: std::fs::File,
    /// Bytes from the start that are data or written zeroes.
    filled: u64,
    /// An upper bound of where fjall's next append starts.
    end: u64,
}

/// Zero-filling ahead of a fjall database's active journal.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(super) struct ZeroAhead {
    dir: std::path::PathBuf,
    #[cfg(target_os = "linux")]
    active: Option<Active>,
    /// A call failed (a full disk, a file system without `lseek` holes): no
    /// more filling until the storage is reopened, rather than a failing
    /// system call or a directory walk before every batch.
    stopped: bool,
}

impl ZeroAhead {
    pub(super) fn new(dir: &Path) -> ZeroAhead {
        ZeroAhead {
            dir: dir.to_path_buf(),
            #[cfg(target_os = "linux")]
            active: None,
            stopped: false,
        }
    }

    /// Before a batch of about `bytes` is appended: make sure the stretch it
    /// lands in is written zeroes. Errors are the caller's to log; they cost
    /// speed, not data, and stop the filling for good.
    #[cfg(target_os = "linux")]
    pub(super) fn before_append(&mut self, bytes: u64) -> std::io::Result<()> {
        if self.stopped {
            return Ok(());
        }
        let filled = self.fill_for(bytes);
        self.stopped = filled.is_err();
        filled
    }

    #[cfg(target_os = "linux")]
    fn fill_for(&mut self, bytes: u64) -> std::io::Result<()> {
        self.follow_rotation()?;
        let Some(active) = &mut self.active else {
            return Ok(());
        };
        if active.end + bytes > active.filled {
            fill(active, bytes)?;
        }
        active.end += bytes;
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn before_append(&mut self, _bytes: u64) -> std::io::Result<()> {
        Ok(())
    }

    /// Switches to the newest journal when fjall has started another one.
    #[cfg(target_os = "linux")]
    fn follow_rotation(&mut self) -> std::io::Result<()> {
        if let Some(active) = &self.active
            && !active
                .path
                .with_file_name(format!("{}.jnl", active.id + 1))
                .exists()
        {
            return Ok(());
        }
        let Some((id, path)) = newest_journal(&self.dir) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no fjall journal (N.jnl) in {}", self.dir.display()),
            ));
        };
        if self.active.as_ref().is_some_and(|a| a.id == id) {
            return Ok(());
        }
        let file = std::fs::OpenOptions::new().write(true).open(&path)?;
        // Everything up to the first hole may be data.
        let end = seek(&file, 0, libc::SEEK_HOLE)?.unwrap_or(0);
        self.active = Some(Active {
            id,
            path,
            file,
            filled: end,
            end,
        });
        Ok(())
    }
}

/// Writes zeroes from `active.filled` to [`ZERO_AHEAD_BYTES`] past where an
/// append of `bytes` may end (within the file's length), where the file system
/// reports a hole, then syncs them.
#[cfg(target_os = "linux")]
fn fill(active: &mut Active, bytes: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = active.file.metadata()?.len();
    // Data at or after `filled`: fjall appended further than estimated, and
    // everything up to the hole after it is fjall's. Start from there.
    if seek(&active.file, active.filled, libc::SEEK_DATA)?.is_some() {
        let hole = seek(&active.file, active.filled, libc::SEEK_HOLE)?.unwrap_or(len);
        if seek(&active.file, hole, libc::SEEK_DATA)?.is_some() {
            // Data after a hole: not a journal being appended. Leave it.
            return Ok(());
        }
        active.filled = hole;
        active.end = active.end.max(hole);
    }
    let want = (active.end + bytes + ZERO_AHEAD_BYTES).min(len);
    if want <= active.filled {
        return Ok(());
    }
    let zeroes = vec![0u8; (want - active.filled) as usize];
    active.file.write_all_at(&zeroes, active.filled)?;
    active.file.sync_data()?;
    active.filled = want;
    Ok(())
}

/// `lseek(fd, offset, whence)`; `None` where there is no such region (ENXIO).
#[cfg(target_os = "linux")]
fn seek(file: &std::fs::File, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor `file` keeps open.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if at >= 0 {
        return Ok(Some(at as u64));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::fs::{File, OpenOptions};
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::storage::{Durability, FjallStorage, Space, Storage, StorageRead, WriteBatch};

    /// Length of the hand-made journals (fjall's are 64 MiB).
    const JOURNAL_BYTES: u64 = 8 * 1024 * 1024;
    const MIB: usize = 1024 * 1024;

    /// A sparse journal `<id>.jnl` in `dir`, as fjall makes one.
    fn journal(dir: &Path, id: u64) -> File {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join(format!("{id}.jnl")))
            .unwrap();
        file.set_len(JOURNAL_BYTES).unwrap();
        file
    }

    fn first_hole(file: &File) -> u64 {
        seek(file, 0, libc::SEEK_HOLE).unwrap().unwrap()
    }

    /// Whether the file system under `dir` reports holes at all; where it does
    /// not, there is nothing to fill and nothing these tests can see.
    fn reports_holes(dir: &Path) -> bool {
        let probe = journal(dir, 999_999);
        let holes = first_hole(&probe) < JOURNAL_BYTES;
        std::fs::remove_file(dir.join("999999.jnl")).unwrap();
        if !holes {
            eprintln!("this file system reports no holes: nothing to check");
        }
        holes
    }

    /// A directory holding journal 0 with 100 bytes of data (0xAB) and a
    /// `ZeroAhead` on it; `None` where the file system reports no holes.
    fn journal_with_data() -> Option<(tempfile::TempDir, File, ZeroAhead)> {
        let dir = tempfile::tempdir().unwrap();
        if !reports_holes(dir.path()) {
            return None;
        }
        let file = journal(dir.path(), 0);
        file.write_all_at(&[0xAB; 100], 0).unwrap();
        let zero_ahead = ZeroAhead::new(dir.path());
        Some((dir, file, zero_ahead))
    }

    fn read(file: &File, at: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, at).unwrap();
        bytes
    }

    #[test]
    fn the_stretch_after_the_journals_end_is_written_before_the_append() {
        let Some((_dir, file, mut zero_ahead)) = journal_with_data() else {
            return;
        };
        assert!(first_hole(&file) < ZERO_AHEAD_BYTES);
        zero_ahead.before_append(200).unwrap();
        assert!(
            first_hole(&file) >= 300 + ZERO_AHEAD_BYTES,
            "{}",
            first_hole(&file)
        );
        assert_eq!(read(&file, 0, 100), vec![0xAB; 100]);
        assert_eq!(
            file.metadata().unwrap().len(),
            JOURNAL_BYTES,
            "the length is fjall's"
        );
    }

    #[test]
    fn zeroes_never_land_on_data_even_when_the_estimate_falls_short() {
        let Some((_dir, file, mut zero_ahead)) = journal_with_data() else {
            return;
        };
        zero_ahead.before_append(10).unwrap();
        // fjall appends far more than was estimated: over the zeroes and on
        // into the hole after them.
        file.write_all_at(&vec![0xCD; 3 * MIB], 100).unwrap();
        // Estimates big enough to make it fill again.
        zero_ahead.before_append(ZERO_AHEAD_BYTES).unwrap();
        zero_ahead.before_append(ZERO_AHEAD_BYTES).unwrap();
        assert_eq!(read(&file, 0, 100), vec![0xAB; 100]);
        assert!(
            read(&file, 100, 3 * MIB).iter().all(|&b| b == 0xCD),
            "data was zeroed"
        );
        // It went on after the data instead.
        assert!(first_hole(&file) > (3 * MIB) as u64 + ZERO_AHEAD_BYTES);
    }

    #[test]
    fn a_failure_stops_the_filling_until_reopened() {
        let dir = tempfile::tempdir().unwrap();
        if !reports_holes(dir.path()) {
            return;
        }
        let mut zero_ahead = ZeroAhead::new(dir.path());
        // No journal where one is expected: an error, once.
        assert!(zero_ahead.before_append(10).is_err());
        let file = journal(dir.path(), 0);
        zero_ahead.before_append(10).unwrap();
        assert_eq!(first_hole(&file), 0, "stopped: nothing filled");
        // A new one (a reopened storage) fills again.
        ZeroAhead::new(dir.path()).before_append(10).unwrap();
        assert!(first_hole(&file) >= ZERO_AHEAD_BYTES);
    }

    #[test]
    fn a_new_journal_is_followed_and_the_old_one_left_as_it_is() {
        let Some((dir, old, mut zero_ahead)) = journal_with_data() else {
            return;
        };
        zero_ahead.before_append(10).unwrap();
        let old_filled = first_hole(&old);
        let new = journal(dir.path(), 1);
        zero_ahead.before_append(10).unwrap();
        assert!(first_hole(&new) >= ZERO_AHEAD_BYTES);
        zero_ahead.before_append(2 * ZERO_AHEAD_BYTES).unwrap();
        assert_eq!(first_hole(&old), old_filled);
        assert!(first_hole(&new) >= 3 * ZERO_AHEAD_BYTES);
    }

    #[test]
    fn a_fjall_storage_appends_into_written_zeroes_and_reads_back_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        if !reports_holes(dir.path()) {
            return;
        }
        let value = vec![7u8; 64 * 1024];
        {
            let storage = FjallStorage::open(dir.path()).unwrap();
            // 3 MiB of batches: it fills ahead more than once.
            for i in 0..48u32 {
                let mut batch = WriteBatch::new();
                batch.put(Space::Documents, i.to_be_bytes().to_vec(), value.clone());
                storage.apply(batch, Durability::Immediate).unwrap();
            }
            let (_, path) = newest_journal(dir.path()).unwrap();
            let file = File::open(path).unwrap();
            assert!(first_hole(&file) > 3 * ZERO_AHEAD_BYTES, "{}", first_hole(&file));
        }
        let storage = FjallStorage::open(dir.path()).unwrap();
        for i in 0..48u32 {
            let got = storage.get(Space::Documents, &i.to_be_bytes()).unwrap();
            assert_eq!(got.as_deref(), Some(&value[..]), "key {i}");
        }
    }
}
