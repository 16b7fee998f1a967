//! `truce`: the Truce server and its administration commands.

/// See Cargo.toml: glibc malloc serialises frees across threads on the hot path.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;

mod config;
mod http;
mod http_threads;
mod keys;
mod recount;
mod serve;
mod top;

use config::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Keys(command) => keys::run(command),
        Command::Recount(args) => recount::run(&args),
        Command::Top(args) => top::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("truce: {message}");
            ExitCode::FAILURE
        }
    }
}
