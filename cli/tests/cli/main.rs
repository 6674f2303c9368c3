//! The built `smsgate` binary, run as an operator runs it.
//!
//! - `offline`: commands that only read the configuration (exit codes,
//!   problems named by key, the webhook URL).
//! - `stack`: ingress, worker and sender in-process against a real
//!   nats-server; `simulate` then `conversation` shows the reply.
//! - `mcp`: `smsgate mcp` spawned by an MCP client, against ingress.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

mod mcp;
mod offline;
mod stack;

use std::process::{Command, Output};

/// The binary under test with an empty environment plus `env`, so that the
/// developer's own SMSGATE_* variables never leak into a test.
pub fn smsgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smsgate"));
    cmd.env_clear().args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The example channel file of deploy/ (the one run-local.sh uses).
pub fn example_channels() -> String {
    format!("{}/../deploy/channels.example.json", env!("CARGO_MANIFEST_DIR"))
}
