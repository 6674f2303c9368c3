//! `smsgate-worker`: see the library's documentation for what it does.

use std::time::Duration;

use smsgate_shared::config::Config;
use smsgate_shared::{shutdown, telemetry};
use smsgate_worker::{App, Tuning};

/// Test hook for the crash tests only: pause after a reply is published,
/// before it is marked done and acked (milliseconds).
const PAUSE_HOOK: &str = "SMSGATE_WORKER_TEST_PAUSE_AFTER_PUBLISH_MS";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("worker", telemetry::format_from_env());
    let config = Config::from_env_or_exit("worker");
    let pause_after_publish = std::env::var(PAUSE_HOOK).ok().and_then(|v| v.parse().ok()).map(Duration::from_millis);
    let tuning = Tuning { pause_after_publish, ..Tuning::default() };
    let app = App::build_with(config, tuning).await?;
    app.run_until_stopped(shutdown::on_signal()).await?;
    Ok(())
}
