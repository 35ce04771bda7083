//! mlops-operator as a library: the API types, the controllers, the permissions they need
//! and the process plumbing.
//! `main.rs` wires them into the `mlops-operator` binary; end-to-end tests use the types.

pub mod analysis;
pub mod api;
pub mod controllers;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod rbac;
pub mod rollout;
pub mod telemetry;
pub mod uninstall;
