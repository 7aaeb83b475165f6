//! registrator: keeps a Consul agent's services equal to the running Docker
//! containers that ask for it.
//!
//! # Layout
//!
//! - [`container`]: what a container is, for our purposes (no Docker types).
//! - [`service`]: pure rules from a container to the services it asks for:
//!   names, ports, addresses, tags, Meta, checks.
//! - [`tags`]: `-tags`, a list or a Go template over the container.
//! - [`docker`]: the Docker engine through bollard (inspect, list, events).
//! - [`state`]: what registrator knows and wants, and every decision, as
//!   pure transitions (events, looks at Docker and Consul, outcomes → ops).
//! - [`registrar`]: the thin loop around the state: events, timers, I/O.
//! - [`report`]: what registrator did with each container, and why, as
//!   JSON, text and HTML; [`pages`] serves it on the admin address
//!   (`/containers`), [`explain`] asks for it (`registrator explain`).
//! - [`placement`]: whether the agent is this host's and `-ip` one of its addresses.
//! - [`metrics`]: what `/metrics` reports.
//! - [`config`]: command line and environment.
//! - [`app`]: the wiring from arguments to a running registrar.
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod container;
pub mod docker;
pub mod explain;
pub mod metrics;
pub mod pages;
pub mod placement;
pub mod registrar;
pub mod report;
pub mod service;
pub mod state;
pub mod tags;
#[cfg(test)]
mod testing;

pub use registrar::{HostAgent, Options, Registrar, Work, drive, run};
pub use service::Rules;
pub use state::{Deregister, Timing};
