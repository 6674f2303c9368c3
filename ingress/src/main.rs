//! `smsgate-ingress`: see the crate docs for the layout.

use smsgate_shared::config::Config;
use smsgate_shared::{runtime, shutdown, telemetry};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    telemetry::init("ingress", telemetry::format_from_env());
    runtime::block_on("ingress", run())
}

async fn run() -> std::process::ExitCode {
    let config = Config::from_env_or_exit("ingress");
    let app = match smsgate_ingress::App::build(config).await {
        Ok(app) => app,
        Err(e) if e.is_config() => return shutdown::bad_config("ingress", &e),
        Err(e) => return shutdown::exit_code("ingress", "cannot start", Err(e)),
    };
    shutdown::exit_code("ingress", "stopped with an error", app.run_until_stopped(shutdown::on_signal()).await)
}
