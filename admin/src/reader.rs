//! Reading a subject's stored messages, oldest first.

use std::collections::VecDeque;

use async_nats::jetstream::{consumer, stream::Stream as JsStream};
use bytes::Bytes;
use futures::StreamExt;
use time::OffsetDateTime;

use crate::{AdminError, NATS_TIMEOUT, bounded};

/// Reads every message on `filter` (oldest first) with an ordered consumer:
/// (stream sequence, time stored, payload). At most `cap` of the newest are
/// kept when a cap is given.
pub(crate) async fn read_all(
    stream: &JsStream,
    filter: String,
    cap: Option<usize>,
) -> Result<Vec<(u64, OffsetDateTime, Bytes)>, AdminError> {
    let consumer = bounded(
        "create a reader",
        stream.create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        }),
    )
    .await?;
    let pending = consumer.cached_info().num_pending;
    let mut out: VecDeque<(u64, OffsetDateTime, Bytes)> = VecDeque::new();
    if pending == 0 {
        return Ok(Vec::new());
    }
    let mut messages = bounded("read messages", consumer.messages()).await?;
    loop {
        let next = tokio::time::timeout(NATS_TIMEOUT, messages.next()).await;
        let message = match next {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(AdminError::nats("read messages", e)),
            Ok(None) => break,
            Err(_) => {
                return Err(AdminError::Unavailable {
                    what: format!("read messages: no message within {NATS_TIMEOUT:?}"),
                    source: None,
                });
            }
        };
        let info = message.info().map_err(|e| AdminError::Internal {
            what: "a message without JetStream metadata".to_owned(),
            source: Some(e),
        })?;
        let (seq, published, left) = (info.stream_sequence, info.published, info.pending);
        if cap.is_some_and(|c| out.len() == c) {
            out.pop_front();
        }
        out.push_back((seq, published, message.payload.clone()));
        if left == 0 {
            break;
        }
    }
    Ok(out.into())
}
