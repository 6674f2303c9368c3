//! `smsgate-sender`: delivers replies from `P_OUTBOUND` through Twilio and
//! records status callbacks. Configuration: docs/ARCHITECTURE.md (environment and the
//! channel file); exits 64 on a bad one.

use smsgate_shared::config::Config;
use smsgate_shared::{runtime, shutdown, telemetry};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    telemetry::init("sender", telemetry::format_from_env());
    runtime::block_on("sender", run())
}

async fn run() -> std::process::ExitCode {
    let config = Config::from_env_or_exit("sender");
    let app = match smsgate_sender::App::build(config).await {
        Ok(app) => app,
        Err(e) => return shutdown::exit_code("sender", "cannot start", Err(e)),
    };
    shutdown::exit_code("sender", "stopped with an error", app.run_until_stopped(shutdown::on_signal()).await)
}
