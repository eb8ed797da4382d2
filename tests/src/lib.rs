//! Helpers for the integration tests: starting real components and cleaning up.
pub mod journald;
