//! The contract between the operator and the trainer and server pods it runs: the
//! environment variable names it sets, the trainer's result document and its limits. The
//! operator and the reference runtime both depend on this crate, so the two cannot drift.
