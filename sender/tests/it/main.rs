//! The sender against a real nats-server and a Twilio stub that speaks
//! Twilio's wire format; the crash test runs the real binary.

#![allow(clippy::unwrap_used)] // test helpers panic on setup failures by design

mod calls;
mod cost;
mod crash;
mod delivery;
mod errors;
mod guard;
mod helpers;
mod logs;
mod pacing;
mod runtime;
mod status;
