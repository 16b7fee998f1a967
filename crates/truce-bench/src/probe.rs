//! The machine line: how many cores of which CPU, how long waking a sleeping
//! thread on the other core takes, and how fast this disk makes a small write
//! durable — the numbers that bound every durable benchmark here. A group
//! commit is a chain of such wake-ups (request, committer, answer, client) and
//! one fsync per group, so two runs of the same build are comparable only when
//! these figures are close.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
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

/// Round trips the wake-up probe times (20–60 µs each on a VM whose idle vCPUs
/// halt, a few µs on bare metal: a third of a second at most).
const WAKE_ROUNDS: usize = 5_000;

/// Round trips before the timed ones (thread start, first faults).
const WAKE_WARMUP: usize = 100;

/// Round trips the cache-line probe times: about 1 ms when the two cores share
/// a cache (~50 ns each), 7 ms when they do not (~330 ns on this project's VM
/// when its host places the two vCPUs far apart).
const LINE_ROUNDS: u64 = 20_000;

/// Round trips before the timed ones.
const LINE_WARMUP: u64 = 1_000;

/// The cache-line probe gives up past this (a busy machine: a spinning thread
/// waiting for one that is not running), rather than spin for seconds.
const LINE_DEADLINE: Duration = Duration::from_millis(100);

/// What the benchmark runs on.
pub struct Machine {
    /// Cores available to this process.
    pub cores: usize,
    /// The CPU's model name, as `/proc/cpuinfo` gives it (a VM's host can change
    /// between runs, and with it every figure).
    pub cpu: String,
    /// The wake-up probe: two threads, on different cores where there are two,
    /// pass one byte back and forth over a socket pair, each blocked in `read`
    /// until the other writes. Median round trip (two wake-ups), in µs.
    pub wake_p50_us: f64,
    /// The same round trips' 99th percentile, in µs.
    pub wake_p99_us: f64,
    /// Where the probe's two threads ran: `on two cores`, `on one core`, or
    /// (if this process's cores could not be read) where the scheduler put them.
    pub wake_placement: &'static str,
    /// The cache-line probe ([`cache_line_round_trip_ns`]): ns for one
    /// cache line to go to the other core and back; `None` on one core.
    pub line_ns: Option<f64>,
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
            "machine: {} cores ({}); wake-up probe (two threads {} ping-pong over a socket pair) \
             round trip p50 {:.1} µs, p99 {:.1} µs; cache-line probe (the same, spinning on one \
             cache line) round trip {}; fsync probe (4 KiB append + fdatasync) {:.0} syncs/s, \
             p50 {} µs into a preallocated file, {:.0} syncs/s, p50 {} µs into a sparse one (as a fjall \
             journal); dir {}",
            self.cores,
            self.cpu,
            self.wake_placement,
            round1(self.wake_p50_us),
            round1(self.wake_p99_us),
            show_line_ns(self.line_ns),
            self.syncs_per_s.round(),
            self.sync_p50_us,
            self.sparse_syncs_per_s.round(),
            self.sparse_sync_p50_us,
            self.dir.display()
        )
    }
}

impl Machine {
    /// The same figures as one JSON object (`machine.json` beside a `peers`
    /// run's results, so that the results say which machine made them).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "cores": self.cores,
            "cpu": self.cpu,
            "wake_round_trip_p50_us": round1(self.wake_p50_us),
            "wake_round_trip_p99_us": round1(self.wake_p99_us),
            "wake_placement": self.wake_placement,
            "line_round_trip_ns": self.line_ns.map(f64::round),
            "syncs_per_s": self.syncs_per_s.round(),
            "sync_p50_us": self.sync_p50_us,
            "sparse_syncs_per_s": self.sparse_syncs_per_s.round(),
            "sparse_sync_p50_us": self.sparse_sync_p50_us,
            "dir": self.dir.display().to_string(),
        })
    }
}

/// `x` to one decimal: the machine line and machine.json show the same figure.
fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// tmpfs and ramfs, by `statfs`'s magic number: file systems in memory.
const MEMORY_FS_MAGIC: [(u32, &str); 2] = [(0x0102_1994, "tmpfs"), (0x8584_58f6, "ramfs")];

