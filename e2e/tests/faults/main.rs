//! Fault tests of the whole pipeline (issue 6): the real ingress, worker and
//! sender binaries against a real nats-server, the Twilio stub and the chat
//! stub (`smsgate_e2e::harness`). Each test runs about 500 webhooks through
//! one fault and ends with the ledger check of invariants 1 and
//! 2 (`harness::ledger`): every acked MessageSid has exactly one outcome;
//! replies = distinct acked MessageSids − skips − dead letters; no
//! (outbound id, piece) sent twice.
//!
//! The stacks run one at a time (a semaphore in the harness), so the tests
//! of this binary may run on any number of test threads.

#![allow(clippy::unwrap_used)]

mod call_turns;
mod chat_down;
mod cluster;
mod common;
mod duplicates;
mod names;
mod nats_restart;
mod replicas;
mod sender_kill;
mod slow_model;
mod twilio_errors;
mod worker_kill;
