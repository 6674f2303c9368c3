//! Stub of Twilio's Messages API (filled by the sender work).
