//! ingress against a real nats-server: the webhook lands in JetStream, every
//! rejection of invariant 4 (docs/ARCHITECTURE.md §4), and the NATS outage answer;
//! `bad_input`: property tests of the webhook path on raw HTTP bytes.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

mod admin;
mod admin_limits;
mod bad_input;
mod calls_api;
mod channels;
mod console;
mod guard_api;
mod hardening;
mod helpers;
mod mcp;
mod outage;
mod relay;
mod voice;
mod webhook;
