//! registrator: keeps a Consul agent's services equal to the running Docker
//! containers that ask for it.
//!
//! # Layout
//!
//! - [`container`]: what a container is, for our purposes (no Docker types).
//! - [`service`]: pure rules from a container to the services it asks for:
//!   names, ports, addresses, tags, Meta, checks.
//! - [`docker`]: the Docker engine through bollard (inspect, list, events).
//! - [`registrar`]: the reconciler and its event loop.
//! - [`config`]: command line and environment.
#![forbid(unsafe_code)]

pub mod config;
pub mod container;
pub mod docker;
pub mod metrics;
pub mod registrar;
pub mod service;

pub use registrar::{Deregister, Options, Registrar, Report, run};
pub use service::Rules;
