//! Whole-pipeline tests and tools (filled by the e2e issue).
