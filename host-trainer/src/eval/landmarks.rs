//! (written by its issue; see eval/mod.rs)
