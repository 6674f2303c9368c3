//! Step 6 of the module comment: the reply is stored in `P_seen` before it
//! is published (a redelivery republishes it instead of deciding again),
//! then published with `Nats-Msg-Id: reply.<sid>`; the stored reply is the
//! entry's final state (a fallback's also gets its dead letter and `dead`).

use smsgate_shared::bus::{self, MsgId, OutboundId};
use smsgate_shared::envelope::{self, Origin, Outbound};
use time::OffsetDateTime;
use tracing::info;

use super::steps::Step;
use super::{Disposition, Outcome};
use crate::Error;
use crate::seen::{Record, State, StoredReply};

impl Step<'_> {
    /// Publishes a direct reply to this inbound (`in_reply_to` set, no
    /// guard) to `P.outbound.<channel>` with `id` as `Nats-Msg-Id`.
    pub(super) async fn publish_direct(
        &self,
        id: OutboundId,
        body: String,
        media_urls: Vec<String>,
        origin: Origin,
        what: &'static str,
    ) -> Result<(), Error> {
        let p = self.p;
        let outbound = Outbound {
            v: envelope::VERSION,
            id,
            channel_id: self.inbound.channel_id.clone(),
            to: self.peer.clone(),
            body,
            media_urls,
            in_reply_to: Some(self.sid().clone()),
            origin,
            created_at: OffsetDateTime::now_utc(),
            call: None,
            guard: None,
        };
        let subject = p.topology.outbound_subject(&self.inbound.channel_id);
        bus::publish(&p.js, subject, MsgId::Outbound(&outbound.id), envelope::encode(&outbound))
            .await
            .map_err(|e| Error::Publish { what, source: Box::new(e) })?;
        Ok(())
    }

    /// Stores the reply before publishing it: from here on a redelivery
    /// republishes this text instead of deciding again.
    pub(super) async fn reply(
        &self,
        body: String,
        origin: Origin,
        dead_reason: Option<String>,
    ) -> Result<(Disposition, Outcome), Error> {
        self.store_and_finish(StoredReply { body, media: vec![], origin, dead_reason }).await
    }

    pub(super) async fn store_and_finish(&self, reply: StoredReply) -> Result<(Disposition, Outcome), Error> {
        let record = Record { seq: self.seq, state: State::Replied, reply: Some(reply.clone()) };
        self.p.seen.store(self.sid(), &record).await?;
        self.finish_reply(reply).await
    }

    pub(super) async fn finish_reply(&self, reply: StoredReply) -> Result<(Disposition, Outcome), Error> {
        let p = self.p;
        self.publish_direct(OutboundId::reply_to(self.sid()), reply.body, reply.media, reply.origin, "reply").await?;
        if let Some(pause) = p.tuning.pause_after_publish {
            // Test hook (crash tests): the reply is out, the inbound not acked yet.
            info!(outcome = "paused", "reply published; pausing before the ack");
            tokio::time::sleep(pause).await;
        }
        let outcome = match reply.dead_reason {
            Some(reason) => {
                p.publish_dead(&self.job.msg, self.seq, reason).await?;
                p.seen.store(self.sid(), &Record { seq: self.seq, state: State::Dead, reply: None }).await?;
                return Ok((Disposition::Ack, Outcome::Fallback));
            }
            None if reply.origin == Origin::Help => Outcome::Help,
            None if reply.origin == Origin::RateLimitNotice => Outcome::RateLimited,
            None => Outcome::Replied,
        };
        // No `done` write: `replied` is final once the reply is published. A
        // redelivery publishes the stored text again under the same
        // `Nats-Msg-Id`, which `P_OUTBOUND`'s duplicate window drops and,
        // later than that, the sender's `P_sent` done mark.
        p.seen.finished(self.sid(), self.seq).await;
        Ok((Disposition::Ack, outcome))
    }
}
