//! What the door lets through: a pure judgement of one request's method,
//! path and upgrade wish, so every rule is unit tested here.
//!
//! Allowed are `GET` (and `HEAD`) of the reads registrator makes, with or
//! without an API version prefix (`/v1.41`):
//!
//! | Path | Registrator (bollard) call |
//! |---|---|
//! | `/_ping`, `/version` | none: for clients' version negotiation and the probe |
//! | `/info` | `info`: the engine's host name and Swarm address |
//! | `/events` | `events`: container and network events |
//! | `/containers/json` | `list_containers` |
//! | `/containers/{id}/json` | `inspect_container` |
//! | `/networks`, `/networks/{id}` | none today: reads of what containers are attached to |
//!
//! The path is judged as it came, before any decoding, and forwarded
//! unchanged, so what Docker routes is what was judged: an `{id}` is one
//! segment of letters, digits, `_`, `.` and `-` that starts with a letter or
//! digit (what Docker allows in names and IDs), which leaves no room for
//! `%`-encoding, `/` or a `..` segment. Anything else is refused.

use hyper::Method;

/// The longest `{id}` accepted (a full ID is 64 hex digits; Docker limits
/// names to far less than this).
const MAX_ID: usize = 255;

/// Why a request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not `GET` or `HEAD`: registrator never writes.
    Method,
    /// Not one of the reads registrator makes.
    Path,
    /// An HTTP upgrade (Docker's hijacked attach and exec streams).
    Upgrade,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Method => "method",
            Refusal::Path => "path",
            Refusal::Upgrade => "upgrade",
        })
    }
}

/// Judges one request: `Ok` when it may reach Docker.
pub fn check(method: &Method, path: &str, upgrade: bool) -> Result<(), Refusal> {
    if *method != Method::GET && *method != Method::HEAD {
        return Err(Refusal::Method);
    }
    if upgrade {
        return Err(Refusal::Upgrade);
    }
    if read_path(unversioned(path)) { Ok(()) } else { Err(Refusal::Path) }
}

/// `path` without its API version prefix (`/v1.41/info` → `/info`), when it
/// has one; else `path` itself.
fn unversioned(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/v") else { return path };
    let Some(slash) = rest.find('/') else { return path };
    let (version, tail) = rest.split_at(slash);
    match version.split_once('.') {
        Some((major, minor)) if digits(major) && digits(minor) => tail,
        _ => path,
    }
}

/// Whether `s` is one or more ASCII digits.
fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether an unversioned path is one of the allowed reads.
fn read_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else { return false };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["_ping"] | ["version"] | ["info"] | ["events"] | ["containers", "json"] | ["networks"] => true,
        ["containers", id, "json"] | ["networks", id] => is_id(id),
        _ => false,
    }
}

/// Whether `s` is a container or network ID or name, and nothing else: a
/// letter or digit, then letters, digits, `_`, `.` or `-`.
pub fn is_id(s: &str) -> bool {
    let mut bytes = s.bytes();
    let first = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    first && s.len() <= MAX_ID && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Result<(), Refusal> {
        check(&Method::GET, path, false)
    }

    #[test]
    fn the_reads_registrator_makes_pass_with_or_without_a_version() {
        let id = "3f4e8a1b2c9d".repeat(5);
        for path in [
            "/_ping".to_owned(),
            "/version".to_owned(),
            "/info".to_owned(),
            "/events".to_owned(),
            "/containers/json".to_owned(),
            format!("/containers/{id}/json"),
            "/containers/my-app_1.web/json".to_owned(),
            "/networks".to_owned(),
            "/networks/bridge".to_owned(),
        ] {
            assert_eq!(get(&path), Ok(()), "{path}");
            assert_eq!(get(&format!("/v1.41{path}")), Ok(()), "/v1.41{path}");
            assert_eq!(check(&Method::HEAD, &format!("/v1.53{path}"), false), Ok(()), "HEAD /v1.53{path}");
        }
    }

    #[test]
    fn writes_are_refused_whatever_the_path() {
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS, Method::CONNECT] {
            for path in ["/containers/create", "/containers/abc/json", "/_ping", "/containers/abc/exec"] {
                assert_eq!(check(&method, path, false), Err(Refusal::Method), "{method} {path}");
            }
        }
    }

    #[test]
    fn reads_that_leak_data_or_open_a_shell_are_refused() {
        for path in [
            "/containers/abc/logs",
            "/containers/abc/archive",
            "/containers/abc/export",
            "/containers/abc/attach/ws",
            "/containers/abc/top",
            "/containers/abc/changes",
            "/containers/abc/stats",
            "/exec/abc/json",
            "/images/json",
            "/images/abc/get",
            "/secrets",
            "/secrets/abc",
            "/configs",
            "/configs/abc",
            "/volumes",
            "/services",
            "/tasks",
            "/swarm",
            "/plugins",
            "/system/df",
            "/session",
            "/distribution/debian/json",
            "/",
            "",
            "/v1.41",
            "/v1.41/",
        ] {
            assert_eq!(get(path), Err(Refusal::Path), "{path}");
            assert_eq!(get(&format!("/v1.41{path}")), Err(Refusal::Path), "/v1.41{path}");
        }
    }

    #[test]
    fn an_id_cannot_smuggle_another_path() {
        for path in [
            "/containers/..%2F..%2Fimages%2Fjson/json",
            "/containers/%2e%2e/json",
            "/containers/%2E%2E/json",
            "/containers/../json",
            "/containers/./json",
            "/containers/.hidden/json",
            "/containers//json",
            "/containers/abc/../../images/json",
            "/containers/abc/../json",
            "/containers/abc%2Flogs/json",
            "/containers/abc;x/json",
            "/containers/abc+x/json",
            "/containers/abc\\..\\x/json",
            "/networks/..",
            "/networks/%2e%2e%2fsecrets",
            "/networks/",
            "/networks/bridge/",
            "/containers/json/",
            "//containers/json",
            "/info/",
        ] {
            assert_eq!(get(path), Err(Refusal::Path), "{path}");
            assert_eq!(get(&format!("/v1.41{path}")), Err(Refusal::Path), "/v1.41{path}");
        }
        assert_eq!(get(&format!("/containers/{}/json", "a".repeat(MAX_ID + 1))), Err(Refusal::Path));
    }

    #[test]
    fn only_one_well_formed_version_prefix_is_stripped() {
        for path in
            ["/v1.41/v1.41/info", "/v1/info", "/v1./info", "/v.41/info", "/vx.y/info", "/v1.41x/info", "/V1.41/info"]
        {
            assert_eq!(get(path), Err(Refusal::Path), "{path}");
        }
        assert_eq!(unversioned("/v1.41/containers/json"), "/containers/json");
        assert_eq!(unversioned("/v12.345/_ping"), "/_ping");
        assert_eq!(unversioned("/version"), "/version");
        assert_eq!(unversioned("/v1.41"), "/v1.41");
    }

    #[test]
    fn upgrades_are_refused_even_on_an_allowed_path() {
        assert_eq!(check(&Method::GET, "/events", true), Err(Refusal::Upgrade));
        assert_eq!(check(&Method::POST, "/containers/abc/attach", true), Err(Refusal::Method));
    }
}
