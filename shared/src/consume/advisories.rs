//! JetStream's max-deliveries advisories: whatever ran out of deliveries
//! anyway (a process killed during its last delivery, NATS failing
//! throughout) is read by its stream sequence, dead-lettered and removed
//! from the work queue. A queue group, so one replica acts.

use std::sync::Arc;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::{Handler, Stranded};

/// JetStream's `MAX_DELIVERIES` advisory (the fields used here).
#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: i64,
}

/// Dead-letters what JetStream stopped delivering: read by sequence, handed
/// to the handler, deleted from the work queue.
pub(super) async fn watch_advisories<H: Handler>(
    client: async_nats::Client,
    mut consumer: PullConsumer,
    handler: Arc<H>,
    name: &'static str,
    shutdown: CancellationToken,
) {
    let (stream_name, consumer_name) = match consumer.info().await {
        Ok(i) => (i.stream_name.clone(), i.name.clone()),
        Err(e) => {
            warn!(consumer = name, error = %e, "cannot read the consumer's info; max-deliveries advisories not watched");
            return;
        }
    };
    let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream_name}.{consumer_name}");
    let mut sub = match client.queue_subscribe(subject, format!("smsgate-{consumer_name}")).await {
        Ok(s) => s,
        Err(e) => {
            warn!(consumer = name, error = %e, "cannot watch max-deliveries advisories");
            return;
        }
    };
    let js = jetstream::new(client);
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Ok(advisory) = serde_json::from_slice::<MaxDeliveries>(&msg.payload) else {
            warn!(consumer = name, "unreadable max-deliveries advisory");
            continue;
        };
        let seq = advisory.stream_seq;
        metrics::counter!("smsgate_consumer_max_deliveries_total", "consumer" => name).increment(1);
        let stream = match js.get_stream(&stream_name).await {
            Ok(s) => s,
            Err(e) => {
                warn!(consumer = name, seq, error = %e, "cannot open the stream for a stranded message");
                continue;
            }
        };
        let raw = match stream.get_raw_message(seq).await {
            Ok(m) => m,
            // Already gone: acked late, or another replica dealt with it.
            Err(e) => {
                debug!(consumer = name, seq, error = %e, "stranded message already gone");
                continue;
            }
        };
        let stranded = Stranded {
            subject: raw.subject.as_str(),
            payload: &raw.payload,
            msg_id: crate::bus::msg_id_of(Some(&raw.headers)),
            seq,
            reason: format!("JetStream stopped delivering it after {} deliveries", advisory.deliveries),
        };
        match handler.dead_letter(stranded).await {
            Ok(()) => {
                warn!(consumer = name, seq, outcome = "dead_letter", "message ran out of deliveries; dead-lettered");
                if let Err(e) = stream.delete_message(seq).await {
                    debug!(consumer = name, seq, error = %e, "cannot delete the stranded message (gone already?)");
                }
            }
            Err(e) => error!(
                consumer = name,
                seq,
                error = &*e as &dyn std::error::Error,
                outcome = "stranded",
                "a message ran out of deliveries and cannot be dead-lettered"
            ),
        }
    }
}
