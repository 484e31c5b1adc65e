//! Shared helpers for the cross-crate parity tests in `tests/tests/`.
