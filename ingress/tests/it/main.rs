//! ingress against a real nats-server.
