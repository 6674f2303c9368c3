//! Shutdown is a `CancellationToken` passed down, never a global: `main`
//! cancels it on SIGTERM/SIGINT, tests cancel it by hand.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!(outcome = "stopping", "shutdown signal received");
        child.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A start refused for a reason of configuration (ingress with nowhere to
/// keep its admin token): logged and printed like a bad channel file, and
/// the same exit status, 64.
pub fn bad_config<E: std::error::Error + 'static>(service: &str, e: &E) -> std::process::ExitCode {
    tracing::error!(service, error = e as &dyn std::error::Error, outcome = "bad_config", "invalid configuration");
    eprintln!("smsgate-{service}: {e}");
    std::process::ExitCode::from(crate::config::EXIT_BAD_CONFIG as u8)
}

/// How every service's `main` ends: success is exit status 0; a failure to
/// start (`what` = "cannot start") or while running is one JSON log line
/// with the error and its causes, and exit status 1. (A bad configuration
/// exits 64 earlier, in `Config::from_env_or_exit`.)
pub fn exit_code<E: std::error::Error + 'static>(
    service: &str,
    what: &str,
    result: Result<(), E>,
) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(service, error = &e as &dyn std::error::Error, outcome = "failed", "{what}");
            std::process::ExitCode::FAILURE
        }
    }
}
