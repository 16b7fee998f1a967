//! What the bench's integration tests share: the server binary they point the
//! bench at, and which peers this machine has.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The debug `truce` server binary beside the bench's, built if missing.
pub fn server_binary() -> PathBuf {
    let bench = Path::new(env!("CARGO_BIN_EXE_truce-bench"));
    let server = bench.with_file_name("truce");
    if !server.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "truce-server"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build -p truce-server failed");
    }
    assert!(server.is_file(), "no server binary at {}", server.display());
    server
}

/// Whether `program --version` runs.
pub fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Whether PostgreSQL's binaries are where the bench looks for them.
pub fn postgres_installed() -> bool {
    runs("pg_ctl")
        || std::fs::read_dir("/usr/lib/postgresql")
            .map(|dirs| dirs.flatten().any(|d| d.path().join("bin/pg_ctl").is_file()))
            .unwrap_or(false)
}

/// A scratch directory for one bench run (its `--dir`): in the system temp dir,
/// unless that is a file system in memory, which the bench refuses — then
/// under the target directory. (The system temp dir comes first because
/// PostgreSQL, run as its own user when the tests run as root, must be able
/// to reach its data directory, and a checkout may sit in a directory only
/// root can enter.)
pub fn scratch_dir() -> tempfile::TempDir {
    let system = std::env::temp_dir();
    let kind = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&system)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .unwrap_or_default();
    let parent = if matches!(kind.as_str(), "tmpfs" | "ramfs") {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
    } else {
        system
    };
    tempfile::tempdir_in(parent).expect("a scratch directory")
}
