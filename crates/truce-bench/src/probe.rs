//! The machine line: how many cores, and how fast this disk makes a small write
//! durable — the one number that bounds every durable benchmark here.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::stats::{Recorder, per_second};

/// Bytes appended before each sync, one page as a database log would.
const PROBE_WRITE_BYTES: usize = 4096;

/// How long the fsync probe runs.
const PROBE_DURATION: Duration = Duration::from_secs(1);

/// Size the probe file is preallocated to, so the syncs measure data, not file
/// growth (growing roughly halves the sync rate on ext4). 64 MiB holds 16k
/// appends, more than a second of syncs on any disk we know.
const PROBE_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// What the benchmark runs on.
pub struct Machine {
    /// Cores available to this process.
    pub cores: usize,
    /// 4 KiB append + fdatasync rounds per second into a preallocated file.
    pub syncs_per_s: f64,
    /// The median of one such round, in µs.
    pub sync_p50_us: u64,
    /// The same rounds into a sparse file (its length set, no block written),
    /// as fjall's journal is: each sync also makes the new blocks' allocation
    /// durable, which is what a group commit pays whenever its journal entries
    /// reach a block not written before.
    pub sparse_syncs_per_s: f64,
    /// The median of one such round, in µs.
    pub sparse_sync_p50_us: u64,
    /// Where the probe and the databases live.
    pub dir: PathBuf,
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "machine: {} cores; fsync probe (4 KiB append + fdatasync) {:.0} syncs/s, p50 {} µs into a \
             preallocated file, {:.0} syncs/s, p50 {} µs into a sparse one (as a fjall journal); dir {}",
            self.cores,
            self.syncs_per_s,
            self.sync_p50_us,
            self.sparse_syncs_per_s,
            self.sparse_sync_p50_us,
            self.dir.display()
        )
    }
}

/// Counts the cores and measures the disk under `dir` for about two seconds.
pub fn probe(dir: &Path) -> io::Result<Machine> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let scratch = tempfile::tempdir_in(dir)?;
    let open = |name: &str| {
        OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(scratch.path().join(name))
    };
    let mut file = open("fsync-probe")?;
    // Really allocate the blocks (writing zeroes; set_len alone leaves a hole that
    // the first write of each block would allocate) and make that durable first.
    let zeroes = vec![0u8; 1024 * 1024];
    for _ in 0..PROBE_FILE_BYTES / zeroes.len() as u64 {
        file.write_all(&zeroes)?;
    }
    file.sync_all()?;
    file.seek(SeekFrom::Start(0))?;
    let (syncs_per_s, sync_p50_us) = sync_rounds(&mut file)?;
    let mut sparse = open("fsync-probe-sparse")?;
    sparse.set_len(PROBE_FILE_BYTES)?;
    sparse.sync_all()?;
    let (sparse_syncs_per_s, sparse_sync_p50_us) = sync_rounds(&mut sparse)?;
    Ok(Machine {
        cores,
        syncs_per_s,
        sync_p50_us,
        sparse_syncs_per_s,
        sparse_sync_p50_us,
        dir: dir.to_path_buf(),
    })
}

/// 4 KiB writes, each followed by fdatasync, from the start of `file` for
/// [`PROBE_DURATION`]: rounds per second and the median round in µs.
fn sync_rounds(file: &mut std::fs::File) -> io::Result<(f64, u64)> {
    let page = vec![0xA5u8; PROBE_WRITE_BYTES];
    let mut rounds = Recorder::default();
    let mut written = 0u64;
    let started = Instant::now();
    while started.elapsed() < PROBE_DURATION && written + (PROBE_WRITE_BYTES as u64) <= PROBE_FILE_BYTES {
        let t0 = Instant::now();
        file.write_all(&page)?;
        file.sync_data()?;
        rounds.latency(t0.elapsed());
        rounds.ok += 1;
        written += PROBE_WRITE_BYTES as u64;
    }
    Ok((
        per_second(rounds.ok, started.elapsed()),
        rounds.percentile_us(0.5),
    ))
}
