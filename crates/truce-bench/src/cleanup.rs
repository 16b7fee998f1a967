//! Nothing left running when the bench is interrupted. Ctrl-C, SIGTERM (a
//! supervisor, `timeout`, a cancelled CI job) or SIGHUP (a closed terminal)
//! would end the process at once, before the destructors that stop the
//! servers it started (`truce serve`, PostgreSQL, Redis) and remove their
//! scratch directories: the servers would go on holding ports, memory and CPU
//! that the next run's figures would pay for, and PostgreSQL is not even the
//! bench's child. So each such server and directory registers here how to
//! undo it, for as long as it exists, and a thread of this module waits for
//! those signals. On the first it stops every registered server, newest
//! first, waits for stops already under way on other threads, and only then
//! removes the directories (nothing that may still write into one runs any
//! more); it says what it did, and ends the process by that signal (so a
//! shell loop around the bench stops too). A second signal meanwhile ends it
//! at once.
//!
//! Once the undoing has begun, the rest of the program must not touch what it
//! registered (a child it reaped could be replaced by another process with the
//! same id before the undo signals it): [`Registered::release`] and
//! [`Registered::reap_if`] then park the calling thread until the end.
//!
//! Nothing here may panic on the way: stderr may be gone (a closed terminal,
//! a pipe whose reader was interrupted too), so its lines are written and
//! their errors ignored, and an undo that panics is reported and passed over.

use std::collections::BTreeMap;
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How long the signal thread waits for undos under way on other threads (an
/// owner stopping its server itself: up to 15 s for a SIGTERM, 30 s for
/// PostgreSQL's fast stop) before it ends the process anyway.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(40);

/// How to undo one thing; returns how it went, for the log line.
type Undo = Box<dyn FnOnce() -> String + Send>;

/// One registration.
struct Entry {
    /// What it is, for the log line.
    what: String,
    /// A directory: removed after every stop, not in registration order.
    directory: bool,
    undo: Undo,
}

struct Registry {
    next: u64,
    /// Each registration, by id (registration order).
    undos: BTreeMap<u64, Entry>,
    /// A signal came: the undos are running, and nothing new may register.
    undoing: bool,
    /// Undos running outside the signal thread: owners stopping what they
    /// released, and registrations that came after the signal.
    in_flight: usize,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next: 0,
    undos: BTreeMap::new(),
    undoing: false,
    in_flight: 0,
});

/// Signalled when `in_flight` drops.
static LANDED: Condvar = Condvar::new();

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// The signal thread is ending the process; this thread waits for that.
fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// One line on stderr, if there still is one.
fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "truce-bench: {line}");
}

/// Runs `undo`, turning a panic into a line instead of unwinding.
fn run(undo: Undo) -> String {
    catch_unwind(AssertUnwindSafe(undo)).unwrap_or_else(|_| "the undo panicked".into())
}

/// An undo under way outside the signal thread: the signal thread waits for it
/// (up to [`IN_FLIGHT_WAIT`]) before it ends the process.
#[must_use = "the undo counts as under way until this is dropped"]
pub struct InFlight(bool);

impl InFlight {
    fn start(registry: &mut Registry) -> InFlight {
        registry.in_flight += 1;
        InFlight(true)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0 {
            registry().in_flight -= 1;
            LANDED.notify_all();
        }
    }
}

/// Something registered to be undone on a signal; [`release`](Registered::release)
/// (or dropping it) takes the undo back, for the owner to do itself.
#[must_use = "dropping the registration at once takes the undo back"]
pub struct Registered(Option<u64>);

/// Registers `undo` for `what` (e.g. `truce serve (pid 123)`), to be run if the
/// bench is interrupted before the returned registration is released. If an
/// interruption is already being handled, `undo` runs now and this never
/// returns.
pub fn register(what: String, undo: impl FnOnce() -> String + Send + 'static) -> Registered {
    register_entry(what, false, Box::new(undo))
}

fn register_entry(what: String, directory: bool, undo: Undo) -> Registered {
    let mut registry = registry();
    if registry.undoing {
        let in_flight = InFlight::start(&mut registry);
        drop(registry);
        say(format_args!("{what}: {}", run(undo)));
        drop(in_flight);
        park_forever();
    }
    let id = registry.next;
    registry.next += 1;
    registry.undos.insert(
        id,
        Entry {
            what,
            directory,
            undo,
        },
    );
    Registered(Some(id))
}

