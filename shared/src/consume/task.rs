//! One handler task: the handler called with its panic caught, the result
//! settled with JetStream (ack or nak), and giving up on a delivery (dead
//! letter and ack) when it panicked or asks for a retry on its last delivery.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use futures::FutureExt;
use tokio::time::Instant;
use tracing::{error, warn};

use super::{Delivery, Disposition, Handler, Key, Stranded};

pub(super) struct Done {
    pub(super) key: Key,
    pub(super) seq: u64,
    pub(super) disposition: Disposition,
    pub(super) took: Duration,
}

/// One handler call: panics caught, the result settled with JetStream.
pub(super) async fn run_one<H: Handler>(
    name: &'static str,
    handler: Arc<H>,
    key: Key,
    d: Arc<Delivery<H::Item>>,
) -> Done {
    let started = Instant::now();
    let outcome = AssertUnwindSafe(handler.handle(&d)).catch_unwind().await;
    let mut disposition = match outcome {
        Ok(disposition) => disposition,
        Err(panic) => {
            let text = panic_text(panic.as_ref());
            metrics::counter!("smsgate_consumer_panics_total", "consumer" => name).increment(1);
            error!(consumer = name, seq = d.seq, panic = %text, outcome = "panicked", "handler panicked; dead-lettering the message");
            give_up(name, handler.as_ref(), &d, format!("the handler panicked: {text}")).await
        }
    };
    if let Disposition::Retry(_) = disposition
        && d.is_last()
    {
        let reason = format!("deliveries exhausted ({} of {})", d.delivered, d.max_deliver);
        disposition = give_up(name, handler.as_ref(), &d, reason).await;
    }
    let result = match disposition {
        Disposition::Ack => d.msg.double_ack().await,
        Disposition::Retry(delay) => d.msg.ack_with(AckKind::Nak(Some(delay))).await,
        Disposition::Release => d.msg.ack_with(AckKind::Nak(None)).await,
    };
    if let Err(e) = result {
        // A lost ack means a redelivery, which the handlers' idempotency
        // makes harmless; a lost nak means a redelivery after the ack wait.
        warn!(consumer = name, seq = d.seq, error = %e, ?disposition, "cannot ack or nak");
    }
    Done { key, seq: d.seq, disposition, took: started.elapsed() }
}

/// Dead-letters a delivery and acks it; if even that fails, hands it back
/// (the advisory listener is the last resort).
async fn give_up<H: Handler>(name: &'static str, handler: &H, d: &Delivery<H::Item>, reason: String) -> Disposition {
    let stranded = Stranded { seq: d.seq, ..Stranded::of(&d.msg, reason) };
    match AssertUnwindSafe(handler.dead_letter(stranded)).catch_unwind().await {
        Ok(Ok(())) => Disposition::Ack,
        Ok(Err(e)) => {
            warn!(consumer = name, seq = d.seq, error = &*e as &dyn std::error::Error, "cannot dead-letter; retrying");
            Disposition::Retry(Duration::from_secs(2))
        }
        Err(_) => {
            error!(consumer = name, seq = d.seq, "dead-lettering panicked too; retrying");
            Disposition::Retry(Duration::from_secs(2))
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}
