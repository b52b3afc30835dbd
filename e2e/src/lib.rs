//! Helpers for the end-to-end tests (cluster access, test apps, assertions).