impl Registered {
    /// Takes the undo back: the owner is about to do it, and the signal
    /// thread will wait for it while the returned [`InFlight`] lives. Never
    /// returns if a signal's undoing has already begun (the signal thread has
    /// this undo, and the process is about to end).
    pub fn release(&mut self) -> InFlight {
        let Some(id) = self.0.take() else {
            return InFlight(false);
        };
        let mut registry = registry();
        if registry.undoing {
            drop(registry);
            park_forever();
        }
        registry.undos.remove(&id);
        InFlight::start(&mut registry)
    }

    /// Runs `reap` (a `try_wait` on the child this registration ends) where the
    /// signal thread cannot be undoing it meanwhile, and takes the undo back
    /// if `reap` says the child is gone (reaped: its id is free for reuse).
    /// Never returns if a signal's undoing has already begun.
    pub fn reap_if<T>(&mut self, reap: impl FnOnce() -> T, reaped: impl FnOnce(&T) -> bool) -> T {
        let mut registry = registry();
        if registry.undoing && self.0.is_some() {
            drop(registry);
            park_forever();
        }
        let result = reap();
        if reaped(&result)
            && let Some(id) = self.0.take()
        {
            registry.undos.remove(&id);
        }
        result
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        drop(self.release());
    }
}

/// Starts the thread that waits for SIGINT, SIGTERM and SIGHUP. Call once,
/// before starting anything that registers.
pub fn install() -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("truce-bench-signals".into())
        .spawn(move || {
            let mut signals = signals.forever();
            let Some(first) = signals.next() else {
                return;
            };
            let undos = {
                let mut registry = registry();
                registry.undoing = true;
                std::mem::take(&mut registry.undos)
            };
            say(format_args!(
                "{}: stopping the servers and removing the directories this run started ({})",
                name(first),
                undos.len()
            ));
            let undoing = std::thread::spawn(move || {
                undo_everything(undos, || wait_for_in_flight(IN_FLIGHT_WAIT));
                end_by(first);
            });
            if let Some(second) = signals.next() {
                say(format_args!(
                    "{} again: ending before the undoing is done",
                    name(second)
                ));
                end_by(second);
            }
            drop(undoing.join());
        })?;
    Ok(())
}

/// Runs `undos`, one line each: the stops newest first, then `wait` (for
/// stops under way elsewhere), then the directories newest first.
fn undo_everything(undos: BTreeMap<u64, Entry>, wait: impl FnOnce()) {
    let (directories, stops): (Vec<Entry>, Vec<Entry>) =
        undos.into_values().rev().partition(|entry| entry.directory);
    let undo = |entry: Entry| say(format_args!("{}: {}", entry.what, run(entry.undo)));
    stops.into_iter().for_each(undo);
    wait();
    directories.into_iter().for_each(undo);
}

/// Waits until no undo is under way on another thread, or `limit` passed.
fn wait_for_in_flight(limit: Duration) {
    let until = Instant::now() + limit;
    let mut registry = registry();
    while registry.in_flight > 0 {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            say(format_args!(
                "{} undo(s) still under way after {limit:?}: ending anyway",
                registry.in_flight
            ));
            return;
        }
        registry = LANDED
            .wait_timeout(registry, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Ends the process the way `signal` would have: the shell then sees it was
/// interrupted (and stops a loop around it), not a plain failure.
fn end_by(signal: i32) -> ! {
    let _ = signal_hook::low_level::emulate_default_handler(signal);
    std::process::exit(128 + signal);
}

fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// A scratch directory (a [`tempfile::TempDir`] under `parent`), removed when
/// dropped or, if the bench is interrupted first, by the signal thread.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    registered: Registered,
}

/// A new scratch directory named `prefix…` in `parent`.
pub fn scratch_dir(prefix: &str, parent: &Path) -> std::io::Result<Scratch> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(parent)?;
    let path = dir.path().to_path_buf();
    let registered = register_entry(
        format!("directory {}", path.display()),
        true,
        Box::new(move || remove(&path)),
    );
    Ok(Scratch {
        dir: Some(dir),
        registered,
    })
}

