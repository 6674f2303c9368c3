//! `smsgate`, the operator's tool (docs/ARCHITECTURE.md §6, "CLI (contract)").
//!
//! # Layout
//!
//! - `args`: the command line (clap); a usage error exits 2.
//! - `commands`: one function per command. Offline ones (`check-config`,
//!   `gen-token`, `webhook-url`, `simulate`'s signing) read the same config
//!   the services read; the others call the admin API through `api`.
//!   Numbers the operator typed are quoted as typed in usage errors.
//! - `webhook`: `webhook-url` and `simulate`, which ask the admin API for a
//!   channel that config does not have (one connected at run time).
//! - `api`: the admin API client and the answers it reads.
//! - `render`: tables and the conversation view.
//! - `mcp`: `smsgate mcp`, an MCP server on stdio that proxies the admin
//!   listener's `/mcp`.
//! - `error`: [`error::CliError`] and its exit status: 0 ok, 1 the operation
//!   failed, 2 usage, 64 bad config.

mod api;
mod args;
mod commands;
mod error;
mod mcp;
mod render;
mod webhook;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Read the local UTC offset while this process has one thread: the time
    // crate refuses to afterwards (reading TZ races with other threads).
    let offset = time::UtcOffset::current_local_offset().unwrap_or(time::UtcOffset::UTC);
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("smsgate: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli, offset)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smsgate: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
