//! Whole-pipeline tests and tools.
//!
//! # Layout
//!
//! - [`webhook`]: builds and signs Twilio-shaped inbound webhooks, shared by
//!   the load generator and the tests.
//! - [`harness`]: the whole pipeline as processes (nats-server, the three
//!   service binaries, Twilio and chat stubs) with fault injection, and the
//!   ledger that checks the invariants (docs/ARCHITECTURE.md §4) against what it recorded.
//! - `src/bin/loadgen.rs`: `smsgate-loadgen`, signs N distinct webhooks
//!   across K senders and posts them to ingress with C connections (or at a
//!   fixed rate), reporting throughput and latency percentiles.

pub mod harness;
pub mod webhook;
