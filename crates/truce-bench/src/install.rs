//! Peers the benchmark needs but the machine lacks: as root, Debian's package
//! is installed (`apt-get install -y`, after `apt-get update` if the first
//! attempt fails); otherwise the peer is skipped with a message saying what to
//! install.

use std::process::Command;

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Installs Debian's `package` as root; `Err(why not)` when not root or when
/// apt fails. `peer` names the system in messages.
pub fn debian_package(peer: &str, package: &str) -> Result<(), String> {
    if !is_root() {
        return Err(format!(
            "{peer} not found and not root to install it: install it (Debian: apt-get install {package})"
        ));
    }
    eprintln!("{peer}: not found; installing Debian's package: apt-get install -y {package}");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if install() {
        return Ok(());
    }
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    if install() {
        Ok(())
    } else {
        Err(format!("apt-get install -y {package} failed"))
    }
}
