//! The JSON shapes of the Consul API calls this crate makes. Only fields
//! that Consul 1.8 already has are used, so old and current agents both work.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Body of `PUT /v1/agent/service/register`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Registration {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

/// One health check registered with a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Check {
    /// Unique per agent; Consul derives one from the service ID when absent.
    #[serde(rename = "CheckID", skip_serializing_if = "Option::is_none")]
    pub check_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// HTTP method of an HTTP check (Consul's default: GET).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `host:port` of a gRPC health check.
    #[serde(rename = "GRPC", skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    #[serde(rename = "GRPCUseTLS", skip_serializing_if = "std::ops::Not::not", default)]
    pub grpc_use_tls: bool,
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deregister_critical_service_after: Option<String>,
    #[serde(rename = "TLSSkipVerify", skip_serializing_if = "std::ops::Not::not", default)]
    pub tls_skip_verify: bool,
}

/// One entry of `GET /v1/agent/services`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port: u16,
}

impl From<&Registration> for AgentService {
    /// What the agent shows once `reg` is registered.
    fn from(reg: &Registration) -> Self {
        AgentService {
            id: reg.id.clone(),
            service: reg.name.clone(),
            tags: reg.tags.clone(),
            meta: reg.meta.clone(),
            address: reg.address.clone(),
            port: reg.port,
        }
    }
}

impl AgentService {
    /// Whether registering `reg` would change nothing Consul shows.
    pub fn matches(&self, reg: &Registration) -> bool {
        self.id == reg.id
            && self.service == reg.name
            && self.tags == reg.tags
            && self.meta == reg.meta
            && self.address == reg.address
            && self.port == reg.port
    }
}

/// One entry of `GET /v1/health/service/:name`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    pub node: Node,
    pub service: EntryService,
    #[serde(default, deserialize_with = "null_as_default")]
    pub checks: Vec<EntryCheck>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    pub node: String,
    #[serde(default)]
    pub address: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EntryService {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port: u16,
    /// The Raft index of the service's last change.
    #[serde(default)]
    pub modify_index: u64,
}

/// One health check, as the health endpoints list it: a node's own check
/// (`serfHealth`, `_node_maintenance`) has an empty `service_id`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EntryCheck {
    #[serde(default)]
    pub node: String,
    #[serde(rename = "CheckID", default)]
    pub check_id: String,
    pub status: HealthStatus,
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    /// What the check last said (an HTTP check's status line, a script's output).
    #[serde(default)]
    pub output: String,
}

/// `GET /v1/catalog/node/:node`: a node and the services registered on it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeServices {
    pub node: Node,
    #[serde(default, deserialize_with = "null_as_default")]
    pub services: BTreeMap<String, EntryService>,
}

/// A check's state, ordered from best to worst.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    #[default]
    Passing,
    Warning,
    Critical,
    #[serde(other)]
    Unknown,
}

impl HealthStatus {
    /// The status as Consul writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
            HealthStatus::Unknown => "unknown",
        }
    }
}

impl ServiceEntry {
    /// The worst status among the entry's checks (node checks included);
    /// an entry with no checks is passing.
    pub fn status(&self) -> HealthStatus {
        self.checks.iter().map(|c| c.status).max().unwrap_or(HealthStatus::Passing)
    }

    /// The address to reach the instance: the service's own, else the node's.
    pub fn address(&self) -> &str {
        if self.service.address.is_empty() { &self.node.address } else { &self.service.address }
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_entry_status_is_the_worst_check_and_address_falls_back_to_the_node() {
        let entry: ServiceEntry = serde_json::from_value(serde_json::json!({
            "Node": {"Node": "n1", "Address": "10.0.0.1"},
            "Service": {"ID": "a", "Service": "hello", "Tags": null, "Meta": null, "Address": "", "Port": 80},
            "Checks": [{"CheckID": "serfHealth", "Status": "passing"}, {"CheckID": "c", "Status": "warning"}]
        }))
        .unwrap();
        assert_eq!(entry.status(), HealthStatus::Warning);
        assert_eq!(entry.address(), "10.0.0.1");
        assert!(entry.service.tags.is_empty());
    }

    #[test]
    fn registration_serialises_with_consul_field_names() {
        let reg = Registration {
            id: "h:c:80".into(),
            name: "hello".into(),
            port: 80,
            checks: vec![Check { http: Some("http://1.2.3.4:80/".into()), ..Check::default() }],
            ..Registration::default()
        };
        let v = serde_json::to_value(&reg).unwrap();
        assert_eq!(v["ID"], "h:c:80");
        assert_eq!(v["Checks"][0]["HTTP"], "http://1.2.3.4:80/");
        assert!(v["Checks"][0].get("TLSSkipVerify").is_none());
    }
}
