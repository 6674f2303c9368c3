//! smsgate sender (being built).

pub mod sms;
