//! The Consul HTTP client shared by `registrator` and `haproxy-sync`.
//!
//! # Layout
//!
//! - [`address`]: where Consul is and how to reach it: `consul://host:port`,
//!   `consul-tls://host:port`, `CONSUL_HTTP_ADDR`, the ACL token and TLS files.
//! - [`client`]: the calls both services make: agent service registration,
//!   the catalog and health endpoints, with blocking queries.
//! - [`blocking`]: following a blocking query: Consul's index rules and the
//!   one loop that asks, backs off and passes answers on.
//! - [`types`]: the JSON shapes of Consul's API (only fields Consul 1.8 has).
#![forbid(unsafe_code)]

pub mod address;
pub mod blocking;
pub mod client;
pub mod types;

pub use address::{ConsulArgs, Settings};
pub use client::{AgentInfo, Client, Error, Indexed, KvPair};
pub use types::{
    AgentService, Check, EntryCheck, EntryService, HealthStatus, Node, NodeServices, Registration, ServiceEntry,
};