/// Removes `path`, trying again a few times: whatever still writes into it
/// (a server being killed, an embedded database of the main thread) may
/// create files while it goes.
fn remove(path: &Path) -> String {
    let mut tries = 0;
    loop {
        match std::fs::remove_dir_all(path) {
            Ok(()) => return "removed".into(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return "removed".into(),
            Err(e) if tries == 4 => return format!("not removed: {e}"),
            Err(_) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Scratch {
    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("present until dropped").path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _in_flight = self.registered.release();
        drop(self.dir.take());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex as StdMutex};

    use super::*;

    #[test]
    fn stops_run_newest_first_then_the_wait_then_directories_and_a_panic_is_passed_over() {
        let order = Arc::new(StdMutex::new(Vec::new()));
        let note = |name: &'static str| {
            let order = Arc::clone(&order);
            move || {
                order.lock().unwrap().push(name);
                assert_ne!(name, "server 1", "this undo panics");
                format!("undid {name}")
            }
        };
        // Registration order, the way the signal thread takes them from the
        // global registry: each server's directory made before the server.
        let mut undos = BTreeMap::new();
        let names = [
            ("dir 0", true),
            ("server 0", false),
            ("dir 1", true),
            ("server 1", false),
            ("dir 2", true),
        ];
        for (id, (name, directory)) in names.into_iter().enumerate() {
            let undo: Undo = Box::new(note(name));
            undos.insert(
                id as u64,
                Entry {
                    what: name.into(),
                    directory,
                    undo,
                },
            );
        }
        undos.remove(&4);
        let waited = Arc::clone(&order);
        undo_everything(undos, move || waited.lock().unwrap().push("wait"));
        assert_eq!(
            *order.lock().unwrap(),
            vec!["server 1", "server 0", "wait", "dir 1", "dir 0"]
        );
    }

    #[test]
    fn a_released_or_dropped_registration_leaves_the_registry() {
        // Other tests register at the same time: look at this one's ids only.
        let mut released = register("released".into(), || "undone".into());
        let id = released.0.expect("an id");
        assert!(registry().undos.contains_key(&id));
        drop(released.release());
        assert!(!registry().undos.contains_key(&id));
        let dropped = register("dropped".into(), || "undone".into());
        let id = dropped.0.expect("an id");
        assert!(registry().undos.contains_key(&id));
        drop(dropped);
        assert!(!registry().undos.contains_key(&id));
    }

    #[test]
    fn a_reaped_child_leaves_the_registry_and_a_running_one_stays() {
        let mut registered = register("child".into(), || "undone".into());
        let id = registered.0.expect("an id");
        assert_eq!(registered.reap_if(|| None::<u32>, Option::is_some), None);
        assert!(
            registry().undos.contains_key(&id),
            "still running: still registered"
        );
        assert_eq!(registered.reap_if(|| Some(0), Option::is_some), Some(0));
        assert!(!registry().undos.contains_key(&id), "reaped: its id is free");
    }

    #[test]
    fn the_signal_thread_waits_for_an_owner_stopping_its_server() {
        let in_flight = || registry().in_flight;
        let mut registered = register("server".into(), || "undone".into());
        let stopping = registered.release();
        assert!(in_flight() >= 1);
        let owner = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(stopping);
        });
        let started = Instant::now();
        // Waits for every undo under way; other tests' end within milliseconds.
        wait_for_in_flight(Duration::from_secs(10));
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
        owner.join().unwrap();
    }

    #[test]
    fn a_scratch_directory_is_registered_while_it_exists() {
        let parent = tempfile::tempdir().unwrap();
        let scratch = scratch_dir("scratch-test-", parent.path()).unwrap();
        let path = scratch.path().to_path_buf();
        let id = scratch.registered.0.expect("an id");
        let entry = registry().undos.get(&id).map(|e| (e.what.clone(), e.directory));
        assert_eq!(entry, Some((format!("directory {}", path.display()), true)));
        drop(scratch);
        assert!(!path.exists());
        assert!(!registry().undos.contains_key(&id));
    }
}
