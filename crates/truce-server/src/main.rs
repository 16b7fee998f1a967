//! `truce`: the Truce server and its administration commands.

/// See Cargo.toml: glibc malloc serialises frees across threads on the hot path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;

mod backup;
mod check;
mod config;
mod http;
mod http_threads;
mod keys;
mod log;
mod recount;
mod remote;
mod serve;
mod top;

use config::{Cli, Command};

/// For the commands that only print (`keys`, `recount`, `backup`, `check`): a reader that goes
/// away (`truce keys list | head -1`) ends the process quietly, as it ends
/// `ls`, instead of a panic in `println!`. Rust ignores SIGPIPE so that a
/// write returns an error; the server keeps that (its sockets' writes must
/// not kill it), and so does `top`, which stops on the error itself.
fn quiet_on_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default action, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Keys(_) | Command::Recount(_) | Command::Backup(_) | Command::Check(_)
    ) {
        quiet_on_broken_pipe();
    }
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Keys(command) => keys::run(command),
        Command::Recount(args) => recount::run(&args),
        Command::Top(args) => top::run(&args),
        Command::Backup(args) => backup::run(&args),
        // 0 clean, 1 damaged, 2 could not look.
        Command::Check(args) => match check::run(&args) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => return ExitCode::from(1),
            Err(message) => {
                eprintln!("truce: {message}");
                return ExitCode::from(2);
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Empty: already logged (`truce serve --log-format json`).
        Err(message) if message.is_empty() => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("truce: {message}");
            ExitCode::FAILURE
        }
    }
}