/// Refuses a `dir` whose file system lives in memory (tmpfs, ramfs, as `/tmp`
/// is on several distributions): an fsync there makes nothing durable, so every
/// durable system would be measured without its disk and the figures would
/// compare nothing a user runs. The error says what to pass instead.
pub fn check_on_disk(dir: &Path) -> Result<(), String> {
    match memory_file_system(dir) {
        Ok(None) => Ok(()),
        Ok(Some(kind)) => Err(format!(
            "{} is on a {kind} (memory): fsync there makes nothing durable, so nothing \
             durable would be measured; pass --dir with a directory on the disk to \
             measure (e.g. --dir target)",
            dir.display()
        )),
        Err(e) => Err(format!(
            "cannot tell which file system holds {}: {e}",
            dir.display()
        )),
    }
}

/// Where the bench works without `--dir`: the system temp dir, or `/var/tmp`
/// where that is in memory (a tmpfs `/tmp`, as on several distributions,
/// while `/var/tmp`, for files that outlive a reboot, is on disk).
pub fn default_dir() -> PathBuf {
    choose_dir(std::env::temp_dir(), memory_file_system)
}

fn choose_dir(temp: PathBuf, kind: impl Fn(&Path) -> io::Result<Option<&'static str>>) -> PathBuf {
    let var_tmp = Path::new("/var/tmp");
    if matches!(kind(&temp), Ok(Some(_))) && matches!(kind(var_tmp), Ok(None)) {
        var_tmp.to_path_buf()
    } else {
        temp
    }
}

/// The kind of in-memory file system holding `dir`, if it is one.
fn memory_file_system(dir: &Path) -> io::Result<Option<&'static str>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    // SAFETY: all-zero bytes are a valid `statfs` (plain integers).
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs(2) with a NUL-terminated path and a struct it fills.
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // f_type's width differs between C libraries; the magic numbers are 32-bit.
    Ok(memory_kind(stat.f_type as u64 as u32))
}

/// The in-memory file system a `statfs` magic number names, if it names one.
fn memory_kind(magic: u32) -> Option<&'static str> {
    MEMORY_FS_MAGIC
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, kind)| *kind)
}

/// Counts the cores, times wake-ups between them, and measures the disk under
/// `dir`, for about two seconds.
pub fn probe(dir: &Path) -> io::Result<Machine> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| cpu_model(&text))
        .unwrap_or_else(|| "CPU model unknown".to_string());
    let wake = wake_round_trips(WAKE_WARMUP, WAKE_ROUNDS)?;
    let line_ns = cache_line_round_trip_ns();
    let scratch = crate::cleanup::scratch_dir("truce-bench-probe-", dir)?;
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
        cpu,
        wake_p50_us: wake.p50_us,
        wake_p99_us: wake.p99_us,
        wake_placement: wake.placement,
        line_ns,
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

/// The first `model name` of a `/proc/cpuinfo` text.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name" && !value.trim().is_empty()).then(|| value.trim().to_string())
    })
}

/// What the wake-up probe measured.
struct WakeRoundTrips {
    p50_us: f64,
    p99_us: f64,
    placement: &'static str,
}

