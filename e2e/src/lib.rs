//! Whole-pipeline tests and tools.
//!
//! # Layout
//!
//! - [`webhook`]: builds and signs Twilio-shaped inbound webhooks, shared by
//!   the load generator and the tests.
//! - `src/bin/loadgen.rs`: `smsgate-loadgen`, signs N distinct webhooks
//!   across K senders and posts them to ingress with C connections (or at a
//!   fixed rate), reporting throughput and latency percentiles.

pub mod webhook;
