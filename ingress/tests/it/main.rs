//! ingress against a real nats-server.

mod admin;
