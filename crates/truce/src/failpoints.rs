//! Fault injection for the torture harness and tests: the storage backend's
//! `fail_point!`s (`storage::apply`, `storage::fsync`), a backup's start
//! (`backup::start`) and the database's opening (`db::open`) exist only with
//! the `failpoints` feature, and are armed at runtime from the `FAILPOINTS`
//! environment variable.

/// Arms the failpoints named in `FAILPOINTS` (the `fail` crate's syntax, e.g.
/// `storage::fsync=40*off->return`), once per process. Without the
/// `failpoints` feature this does nothing.
pub fn setup_from_env() {
    #[cfg(feature = "failpoints")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // The scenario holds the fail crate's global lock for as long as it
        // lives: for a server, that is the whole process.
        ONCE.call_once(|| std::mem::forget(fail::FailScenario::setup()));
    }
}
