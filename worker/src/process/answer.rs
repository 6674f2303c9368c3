//! Step 5 of the module comment: the message's media fetched for backends
//! that read it, the chat call (with the "on it" text when it is slow), and
//! what its answer becomes: a reply, no reply, a retry, or the fallback text
//! and a dead letter.

use std::time::{Duration, Instant};

use smsgate_shared::bus::OutboundId;
use smsgate_shared::envelope::{NoteReason, Origin};
use tracing::{debug, info, warn};

use super::steps::Step;
use super::{Disposition, Outcome, REPLY_CAP_BYTES, error_chain};
use crate::Error;
use crate::chat::{Answer, ChatRequest, ErrorKind};
use crate::media::{self, Attachment, Content};
use crate::seen::StoredReply;

impl Step<'_> {
    /// The message's media as the backend gets it: fetched and checked
    /// ([`crate::media`]), scaled for a model, each skip noted. `Err` is the
    /// delay after a transient failure that is worth another delivery.
    async fn attachments(&self) -> Result<Result<Vec<Attachment>, Duration>, Error> {
        let (backend, channel) = (&self.lane.local, &self.lane.channel);
        if !backend.wants_media() || self.inbound.media.is_empty() {
            return Ok(Ok(vec![]));
        }
        let mut attachments = self.p.media.fetch_all(channel, self.inbound).await;
        if let Some(retry_after) = attachments.iter().find_map(Attachment::transient)
            && self.delivered < self.p.tuning.max_attempts()
            && !self.last
        {
            let delay = self.p.tuning.retry_delay(self.delivered, retry_after);
            warn!(
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                outcome = "retry",
                "media could not be fetched; will retry"
            );
            return Ok(Err(delay));
        }
        if backend.scales_pictures() {
            attachments = media::fit_for_model(attachments, channel.media.max_edge).await;
        }
        let skipped: Vec<String> = attachments.iter().filter_map(Attachment::skip_line).collect();
        if !skipped.is_empty() {
            warn!(
                skipped = skipped.len(),
                of = attachments.len(),
                outcome = "media_skipped",
                "media not given to the chat pipeline"
            );
            self.note(NoteReason::MediaSkipped, skipped.join("; ")).await?;
        }
        Ok(Ok(attachments))
    }

    /// `delete_media_after_fetch`: deletes what the backend was given from
    /// Twilio and notes each result. A failed delete does not hold the reply.
    async fn delete_media(&self, attachments: &[Attachment]) -> Result<(), Error> {
        let channel = &self.lane.channel;
        let fetched: Vec<_> = attachments
            .iter()
            .filter_map(|a| match &a.content {
                Content::Loaded { media, .. } => Some(media),
                Content::Skipped(_) => None,
            })
            .collect();
        if !channel.delete_media_after_fetch || fetched.is_empty() {
            return Ok(());
        }
        let results = futures::future::join_all(fetched.iter().map(|m| self.p.media.delete(channel, m))).await;
        let lines: Vec<String> = fetched
            .iter()
            .zip(results)
            .map(|(m, r)| match r {
                Ok(()) => format!("{} deleted from Twilio", m.media_sid),
                Err(e) => {
                    warn!(error = %e, outcome = "media_not_deleted", "cannot delete media from Twilio");
                    format!("{} not deleted: {e}", m.media_sid)
                }
            })
            .collect();
        self.note(NoteReason::MediaDeleted, lines.join("; ")).await
    }

    /// The reply's media if it may be sent; else none, with a note.
    async fn checked_media(&self, media: Vec<String>) -> Result<Vec<String>, Error> {
        match smsgate_shared::media::check_outbound_urls(&media) {
            Ok(()) => Ok(media),
            Err(e) => {
                warn!(error = %e, outcome = "media_refused", "reply media refused; sending the text alone");
                self.note(NoteReason::MediaRefused, format!("the reply's media was not sent: {e}")).await?;
                Ok(vec![])
            }
        }
    }

    pub(super) async fn chat(&self, turns: &[crate::chat::Turn]) -> Result<(Disposition, Outcome), Error> {
        let backend = &self.lane.local;
        let attachments = match self.attachments().await? {
            Ok(a) => a,
            Err(delay) => return Ok((Disposition::Retry(delay), Outcome::Retry)),
        };
        let started = Instant::now();
        let toolbox = crate::tools::ToolBox::new(self.p, &self.lane.channel, self.inbound, &self.peer, self.seq);
        let request =
            ChatRequest { inbound: self.inbound, history: turns, attachments: &attachments, tools: Some(&toolbox) };
        // The runtime keeps the message alive while the call runs.
        let answer = match &self.lane.channel.chat_ack {
            Some(ack) => {
                let call = backend.reply(&request);
                tokio::pin!(call);
                tokio::select! {
                    answer = &mut call => answer,
                    () = tokio::time::sleep(ack.after) => {
                        self.acknowledge(&ack.text).await?;
                        call.await
                    }
                }
            }
            None => backend.reply(&request).await,
        };
        let elapsed = started.elapsed();
        metrics::histogram!("smsgate_worker_chat_seconds", "kind" => backend.kind()).record(elapsed.as_secs_f64());
        let latency_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        if let Ok(Some(a)) = &answer {
            let (channel, sid) = (&self.lane.channel, self.sid());
            self.p.spend.model_answer(channel, &self.peer, sid, backend.kind(), a.usage).await;
        }
        if answer.is_ok() {
            // The backend has the media now.
            self.delete_media(&attachments).await?;
        }
        match answer {
            Ok(Some(Answer { text, .. })) if text.len() > REPLY_CAP_BYTES => {
                let carry = self.lane.channel.sms_max_len.saturating_mul(self.lane.channel.max_parts);
                let cut: String = text.chars().take(carry).collect();
                let reason = format!(
                    "the chat reply is {} bytes, over the {REPLY_CAP_BYTES}-byte cap; cut to {} characters",
                    text.len(),
                    cut.chars().count()
                );
                warn!(
                    latency_ms,
                    chat = backend.kind(),
                    bytes = text.len(),
                    outcome = "oversized",
                    "chat reply over the size cap; cut"
                );
                self.note(NoteReason::ChatError, reason.clone()).await?;
                let (d, _) = self.reply(cut, Origin::Chat, Some(reason)).await?;
                Ok((d, Outcome::Oversized))
            }
            Ok(Some(Answer { text, media, .. })) => {
                info!(
                    event = "model.answered",
                    latency_ms,
                    chat = backend.kind(),
                    media = media.len(),
                    "chat answered"
                );
                debug!(reply = %text, "chat reply");
                let media = self.checked_media(media).await?;
                if text.is_empty() && media.is_empty() {
                    self.note(NoteReason::NoReply, "the chat pipeline gave no text and no media that can be sent")
                        .await?;
                    return self.done(Outcome::NoReply).await;
                }
                let reply = StoredReply { body: text, media, origin: Origin::Chat, dead_reason: None };
                self.store_and_finish(reply).await
            }
            Ok(None) => {
                info!(latency_ms, chat = backend.kind(), "chat answered with no reply");
                self.note(NoteReason::NoReply, "the chat pipeline gave no reply").await?;
                self.done(Outcome::NoReply).await
            }
            Err(e) => {
                let max_attempts = self.p.tuning.max_attempts();
                match e.kind() {
                    ErrorKind::Transient { retry_after } if self.delivered < max_attempts && !self.last => {
                        let delay = self.p.tuning.retry_delay(self.delivered, retry_after);
                        warn!(
                            latency_ms,
                            error = &e as &dyn std::error::Error,
                            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                            outcome = "retry",
                            "chat backend failed; will retry"
                        );
                        Ok((Disposition::Retry(delay), Outcome::Retry))
                    }
                    kind => {
                        let why = match kind {
                            ErrorKind::Permanent => "permanent",
                            _ if self.delivered < max_attempts => "last delivery",
                            _ => "retries exhausted",
                        };
                        let reason =
                            format!("chat backend failed ({why}, attempt {}): {}", self.delivered, error_chain(&e));
                        warn!(
                            event = "model.failed",
                            latency_ms,
                            error = &e as &dyn std::error::Error,
                            outcome = "fallback",
                            "chat backend failed; sending the fallback text"
                        );
                        self.note(NoteReason::ChatError, reason.clone()).await?;
                        let text = self.lane.channel.fallback_text.clone();
                        self.reply(text, Origin::Fallback, Some(reason)).await
                    }
                }
            }
        }
    }

    /// The "on it" text (`chat.ack_after_ms`): published before the reply,
    /// so the sender (one person's messages in order) sends it first. Its
    /// id, `ack.<sid>`, keeps it to one per inbound across redeliveries.
    async fn acknowledge(&self, text: &str) -> Result<(), Error> {
        let id = OutboundId::ack_of(self.sid());
        self.publish_direct(id, text.to_owned(), vec![], Origin::Ack, "acknowledgement").await?;
        info!(outcome = "acknowledged", "the chat is slow; the acknowledgement went first");
        metrics::counter!("smsgate_worker_acks_total", "channel_id" => self.inbound.channel_id.to_string())
            .increment(1);
        Ok(())
    }
}
