//! Stubs of an OpenAI-compatible chat server and an agent webhook (filled by the worker work).