/// `warmup` then `rounds` timed round trips of one byte between two threads,
/// each pinned to one of the first two cores this process may use (both to
/// the same core when it may use only one). Each side blocks in `read`, so
/// every hop is a sleeping thread woken on the other core: the step a request
/// takes from an HTTP thread to the committer and back. The calling thread is
/// never pinned.
fn wake_round_trips(warmup: usize, rounds: usize) -> io::Result<WakeRoundTrips> {
    let cpus = allowed_cpus();
    let (here, there, placement) = match cpus.as_slice() {
        [] => (None, None, "where the scheduler put them"),
        [only] => (Some(*only), Some(*only), "on one core"),
        [first, second, ..] => (Some(*first), Some(*second), "on two cores"),
    };
    let (mut near, mut far) = UnixStream::pair()?;
    let mut round_trips = std::thread::scope(|scope| -> io::Result<Vec<Duration>> {
        let echo = scope.spawn(move || -> io::Result<()> {
            pin_to(there);
            let mut byte = [0u8; 1];
            // Ends when the other side closes its end: read returns 0.
            while far.read(&mut byte)? == 1 {
                far.write_all(&byte)?;
            }
            Ok(())
        });
        let timer = scope.spawn(move || -> io::Result<Vec<Duration>> {
            pin_to(here);
            let mut round_trips = Vec::with_capacity(rounds);
            let mut byte = [0u8; 1];
            for round in 0..warmup + rounds {
                let started = Instant::now();
                near.write_all(&byte)?;
                near.read_exact(&mut byte)?;
                if round >= warmup {
                    round_trips.push(started.elapsed());
                }
            }
            Ok(round_trips)
        });
        let panicked = || io::Error::other("a wake-up probe thread panicked");
        let round_trips = timer.join().map_err(|_| panicked())?;
        echo.join().map_err(|_| panicked())??;
        round_trips
    })?;
    round_trips.sort_unstable();
    let at = |q: f64| {
        let index = ((round_trips.len() as f64 * q) as usize).min(round_trips.len().saturating_sub(1));
        round_trips.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Ok(WakeRoundTrips {
        p50_us: at(0.5),
        p99_us: at(0.99),
        placement,
    })
}

/// The cache-line probe: two threads pinned to the first two cores this
/// process may use hand one cache line back and forth, each spinning until the
/// other has written it. Nanoseconds per round trip, or `None` where there is
/// one core, or the probe gave up ([`LINE_DEADLINE`]: a busy machine).
///
/// It measures what every hand-off between threads on different cores pays
/// per cache line it touches — a queue slot, an answer, a freed block. On a VM
/// it changes with where the host runs the vCPUs, and can change during a run:
/// on this project's VM it was ~50 ns or ~330 ns, and the embedded pipelined
/// hot counter ran at ~550k or ~300k writes/s accordingly (docs/benchmarks-log.md).
/// Cheap (a few ms); the drivers take it before and after each run too.
pub fn cache_line_round_trip_ns() -> Option<f64> {
    match allowed_cpus().as_slice() {
        [here, there, ..] => line_round_trips(*here, *there),
        _ => None,
    }
}

/// The cache-line probe between the threads pinned to `here` and `there`.
fn line_round_trips(here: usize, there: usize) -> Option<f64> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// One value alone in its cache lines (two: adjacent-line prefetch).
    #[repr(align(128))]
    struct Line(AtomicU64);

    let (line, gave_up) = (Line(AtomicU64::new(0)), AtomicBool::new(false));
    let started = Instant::now();
    // Waits until the line holds `value`; false if the probe gave up meanwhile.
    let wait_for = |value: u64| {
        let mut spins = 0u32;
        while line.0.load(Ordering::Acquire) != value {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256)
                && (gave_up.load(Ordering::Relaxed) || started.elapsed() > LINE_DEADLINE)
            {
                gave_up.store(true, Ordering::Relaxed);
                return false;
            }
        }
        true
    };
    let total = LINE_WARMUP + LINE_ROUNDS;
    let timed = std::thread::scope(|scope| {
        scope.spawn(|| {
            pin_to(Some(there));
            for round in 0..total {
                if !wait_for(2 * round + 1) {
                    return;
                }
                line.0.store(2 * round + 2, Ordering::Release);
            }
        });
        let timer = scope.spawn(|| {
            pin_to(Some(here));
            let mut from = Instant::now();
            for round in 0..total {
                if round == LINE_WARMUP {
                    from = Instant::now();
                }
                line.0.store(2 * round + 1, Ordering::Release);
                if !wait_for(2 * round + 2) {
                    return None;
                }
            }
            // Time spent descheduled is not spent spinning: check once more.
            (started.elapsed() <= LINE_DEADLINE).then(|| from.elapsed())
        });
        timer.join().ok().flatten()
    })?;
    Some(timed.as_secs_f64() * 1e9 / LINE_ROUNDS as f64)
}

/// A cache-line probe figure for a printed line.
pub fn show_line_ns(ns: Option<f64>) -> String {
    ns.map_or_else(|| "not measured".to_string(), |ns| format!("{ns:.0} ns"))
}

