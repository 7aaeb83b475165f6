//! The report on the admin address, beside `/metrics` and `/health`:
//!
//! - `GET /containers.json`: the whole [`Report`] as JSON;
//! - `GET /containers`: the same as an HTML page when the request's
//!   `Accept` names `text/html` (a browser), else as plain text, in the
//!   format `registrator explain` prints;
//! - `GET /containers/{key}`: one container, the same way; `key` is its
//!   full ID (the `registrator_container` Meta of its services), its name
//!   (with or without Docker's leading `/`), or an ID prefix of at least 4
//!   hex characters; 404 with the reason and the names known otherwise;
//! - `GET /containers/{key}.json`: that container as JSON (a
//!   [`ContainerReport`](crate::report::ContainerReport)), or a 404
//!   [`NotFound`](crate::report::NotFound) as JSON. A key that ends in
//!   `.json` always asks for JSON.
//!
//! The report comes from a [`Source`] (the running loop's,
//! [`crate::Registrar::report`]); 503 when it does not answer.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use futures_util::future::BoxFuture;

use crate::report::{self, Page, Report};

/// Where the pages get the report: `None` when it cannot be had now.
pub type Source = Arc<dyn Fn() -> BoxFuture<'static, Option<Report>> + Send + Sync>;

/// The routes above, for `ops::admin::serve`'s `extra`.
pub fn router(source: Source) -> Router {
    Router::new()
        .route("/containers.json", get(all_json))
        .route("/containers", get(all))
        .route("/containers/{key}", get(one))
        .with_state(source)
}

/// What the page sends besides the HTML: no cache, and nothing but its own
/// inline style and script, and requests to itself.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; \
                   base-uri 'none'; form-action 'none'";

async fn all_json(State(source): State<Source>) -> Response {
    match source().await {
        Some(report) => Json(report).into_response(),
        None => unavailable(),
    }
}

async fn all(State(source): State<Source>, headers: HeaderMap) -> Response {
    let Some(report) = source().await else { return unavailable() };
    if wants_html(&headers) {
        html(StatusCode::OK, report::html(Page::All(&report)))
    } else {
        text(StatusCode::OK, report::text(&report))
    }
}

async fn one(State(source): State<Source>, Path(key): Path<String>, headers: HeaderMap) -> Response {
    let Some(report) = source().await else { return unavailable() };
    if let Some(key) = key.strip_suffix(".json") {
        return match report.find(key) {
            Ok(c) => Json(c).into_response(),
            Err(not_found) => (StatusCode::NOT_FOUND, Json(not_found)).into_response(),
        };
    }
    match (report.find(&key), wants_html(&headers)) {
        (Ok(c), true) => html(StatusCode::OK, report::html(Page::One(&report, c))),
        (Ok(c), false) => text(StatusCode::OK, report::text_one(c)),
        (Err(nf), true) => html(StatusCode::NOT_FOUND, report::html(Page::NotFound(&report, &nf))),
        (Err(nf), false) => text(StatusCode::NOT_FOUND, not_found_text(&nf)),
    }
}

/// A 404 as plain text: why, and the names registrator knows.
pub fn not_found_text(nf: &report::NotFound) -> String {
    if nf.known.is_empty() {
        format!("{}; it knows no container\n", nf.error)
    } else {
        format!("{}; the containers it knows: {}\n", nf.error, nf.known.join(", "))
    }
}

/// Whether the request asks for HTML (a browser does).
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/html"))
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn html(status: StatusCode, page: Result<String, String>) -> Response {
    match page {
        Ok(page) => {
            let mut resp = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response();
            let headers = resp.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
            resp
        }
        Err(why) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")),
    }
}

