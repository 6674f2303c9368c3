//! The sender against a real nats-server and a Twilio stub.