/// The cores this process may run on, lowest first (empty if unknown).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bitmask the call fills in; its size is passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu` (nothing if unknown). A failure leaves it
/// as it was: the probe then measures whatever placement the scheduler picks.
fn pin_to(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: `set` is a plain bitmask built here; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_dir_the_bench_leaves_a_temp_dir_in_memory_for_var_tmp() {
        let tmpfs_tmp = |dir: &Path| Ok((dir == Path::new("/tmp")).then_some("tmpfs"));
        assert_eq!(choose_dir("/tmp".into(), tmpfs_tmp), PathBuf::from("/var/tmp"));
        let on_disk = |_: &Path| Ok(None);
        assert_eq!(choose_dir("/tmp".into(), on_disk), PathBuf::from("/tmp"));
        // Both in memory: the temp dir stays, for check_on_disk to refuse.
        let all_tmpfs = |_: &Path| Ok(Some("tmpfs"));
        assert_eq!(choose_dir("/tmp".into(), all_tmpfs), PathBuf::from("/tmp"));
    }

    #[test]
    fn memory_file_systems_are_known_by_their_magic_numbers() {
        assert_eq!(memory_kind(0x0102_1994), Some("tmpfs"));
        assert_eq!(memory_kind(0x8584_58f6), Some("ramfs"));
        assert_eq!(memory_kind(0xEF53), None, "ext4");
        assert_eq!(memory_kind(0x5846_5342), None, "xfs");
    }

    #[test]
    fn directories_in_memory_are_refused() {
        // /dev/shm is a tmpfs wherever glibc's shared memory lives; where it is
        // not, there is nothing here to refuse.
        let shm = Path::new("/dev/shm");
        if matches!(memory_file_system(shm), Ok(Some("tmpfs"))) {
            let refused = check_on_disk(shm).expect_err("a tmpfs is refused");
            assert!(
                refused.contains("tmpfs") && refused.contains("--dir"),
                "{refused}"
            );
        }
        let target = Path::new(env!("CARGO_MANIFEST_DIR"));
        if memory_file_system(target).expect("statfs").is_none() {
            check_on_disk(target).expect("the source tree's disk is accepted");
        }
        assert!(check_on_disk(Path::new("/no/such/dir")).is_err());
    }

    use super::*;

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\n\
                    processor\t: 1\nmodel name\t: Other\n";
        assert_eq!(cpu_model(text).as_deref(), Some("AMD EPYC"));
        assert_eq!(cpu_model("processor\t: 0\nmodel name\t:   \n"), None);
        assert_eq!(cpu_model(""), None);
    }

    #[test]
    fn machine_json_has_every_figure_of_the_line() {
        let machine = Machine {
            cores: 2,
            cpu: "AMD EPYC".into(),
            wake_p50_us: 41.06,
            wake_p99_us: 67.54,
            wake_placement: "on two cores",
            line_ns: Some(54.4),
            syncs_per_s: 9491.6,
            sync_p50_us: 103,
            sparse_syncs_per_s: 5924.2,
            sparse_sync_p50_us: 167,
            dir: PathBuf::from("/tmp"),
        };
        assert_eq!(
            machine.json(),
            serde_json::json!({
                "cores": 2, "cpu": "AMD EPYC", "wake_round_trip_p50_us": 41.1,
                "wake_round_trip_p99_us": 67.5, "wake_placement": "on two cores",
                "line_round_trip_ns": 54.0,
                "syncs_per_s": 9492.0, "sync_p50_us": 103, "sparse_syncs_per_s": 5924.0,
                "sparse_sync_p50_us": 167, "dir": "/tmp"
            })
        );
    }

    #[test]
    fn wake_probe_times_round_trips_and_leaves_the_caller_unpinned() {
        let before = allowed_cpus();
        let wake = wake_round_trips(10, 200).expect("the probe runs");
        assert!(
            wake.p50_us > 0.0 && wake.p50_us <= wake.p99_us,
            "p50 {} p99 {}",
            wake.p50_us,
            wake.p99_us
        );
        let expected = match before.len() {
            0 => "where the scheduler put them",
            1 => "on one core",
            _ => "on two cores",
        };
        assert_eq!(wake.placement, expected);
        assert_eq!(allowed_cpus(), before, "the calling thread was pinned");
    }

    #[test]
    fn cache_line_probe_times_a_round_trip_on_two_cores_and_none_on_one() {
        let before = allowed_cpus();
        let ns = cache_line_round_trip_ns();
        assert_eq!(allowed_cpus(), before, "the calling thread was pinned");
        match before.len() {
            0 | 1 => assert_eq!(ns, None),
            // A cache line cannot cross cores in under a nanosecond, and past
            // the deadline's share per round the probe gives up instead (a busy
            // machine may make it).
            _ => {
                let most = LINE_DEADLINE.as_nanos() as f64 / LINE_ROUNDS as f64;
                assert!(ns.is_none_or(|ns| (1.0..=most).contains(&ns)), "{ns:?}")
            }
        }
        assert_eq!(show_line_ns(Some(329.6)), "330 ns");
        assert_eq!(show_line_ns(None), "not measured");
    }

    #[test]
    fn cache_line_probe_gives_up_in_time_when_its_threads_cannot_both_run() {
        let Some(&cpu) = allowed_cpus().first() else {
            return;
        };
        // Both threads on one core: each hand-off waits for the other to be
        // scheduled, and 21,000 of them would take minutes.
        let started = Instant::now();
        assert_eq!(line_round_trips(cpu, cpu), None);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