fn unavailable() -> Response {
    let why = "registrator's loop does not answer (still starting, or stopping); try again\n";
    text(StatusCode::SERVICE_UNAVAILABLE, why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ContainerReport, NotFound, ServiceReport, Status};

    fn report() -> Report {
        let hostile = "<script>alert(1)</script>";
        Report {
            complete: true,
            unhealthy: None,
            containers: vec![
                ContainerReport {
                    id: "abcdef0123456789".into(),
                    short_id: "abcdef012345".into(),
                    name: "web".into(),
                    image: "nginx".into(),
                    running: true,
                    services: vec![ServiceReport {
                        id: "host:web:80".into(),
                        name: "web".into(),
                        address: "172.18.0.5".into(),
                        port: 80,
                        tags: vec![hostile.into()],
                        status: Status::Registered,
                        reason: None,
                    }],
                    reasons: Vec::new(),
                },
                ContainerReport {
                    id: "0123456789abcdef".into(),
                    short_id: "0123456789ab".into(),
                    name: "ignored".into(),
                    image: "debian".into(),
                    running: true,
                    services: Vec::new(),
                    reasons: vec![format!("SERVICE_IGNORE={hostile:?}: the container asks not to be registered")],
                },
            ],
        }
    }

    /// Serves the pages on a listener of its own; `None`: a loop that does not answer.
    async fn serve(report: Option<Report>) -> String {
        let source: Source = Arc::new(move || {
            let report = report.clone();
            Box::pin(async move { report })
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(source)).await });
        format!("http://{addr}")
    }

    async fn get(url: &str, accept: Option<&str>) -> (u16, String, String) {
        let mut req = reqwest::Client::new().get(url);
        if let Some(accept) = accept {
            req = req.header("Accept", accept);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let kind = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        (status, kind, resp.text().await.unwrap())
    }

    #[tokio::test]
    async fn the_report_is_served_as_json_html_and_text_with_every_value_escaped() {
        let base = serve(Some(report())).await;
        let (status, kind, body) = get(&format!("{base}/containers.json"), None).await;
        assert_eq!((status, kind.as_str()), (200, "application/json"));
        assert_eq!(serde_json::from_str::<Report>(&body).unwrap(), report());

        let browser = Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8");
        let (status, kind, page) = get(&format!("{base}/containers"), browser).await;
        assert_eq!((status, kind.as_str()), (200, "text/html; charset=utf-8"));
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
        assert!(page.contains("SERVICE_IGNORE&#x3D;&quot;&lt;script&gt;"), "{page}");

        let (status, kind, body) = get(&format!("{base}/containers"), None).await;
        assert_eq!((status, kind.as_str()), (200, "text/plain; charset=utf-8"));
        assert_eq!(body, report::text(&report()));
        assert!(
            body.contains("ignored (0123456789ab), image debian, running\n  nothing registered, because:\n"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn one_container_by_id_prefix_or_name_and_404_for_others() {
        let base = serve(Some(report())).await;
        let r = report();
        for key in ["abcdef0123456789", "abcd", "web", "%2Fweb"] {
            let (status, _, body) = get(&format!("{base}/containers/{key}.json"), None).await;
            assert_eq!(status, 200, "{key}: {body}");
            assert_eq!(serde_json::from_str::<ContainerReport>(&body).unwrap(), r.containers[0], "{key}");
            let (status, _, body) = get(&format!("{base}/containers/{key}"), None).await;
            assert_eq!((status, body), (200, report::text_one(&r.containers[0])), "{key}");
        }
        let (status, kind, page) = get(&format!("{base}/containers/web"), Some("text/html")).await;
        assert_eq!((status, kind.as_str()), (200, "text/html; charset=utf-8"));
        assert!(page.contains("host:web:80") && !page.contains("SERVICE_IGNORE"), "one container only: {page}");

        let (status, _, body) = get(&format!("{base}/containers/nope.json"), None).await;
        assert_eq!(status, 404);
        let nf: NotFound = serde_json::from_str(&body).unwrap();
        assert!(nf.error.contains("\"nope\""), "{nf:?}");
        assert_eq!(nf.known, ["web", "ignored"]);
        let (status, _, body) = get(&format!("{base}/containers/nope"), None).await;
        assert_eq!(status, 404);
        assert!(body.contains("no container \"nope\"") && body.contains("web, ignored"), "{body}");
        let (status, _, page) = get(&format!("{base}/containers/%3Cscript%3E"), Some("text/html")).await;
        assert_eq!(status, 404);
        assert!(!page.contains("<script>\"") && page.contains("&lt;script&gt;"), "the key is escaped too: {page}");
    }

    #[tokio::test]
    async fn a_loop_that_does_not_answer_is_a_503() {
        let base = serve(None).await;
        for path in ["/containers.json", "/containers", "/containers/web.json"] {
            let (status, _, body) = get(&format!("{base}{path}"), None).await;
            assert_eq!(status, 503, "{path}");
            assert!(body.contains("does not answer"), "{body}");
        }
    }
}
