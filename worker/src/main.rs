//! `smsgate-worker`: see the library's documentation for what it does.

use smsgate_shared::config::Config;
use smsgate_shared::{runtime, shutdown, telemetry};
use smsgate_worker::{App, Tuning};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    telemetry::init("worker", telemetry::format_from_env());
    runtime::block_on("worker", run())
}

async fn run() -> std::process::ExitCode {
    let config = Config::from_env_or_exit("worker");
    let app = match App::build_with(config, tuning()).await {
        Ok(app) => app,
        Err(e) => return shutdown::exit_code("worker", "cannot start", Err(e)),
    };
    shutdown::exit_code("worker", "stopped with an error", app.run_until_stopped(shutdown::on_signal()).await)
}

/// A production build reads no test hook: the default tuning.
#[cfg(not(feature = "fault-hooks"))]
fn tuning() -> Tuning {
    Tuning::default()
}

/// With the `fault-hooks` feature only (the worker's own tests and the e2e
/// harness build it so; a release build does not): the crash tests'
/// `SMSGATE_WORKER_TEST_PAUSE_AFTER_PUBLISH_MS` pauses after a reply is
/// published, before the inbound is acked (milliseconds).
#[cfg(feature = "fault-hooks")]
fn tuning() -> Tuning {
    const PAUSE_HOOK: &str = "SMSGATE_WORKER_TEST_PAUSE_AFTER_PUBLISH_MS";
    let pause_after_publish =
        std::env::var(PAUSE_HOOK).ok().and_then(|v| v.parse().ok()).map(std::time::Duration::from_millis);
    Tuning { pause_after_publish, ..Tuning::default() }
}
