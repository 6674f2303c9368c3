//! ingress against a real nats-server: the webhook lands in JetStream, every
//! rejection of DESIGN.md invariant 4, and the NATS outage answer.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

mod admin;
mod hardening;
mod helpers;
mod outage;
mod webhook;
