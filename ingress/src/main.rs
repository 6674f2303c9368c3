//! `smsgate-ingress`: see the crate docs for the layout.

use smsgate_shared::config::Config;
use smsgate_shared::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("ingress", telemetry::format_from_env());
    let config = Config::from_env_or_exit("ingress");
    let app = smsgate_ingress::App::build(config).await?;
    app.run_until_stopped(shutdown::on_signal()).await?;
    Ok(())
}
