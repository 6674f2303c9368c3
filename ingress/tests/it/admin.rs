//! Admin API tests (filled by the operator-surface work).
