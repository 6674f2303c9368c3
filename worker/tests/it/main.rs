//! The worker against a real nats-server and local stubs of the chat
//! backends: each test starts the real service on port 0 with its own
//! server and prefix.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

mod agent;
mod concurrency;
mod cost;
mod crash;
mod failures;
mod helpers;
mod limits;
mod media;
mod order;
mod pipeline;
mod shutdown;
mod skips;
mod takeover;
