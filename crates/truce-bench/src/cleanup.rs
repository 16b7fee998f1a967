//! Nothing left running when the bench is interrupted. Ctrl-C, SIGTERM (a
//! supervisor, `timeout`, a cancelled CI job) or SIGHUP (a closed terminal)
//! would end the process at once, before the destructors that stop the
//! servers it started (`truce serve`, PostgreSQL, Redis) and remove their
//! scratch directories: the servers would go on holding ports, memory and CPU
//! that the next run's figures would pay for, and PostgreSQL is not even the
//! bench's child. So each such server and directory registers here how to
//! undo it, for as long as it exists, and a thread of this module waits for
//! those signals. On the first it undoes everything registered, newest first
//! (a server stops before its directory goes), says what it did, and exits
//! with 128 + the signal's number; a second signal meanwhile exits at once.
//!
//! Once the undoing has begun, the rest of the program must not touch what it
//! registered (a child it reaped could be replaced by another process with the
//! same id before the undo signals it): [`Registered::release`] then parks the
//! calling thread until the exit.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How to undo one thing; returns how it went, for the log line.
type Undo = Box<dyn FnOnce() -> String + Send>;

struct Registry {
    next: u64,
    /// What each registration is (for the log line) and how to undo it.
    undos: BTreeMap<u64, (String, Undo)>,
    /// A signal came: the undos are running, and nothing new may register.
    undoing: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next: 0,
    undos: BTreeMap::new(),
    undoing: false,
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// The signal thread is exiting the process; this thread waits for that.
fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

/// Something registered to be undone on a signal; dropping it (or
/// [`release`](Registered::release)) takes the undo back, for the owner to do
/// itself.
#[must_use = "dropping the registration at once takes the undo back"]
pub struct Registered(Option<u64>);

/// Registers `undo` for `what` (e.g. `truce serve (pid 123)`), to be run if the
/// bench is interrupted before the returned registration is released. If an
/// interruption is already being handled, `undo` runs now and this never
/// returns.
pub fn register(what: String, undo: impl FnOnce() -> String + Send + 'static) -> Registered {
    let mut registry = registry();
    if registry.undoing {
        drop(registry);
        eprintln!("truce-bench: {what}: {}", undo());
        park_forever();
    }
    let id = registry.next;
    registry.next += 1;
    registry.undos.insert(id, (what, Box::new(undo)));
    Registered(Some(id))
}

impl Registered {
    /// Takes the undo back: the owner is about to do it. Never returns if a
    /// signal's undoing has already begun (it has this undo, and the process is
    /// about to exit).
    pub fn release(&mut self) {
        let Some(id) = self.0.take() else {
            return;
        };
        let mut registry = registry();
        if registry.undoing {
            drop(registry);
            park_forever();
        }
        registry.undos.remove(&id);
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.release();
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
            eprintln!(
                "\ntruce-bench: {}: stopping the servers and removing the directories this run started ({})",
                name(first),
                undos.len()
            );
            let undoing = std::thread::spawn(move || {
                undo_all(undos);
                std::process::exit(128 + first);
            });
            if let Some(second) = signals.next() {
                eprintln!(
                    "truce-bench: {} again: exiting before the undoing is done",
                    name(second)
                );
                std::process::exit(128 + second);
            }
            drop(undoing.join());
        })?;
    Ok(())
}

/// Runs `undos` newest first, one log line each.
fn undo_all(undos: BTreeMap<u64, (String, Undo)>) {
    for (_, (what, undo)) in undos.into_iter().rev() {
        eprintln!("truce-bench: {what}: {}", undo());
    }
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
    dir: tempfile::TempDir,
    registered: Registered,
}

/// A new scratch directory named `prefix…` in `parent`.
pub fn scratch_dir(prefix: &str, parent: &Path) -> std::io::Result<Scratch> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(parent)?;
    let path = dir.path().to_path_buf();
    let registered = register(format!("directory {}", path.display()), move || remove(&path));
    Ok(Scratch { dir, registered })
}

fn remove(path: &Path) -> String {
    match std::fs::remove_dir_all(path) {
        Ok(()) => "removed".into(),
        Err(e) => format!("not removed: {e}"),
    }
}

impl Scratch {
    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Before the directory goes (`dir` is dropped after this).
        self.registered.release();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex as StdMutex};

    use super::*;

    #[test]
    fn undos_run_newest_first_and_released_ones_not_at_all() {
        let order = Arc::new(StdMutex::new(Vec::new()));
        let note = |n: u32| {
            let order = Arc::clone(&order);
            move || {
                order.lock().unwrap().push(n);
                format!("undo {n}")
            }
        };
        // Registered directly in a registry of the test's own, the way the
        // signal thread takes them from the global one.
        let mut undos: BTreeMap<u64, (String, Undo)> = BTreeMap::new();
        for n in 0..4u32 {
            undos.insert(u64::from(n), (format!("thing {n}"), Box::new(note(n))));
        }
        undos.remove(&2);
        undo_all(undos);
        assert_eq!(*order.lock().unwrap(), vec![3, 1, 0]);
    }

    #[test]
    fn a_released_or_dropped_registration_leaves_the_registry() {
        // Other tests register at the same time: look at this one's ids only.
        let mut released = register("released".into(), || "undone".into());
        let id = released.0.expect("an id");
        assert!(registry().undos.contains_key(&id));
        released.release();
        assert!(!registry().undos.contains_key(&id));
        let dropped = register("dropped".into(), || "undone".into());
        let id = dropped.0.expect("an id");
        assert!(registry().undos.contains_key(&id));
        drop(dropped);
        assert!(!registry().undos.contains_key(&id));
    }

    #[test]
    fn a_scratch_directory_is_registered_while_it_exists() {
        let parent = tempfile::tempdir().unwrap();
        let scratch = scratch_dir("scratch-test-", parent.path()).unwrap();
        let path = scratch.path().to_path_buf();
        let id = scratch.registered.0.expect("an id");
        let what = registry().undos.get(&id).map(|(what, _)| what.clone());
        assert_eq!(what, Some(format!("directory {}", path.display())));
        drop(scratch);
        assert!(!path.exists());
        assert!(!registry().undos.contains_key(&id));
    }
}
