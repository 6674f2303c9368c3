//! smsgate's shared library: what every service agrees on.
//!
//! # Layout
//!
//! - [`admin_token`]: where the admin token is kept when not set, for ingress and the CLI.
//! - [`config`]: the environment ([`config::Settings`]) and the channel file
//!   ([`config::Channel`]), validated at start (exit 64 on a bad one).
//! - [`channels`]: the live channel set every service holds
//!   ([`channels::Registry`]): the file's channels plus those connected at
//!   run time in `P_channels`, picked up by watching the bucket; connecting
//!   and disconnecting ([`channels::connect`], [`channels::disconnect`]).
//! - [`secret_key`]: `SMSGATE_SECRET_KEY`, sealing runtime channels'
//!   secrets with AES-256-GCM.
//! - [`domain`]: newtypes that only hold valid values: [`domain::E164`],
//!   [`domain::MessageSid`], [`domain::ChannelId`], [`domain::AccountSid`].
//! - [`envelope`]: the versioned JSON payloads on the bus: an
//!   [`envelope::Inbound`] (ingress → worker), an [`envelope::Outbound`]
//!   (worker or admin API → sender), a [`envelope::StatusUpdate`] (ingress →
//!   sender), [`envelope::HistoryEntry`] and [`envelope::DeadLetter`].
//! - [`guard`]: the compliance guard in front of every text or call that is
//!   not a direct reply (quiet hours, consent, opt-out, caps), and its facts.
//! - [`bus`]: the bus protocol written once: every `Nats-Msg-Id`
//!   ([`bus::MsgId`]), every `P_sent` key ([`bus::SentKey`]), publishing with
//!   an id, the history and dead-letter writers.
//! - [`topology`]: stream, bucket and subject names under the prefix, and
//!   [`topology::Topology::ensure`], the one place that creates them.
//! - [`media`]: MMS rules: which inbound media URLs may be fetched
//!   ([`media::MediaRef`]), which media a reply may carry.
//! - [`markdown`]: a model's reply as plain text (look-alikes, markdown).
//! - [`twiml`]: the one XML-escaping TwiML writer, and replies made speakable.
//! - [`voice`]: the channel's `voice` key and the voice routes.
//! - [`redact`]: masking numbers and clipping third-party text for logs.
//! - [`schedule`]: texts and calls to send later (KV `P_schedule`), and the
//!   [`schedule::Scheduler`] every sender runs to fire them once.
//! - [`retry`]: the one `Retry-After` parser (seconds or an HTTP date).
//! - [`runtime`]: the services' tokio runtime (one thread unless `TOKIO_WORKER_THREADS`).
//! - [`signature`]: Twilio's `X-Twilio-Signature`, signing and validating.
//! - [`webhook`]: a channel's webhook URLs (whole, or the token cut for
//!   showing) and the signed request `smsgate simulate` posts.
//! - [`telemetry`]: JSON logs with stable fields, the Prometheus recorder.
//! - [`shutdown`]: the cancellation token that SIGTERM/SIGINT cancel.
//! - [`mirror`]: a key-value bucket kept in memory by a watch, for reads
//!   on every message that may be a moment behind (`P_conversations` in
//!   the worker, `P_optout` in the sender).
//! - [`cas`]: state every replica shares (reply budgets, rate limits,
//!   pacing) in a key-value bucket, changed with compare-and-set.
//! - [`cost`]: what messages, calls and model answers cost: the rate table,
//!   Twilio's price, token prices, the day's spend against `limits.usd_per_day`.
//! - [`consume`]: the consumer runtime of the worker and the sender:
//!   per-conversation order, concurrency up to a bound, nothing stranded.
//!   A folder by concern: the handler's vocabulary and the [`consume::Runtime`]
//!   in `mod.rs`, then `limits`, `liveness`, `dispatch` (pulling, per-key
//!   queues), `awaiting` (what a key waits for), `task` (one handler call),
//!   `advisories` (max deliveries) and `shutdown` (draining).
//! - [`nats`]: connecting to one NATS server or a cluster, with creds,
//!   nkey, token, user/password and TLS; URLs redacted for logs.
//! - [`ops`]: `/api/health` and `/metrics` for the worker and the sender.
//!
//! The test kit (a real nats-server per test, Twilio and chat stubs) is its
//! own crate, `smsgate-testkit` (`testkit/`), a dev-dependency only.

pub mod admin_token;
pub mod bus;
pub mod cas;
pub mod channels;
pub mod config;
pub mod consume;
pub mod cost;
pub mod domain;
pub mod envelope;
pub mod guard;
pub mod http;
pub mod markdown;
pub mod media;
pub mod mirror;
pub mod nats;
pub mod ops;
pub mod redact;
pub mod retry;
pub mod runtime;
pub mod schedule;
pub mod secret_key;
pub mod shutdown;
pub mod signature;
pub mod sse;
pub mod telemetry;
pub mod topology;
pub mod twilio_error;
pub mod twiml;
pub mod voice;
pub mod webhook;
