//! `registrator explain CONTAINER`: asks the registrator running here (its
//! admin endpoint, at `--metrics-addr` / `METRICS_ADDR`; an unspecified
//! address means loopback, as for `--probe`) what it did with one
//! container, and says it in the words of [`crate::report::text_one`].

use std::net::SocketAddr;
use std::time::Duration;

use ops::admin::AdminAddr;

use crate::report::{ContainerReport, NotFound, text_one};

/// Why `explain` has no answer; each is one line for the terminal.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("no admin address to ask: set --metrics-addr (or METRICS_ADDR) to the running registrator's")]
    NoAddress,
    #[error(
        "registrator does not answer at {url}: {why} (is it running, and is this its --metrics-addr / METRICS_ADDR?)"
    )]
    Unreachable { url: String, why: String },
    #[error("{}", unknown(.0))]
    Unknown(NotFound),
    #[error("registrator at {url} answered {status}: {}", .body.trim())]
    Unexpected { url: String, status: u16, body: String },
    #[error("registrator at {url} answered what is not a container report: {source}")]
    BadAnswer { url: String, source: serde_json::Error },
}

/// An HTTP error in words: its innermost cause (`Connection refused`), which says most.
fn cause(e: &reqwest::Error) -> String {
    let mut why: &dyn std::error::Error = e;
    while let Some(inner) = why.source() {
        why = inner;
    }
    why.to_string()
}

fn unknown(nf: &NotFound) -> String {
    crate::pages::not_found_text(nf).trim_end().to_owned()
}

/// How long to wait for registrator's answer (it waits up to
/// [`crate::registrar::REPORT_WAIT`] for its loop).
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where registrator's admin endpoint at `addr` is asked: an unspecified
/// address (`0.0.0.0:9090`, where it listens) is asked on loopback.
pub fn target(addr: SocketAddr) -> SocketAddr {
    ops::admin::on_this_host(addr)
}

/// The URL of container `key`'s report at `addr`.
pub fn url(addr: SocketAddr, key: &str) -> Result<reqwest::Url, ExplainError> {
    let base = format!("http://{}/", target(addr));
    let mut url = reqwest::Url::parse(&base).map_err(|_| ExplainError::NoAddress)?;
    url.path_segments_mut().map_err(|()| ExplainError::NoAddress)?.extend(["containers", &format!("{key}.json")]);
    Ok(url)
}

/// Asks the registrator at `addr` about container `key` (a name, an ID or
/// an ID prefix): its report, as plain text.
pub async fn explain(key: &str, addr: AdminAddr) -> Result<String, ExplainError> {
    let addr = addr.0.ok_or(ExplainError::NoAddress)?;
    let url = url(addr, key)?;
    let shown = url.to_string();
    let unreachable = |e: reqwest::Error| ExplainError::Unreachable { url: shown.clone(), why: cause(&e) };
    let client = reqwest::Client::builder().timeout(TIMEOUT).build().map_err(unreachable)?;
    let resp = client.get(url).send().await.map_err(unreachable)?;
    let status = resp.status();
    let body = resp.text().await.map_err(unreachable)?;
    match status.as_u16() {
        200 => serde_json::from_str::<ContainerReport>(&body)
            .map(|c| text_one(&c))
            .map_err(|source| ExplainError::BadAnswer { url: shown, source }),
        404 => match serde_json::from_str::<NotFound>(&body) {
            Ok(nf) => Err(ExplainError::Unknown(nf)),
            Err(_) => Err(ExplainError::Unexpected { url: shown, status: 404, body }),
        },
        status => Err(ExplainError::Unexpected { url: shown, status, body }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_address_is_asked_on_loopback_and_keys_are_one_path_segment() {
        let any: SocketAddr = "0.0.0.0:9090".parse().unwrap();
        assert_eq!(url(any, "web").unwrap().as_str(), "http://127.0.0.1:9090/containers/web.json");
        let here: SocketAddr = "10.0.0.7:9091".parse().unwrap();
        assert_eq!(url(here, "/a b?c").unwrap().as_str(), "http://10.0.0.7:9091/containers/%2Fa%20b%3Fc.json");
        let v6: SocketAddr = "[::1]:9090".parse().unwrap();
        assert_eq!(url(v6, "web").unwrap().as_str(), "http://[::1]:9090/containers/web.json");
    }

    #[tokio::test]
    async fn no_address_and_no_answer_are_errors_that_say_so() {
        let err = explain("web", AdminAddr(None)).await.unwrap_err();
        assert!(err.to_string().contains("--metrics-addr"), "{err}");
        // Something that hangs up on every connection, without a word.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                drop(conn);
            }
        });
        let err = explain("web", AdminAddr(Some(addr))).await.unwrap_err();
        assert!(matches!(err, ExplainError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains("does not answer"), "{err}");
    }
}
