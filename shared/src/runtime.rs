//! The services' tokio runtime. One thread by default: ingress, worker and
//! sender each wait on sockets far more than they compute, and on the small
//! machines smsgate runs on, a second scheduler thread per service mostly
//! adds cross-thread wake-ups (measured in deploy/BENCHMARKS.md: ingress
//! spent a third less CPU per webhook on one thread). Blocking work (MMS
//! picture decoding) still goes to tokio's blocking pool.
//!
//! `TOKIO_WORKER_THREADS=N` (N ≥ 2) gives a work-stealing runtime with N
//! threads instead, for a service that must use more than one core.

use std::future::Future;
use std::process::ExitCode;

/// Runs `main` to completion on the service's runtime; exits 70 (EX_SOFTWARE)
/// when the runtime cannot be made.
pub fn block_on<F: Future<Output = ExitCode>>(service: &'static str, main: F) -> ExitCode {
    let threads = std::env::var("TOKIO_WORKER_THREADS").ok().and_then(|v| v.trim().parse::<usize>().ok());
    let built = match threads {
        Some(n) if n >= 2 => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    match built {
        Ok(runtime) => runtime.block_on(main),
        Err(e) => {
            tracing::error!(service, error = &e as &dyn std::error::Error, "cannot start the async runtime");
            ExitCode::from(70)
        }
    }
}
