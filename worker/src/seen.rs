//! Dedupe beyond JetStream's duplicate window, and the crash-safe record of
//! how far a message got: the `P_seen` bucket (one entry per MessageSid) with
//! a local moka cache in front for the common repeat.
//!
//! An entry remembers the stream sequence of the copy that claimed the
//! MessageSid, so a redelivery of that same copy (after a crash or a nak) is
//! told apart from a second copy that Twilio sent after the window:
//!
//! ```text
//! create(processing) ─▶ replied (reply text stored; final) [─▶ dead: the fallback]
//!                    ╰─▶ done (a skip, or no reply)
//! ```
//!
//! The reply text is stored before it is published, so a worker killed
//! between the chat call's answer and the ack republishes the same text
//! under the same `Nats-Msg-Id` instead of asking the chat backend again.
//! For the same reason `replied` needs no `done` after it: a redelivery of
//! a replied message republishes the stored text, and `P_OUTBOUND`'s
//! duplicate window (or, later, the sender's `P_sent` done mark) drops the
//! copy. That saves one write per reply.

use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use smsgate_shared::domain::MessageSid;
use smsgate_shared::envelope::Origin;
use smsgate_shared::topology::Topology;

use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Claimed; nothing is published yet.
    Processing,
    /// The reply is decided (`reply`), perhaps published; final for a
    /// reply without a dead letter (a redelivery publishes it again).
    Replied,
    /// Finished: the inbound may be acked.
    Done,
    /// Finished with the fallback text and a dead letter.
    Dead,
}

/// A reply decided but perhaps not yet published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReply {
    pub body: String,
    /// Media URLs to send with it (an agent's `"media"`, already checked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<String>,
    pub origin: Origin,
    /// When set, the message also goes to dead-letter with this reason
    /// (the fallback reply after the chat pipeline failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Stream sequence of the inbound copy that claimed the MessageSid.
    pub seq: u64,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<StoredReply>,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First time this MessageSid is seen: process it.
    New,
    /// This very copy again (a redelivery): carry on from `record`.
    Resume(Record),
    /// Another copy already claimed it: a duplicate to skip.
    Duplicate { first_seq: u64 },
}

#[derive(Clone)]
pub struct Seen {
    kv: kv::Store,
    /// MessageSid → the sequence that finished it.
    finished: moka::future::Cache<MessageSid, u64>,
}

impl Seen {
    pub fn new(kv: kv::Store) -> Self {
        let finished =
            moka::future::Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(3600)).build();
        Self { kv, finished }
    }

    /// Claims `sid` for the inbound copy at stream sequence `seq`.
    pub async fn claim(&self, sid: &MessageSid, seq: u64) -> Result<Claim, Error> {
        if let Some(first) = self.finished.get(sid).await {
            if first != seq {
                return Ok(Claim::Duplicate { first_seq: first });
            }
            return Ok(Claim::Resume(Record { seq, state: State::Done, reply: None }));
        }
        let key = Topology::seen_key(sid);
        let fresh = encode(&Record { seq, state: State::Processing, reply: None });
        let mut attempts = 0;
        let value = loop {
            match self.kv.create(&key, fresh.clone()).await {
                Ok(_) => return Ok(Claim::New),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::Seen(Box::new(e))),
            }
            if let Some(value) = self.kv.get(&key).await.map_err(|e| Error::Seen(Box::new(e)))? {
                break value;
            }
            // Expired between the two calls: claim again, once.
            attempts += 1;
            if attempts > 1 {
                return Err(Error::Protocol(format!("seen entry {key} neither creatable nor readable")));
            }
        };
        let Ok(record) = serde_json::from_slice::<Record>(&value) else {
            // Unreadable (written by something else): the MessageSid was seen.
            return Ok(Claim::Duplicate { first_seq: 0 });
        };
        if record.seq == seq {
            return Ok(Claim::Resume(record));
        }
        // Also when it ended in a dead letter: that MessageSid got its one
        // reply (the fallback text), so a replayed copy must not get another.
        Ok(Claim::Duplicate { first_seq: record.seq })
    }

    /// Remembers that this process finished `sid` (the copy at `seq`)
    /// without writing to the bucket: a redelivery is acked at once.
    pub async fn finished(&self, sid: &MessageSid, seq: u64) {
        self.finished.insert(sid.clone(), seq).await;
    }

    pub async fn store(&self, sid: &MessageSid, record: &Record) -> Result<(), Error> {
        self.kv.put(Topology::seen_key(sid), encode(record)).await.map_err(|e| Error::Seen(Box::new(e)))?;
        if record.state == State::Done {
            self.finished.insert(sid.clone(), record.seq).await;
        }
        Ok(())
    }
}

fn encode(record: &Record) -> Bytes {
    Bytes::from(serde_json::to_vec(record).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_in_the_documented_shape() {
        let r = Record {
            seq: 7,
            state: State::Replied,
            reply: Some(StoredReply { body: "hi".into(), media: vec![], origin: Origin::Chat, dead_reason: None }),
        };
        let text = String::from_utf8(encode(&r).to_vec()).unwrap();
        assert_eq!(text, r#"{"seq":7,"state":"replied","reply":{"body":"hi","origin":"chat"}}"#);
        assert_eq!(serde_json::from_slice::<Record>(text.as_bytes()).unwrap(), r);
    }
}
