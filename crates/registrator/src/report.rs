//! What registrator did with each container, and why: the answer to "I
//! started my container, why is it not routed?". [`State::report`] computes
//! a [`Report`] from what registrator knows (pure, like the rest of the
//! state); this module holds its shape, finds one container in it
//! ([`Report::find`]) and renders it as plain text ([`text`], [`text_one`]:
//! what `registrator explain` prints and `curl /containers` shows) and as an
//! HTML page ([`html`]). `pages.rs` serves it, `explain.rs` asks for it.
//!
//! # JSON (`GET /containers.json`)
//!
//! ```json
//! {
//!   "complete": true,
//!   "unhealthy": null,
//!   "containers": [{
//!     "id": "3f2a…", "short_id": "3f2a1b9c0d1e", "name": "web",
//!     "image": "nginx:1.27", "running": true,
//!     "services": [{"id": "host:web:80", "name": "web", "address": "172.18.0.5",
//!                   "port": 80, "tags": ["rest"], "status": "registered", "reason": null}],
//!     "reasons": []
//!   }]
//! }
//! ```
//!
//! `complete`: every running container has been looked at since start
//! (before, the list may lack some); `unhealthy`: why registrator is not
//! working now (agent or engine unreachable, ACL refusal), else `null`.
//! A container's `services` are what it asks for (and what Consul still
//! holds for it), each with a [`Status`] and, where there is something to
//! say, a `reason`; its `reasons` say, in plain words, why it registers
//! nothing or less than it asks for, and what was changed on the way.
//! `GET /containers/{key}.json` is one container (the object in
//! `containers`); a 404 is a [`NotFound`]. Fields are only ever added.
//!
//! [`State::report`]: crate::state::State::report

use std::sync::LazyLock;

use handlebars::Handlebars;
use serde::{Deserialize, Serialize};

/// Everything registrator saw, one entry per container, sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Every running container has been looked at once since start.
    #[serde(default)]
    pub complete: bool,
    /// Why registrator is not working now, if it is not.
    #[serde(default)]
    pub unhealthy: Option<String>,
    #[serde(default)]
    pub containers: Vec<ContainerReport>,
}

/// One container and what registrator did with it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerReport {
    /// The full container ID: the value of the `registrator_container` Meta.
    pub id: String,
    /// Its first 12 characters, as `docker ps` shows it.
    #[serde(default)]
    pub short_id: String,
    /// Without Docker's leading `/`.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub running: bool,
    #[serde(default)]
    pub services: Vec<ServiceReport>,
    /// Why nothing (or less than asked for) is registered, and what was
    /// changed on the way; empty when all it asks for is registered as asked.
    #[serde(default)]
    pub reasons: Vec<String>,
}

/// One service a container asks for (or that Consul still holds for it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// The service ID (`<owner>:<container>:<port>` unless `SERVICE_ID`).
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub tags: Vec<String>,
    pub status: Status,
    /// What there is to say about the status (Consul's reason for a refusal).
    #[serde(default)]
    pub reason: Option<String>,
}

/// Where a service stands with Consul.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The agent holds it (as of the last look at the agent).
    Registered,
    /// To be registered: the next op, or once registrator has looked at
    /// the agent and every container.
    Pending,
    /// Consul refused it (`reason`: Consul's words); tried again with backoff.
    Refused,
    /// The Consul agent does not answer: registered once it does.
    Waiting,
    /// Another container asks for the same service ID, and its
    /// registration is the one registered.
    Duplicate,
    /// Consul holds it, and the container no longer asks for it: being deregistered.
    Leaving,
}

impl Status {
    /// The status in words, as the text and the page show it.
    pub fn words(self) -> &'static str {
        match self {
            Status::Registered => "registered in Consul",
            Status::Pending => "pending",
            Status::Refused => "refused by Consul",
            Status::Waiting => "waiting for the Consul agent",
            Status::Duplicate => "not registered: duplicate service ID",
            Status::Leaving => "being deregistered",
        }
    }

    fn class(self) -> &'static str {
        match self {
            Status::Registered => "ok",
            Status::Pending | Status::Waiting | Status::Leaving => "wait",
            Status::Refused | Status::Duplicate => "bad",
        }
    }
}

/// The answer when a key names no container (404), with the names known.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotFound {
    pub error: String,
    #[serde(default)]
    pub known: Vec<String>,
}

/// How many hex characters an ID prefix needs at least.
pub const MIN_PREFIX: usize = 4;

impl Report {
    /// The container `key` names: its full ID, its name (with or without
    /// Docker's leading `/`), or an ID prefix of at least [`MIN_PREFIX`] hex
    /// characters that only it has, in that order.
    pub fn find(&self, key: &str) -> Result<&ContainerReport, NotFound> {
        let key = key.trim();
        let name = key.strip_prefix('/').unwrap_or(key);
        if let Some(c) = self.containers.iter().find(|c| c.id == key || c.name == name) {
            return Ok(c);
        }
        let hex = key.len() >= MIN_PREFIX && key.bytes().all(|b| b.is_ascii_hexdigit());
        let prefix = key.to_ascii_lowercase();
        let matches: Vec<&ContainerReport> =
            if hex { self.containers.iter().filter(|c| c.id.starts_with(&prefix)).collect() } else { Vec::new() };
        let known = self.containers.iter().map(|c| c.name.clone()).collect();
        match matches[..] {
            [c] => Ok(c),
            [] => {
                let mut error = format!("registrator knows no container {key:?} (a name, an ID, or an ID prefix)");
                if !self.complete {
                    error.push_str("; it has not looked at every container yet");
                }
                Err(NotFound { error, known })
            }
            _ => {
                let names: Vec<&str> = matches.iter().map(|c| c.name.as_str()).collect();
                Err(NotFound { error: format!("{key:?} is the ID prefix of several containers: {names:?}"), known })
            }
        }
    }
}

/// `s` on one line: control characters (a newline in a hostile label
/// value) become spaces, so a value cannot forge a line of the report.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// The whole report as plain text (`GET /containers` without `text/html`).
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    if let Some(why) = &report.unhealthy {
        out.push_str(&format!("registrator is not working now: {}\n", one_line(why)));
    }
    if !report.complete {
        out.push_str("registrator has not looked at every container yet: some may be missing\n");
    }
    if report.containers.is_empty() {
        out.push_str("no containers seen\n");
    }
    for (i, c) in report.containers.iter().enumerate() {
        if i > 0 || !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&text_one(c));
    }
    out
}

/// One container as plain text: what `registrator explain` prints.
pub fn text_one(c: &ContainerReport) -> String {
    let running = if c.running { "running" } else { "not running" };
    let mut out =
        format!("{} ({}), image {}, {running}\n", one_line(&c.name), one_line(&c.short_id), one_line(&c.image));
    for s in &c.services {
        let tags = if s.tags.is_empty() { String::new() } else { format!(", tags {}", one_line(&s.tags.join(", "))) };
        out.push_str(&format!(
            "  {}: service {} at {}:{} (ID {}{tags})",
            s.status.words(),
            one_line(&s.name),
            one_line(&s.address),
            s.port,
            one_line(&s.id),
        ));
        if let Some(reason) = &s.reason {
            out.push_str(&format!(": {}", one_line(reason)));
        }
        out.push('\n');
    }
    if !c.reasons.is_empty() {
        out.push_str(if c.services.is_empty() { "  nothing registered, because:\n" } else { "  notes:\n" });
    }
    for reason in &c.reasons {
        out.push_str(&format!("  - {}\n", one_line(reason)));
    }
    out
}

/// The page template (`containers.html.hbs`), handlebars with its default
/// HTML escaping: every value is escaped.
const TEMPLATE: &str = include_str!("containers.html.hbs");

static PAGES: LazyLock<Result<Handlebars<'static>, String>> = LazyLock::new(|| {
    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    registry.register_template_string("containers", TEMPLATE).map_err(|e| e.to_string())?;
    Ok(registry)
});

/// What a page shows: the whole report, one container, or why a key found none.
#[derive(Clone, Copy, Debug)]
pub enum Page<'a> {
    All(&'a Report),
    One(&'a Report, &'a ContainerReport),
    NotFound(&'a Report, &'a NotFound),
}

/// The template's data.
#[derive(Serialize)]
struct View<'a> {
    title: String,
    /// Whether a link back to every container is shown.
    single: bool,
    complete: bool,
    unhealthy: Option<&'a str>,
    error: Option<&'a str>,
    known: &'a [String],
    has_known: bool,
    /// The whole report, and no container in it.
    empty: bool,
    containers: Vec<ContainerView<'a>>,
}

#[derive(Serialize)]
struct ContainerView<'a> {
    c: &'a ContainerReport,
    running: &'static str,
    services: Vec<ServiceView<'a>>,
    nothing: bool,
}

#[derive(Serialize)]
struct ServiceView<'a> {
    s: &'a ServiceReport,
    words: &'static str,
    class: &'static str,
    tags: String,
}

/// The page, as HTML: small, self-contained (inline style and a few lines
/// of script that fetch the page again every 2 s and swap its content; a
/// `<meta refresh>` without script), every value escaped.
pub fn html(page: Page<'_>) -> Result<String, String> {
    let (report, shown, error, known): (&Report, Vec<&ContainerReport>, _, &[String]) = match page {
        Page::All(r) => (r, r.containers.iter().collect(), None, &[]),
        Page::One(r, c) => (r, vec![c], None, &[]),
        Page::NotFound(r, nf) => (r, Vec::new(), Some(nf.error.as_str()), &nf.known),
    };
    let title = match page {
        Page::All(_) => "registrator: containers".to_owned(),
        Page::One(_, c) => format!("registrator: {}", c.name),
        Page::NotFound(..) => "registrator: no such container".to_owned(),
    };
    let containers = shown
        .into_iter()
        .map(|c| ContainerView {
            c,
            running: if c.running { "running" } else { "not running" },
            nothing: c.services.is_empty(),
            services: c
                .services
                .iter()
                .map(|s| ServiceView { s, words: s.status.words(), class: s.status.class(), tags: s.tags.join(", ") })
                .collect(),
        })
        .collect();
    let view = View {
        title,
        single: !matches!(page, Page::All(_)),
        complete: report.complete,
        unhealthy: report.unhealthy.as_deref(),
        error,
        known,
        has_known: !known.is_empty(),
        empty: matches!(page, Page::All(r) if r.containers.is_empty()),
        containers,
    };
    let pages = PAGES.as_ref().map_err(|e| format!("the page template does not parse: {e}"))?;
    pages.render("containers", &view).map_err(|e| format!("the page failed to render: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Report {
        Report {
            complete: true,
            unhealthy: None,
            containers: vec![
                ContainerReport {
                    id: "3f2a1b9c0d1e00112233445566778899aabbccddeeff00112233445566778899".into(),
                    short_id: "3f2a1b9c0d1e".into(),
                    name: "web".into(),
                    image: "nginx:1.27".into(),
                    running: true,
                    services: vec![ServiceReport {
                        id: "host:web:80".into(),
                        name: "web".into(),
                        address: "172.18.0.5".into(),
                        port: 80,
                        tags: vec!["rest".into(), "v1".into()],
                        status: Status::Registered,
                        reason: None,
                    }],
                    reasons: Vec::new(),
                },
                ContainerReport {
                    id: "3f2bffff".into(),
                    short_id: "3f2bffff".into(),
                    name: "<script>alert(1)</script>".into(),
                    image: "debian".into(),
                    running: true,
                    services: Vec::new(),
                    reasons: vec!["port 80: not attached to network \"<script>x</script>\"".into()],
                },
            ],
        }
    }

    #[test]
    fn a_container_is_found_by_id_name_or_unique_prefix() {
        let r = sample();
        let web = &r.containers[0];
        for key in [web.id.as_str(), "web", "/web", "3f2a1b9c", "3F2A", " web "] {
            assert_eq!(r.find(key).map(|c| c.name.as_str()), Ok("web"), "{key}");
        }
        let ambiguous = r.find("3f2b").map(|c| c.name.clone());
        assert_eq!(ambiguous, Ok("<script>alert(1)</script>".to_owned()));
        let several = r.find("3f2").unwrap_err();
        assert!(several.error.contains("no container"), "too short for a prefix: {}", several.error);
        let mut two = r.clone();
        two.containers[1].id = "3f2a9999".into();
        let err = two.find("3f2a").unwrap_err();
        assert!(err.error.contains("several"), "{}", err.error);
        let err = r.find("nope").unwrap_err();
        assert!(err.error.contains("\"nope\""), "{}", err.error);
        assert_eq!(err.known, ["web", "<script>alert(1)</script>"]);
        let incomplete = Report { complete: false, ..r };
        assert!(incomplete.find("nope").unwrap_err().error.contains("not looked at every container"));
    }

    #[test]
    fn text_says_each_service_and_reason_on_lines_of_their_own() {
        let mut r = sample();
        r.containers[1].reasons.push("a\nforged line".into());
        let t = text(&r);
        assert!(t.contains("web (3f2a1b9c0d1e), image nginx:1.27, running\n"), "{t}");
        assert!(
            t.contains("  registered in Consul: service web at 172.18.0.5:80 (ID host:web:80, tags rest, v1)\n"),
            "{t}"
        );
        assert!(t.contains("  nothing registered, because:\n  - port 80: not attached"), "{t}");
        assert!(t.contains("  - a forged line\n"), "control characters cannot make lines: {t}");
        let unhealthy = Report { unhealthy: Some("Consul agent unreachable".into()), complete: false, ..r };
        let t = text(&unhealthy);
        assert!(t.starts_with("registrator is not working now: Consul agent unreachable\n"), "{t}");
        assert!(t.contains("not looked at every container"), "{t}");
    }

    #[test]
    fn json_reads_back_and_statuses_are_lowercase_words() {
        let r = sample();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["containers"][0]["services"][0]["status"], "registered");
        assert_eq!(json["containers"][0]["short_id"], "3f2a1b9c0d1e");
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        for (status, word) in [(Status::Pending, "pending"), (Status::Refused, "refused"), (Status::Waiting, "waiting")]
        {
            assert_eq!(serde_json::to_value(status).unwrap(), word);
        }
        for (status, word) in [(Status::Duplicate, "duplicate"), (Status::Leaving, "leaving")] {
            assert_eq!(serde_json::to_value(status).unwrap(), word);
        }
    }

    #[test]
    fn the_page_escapes_every_value_and_refreshes_itself() {
        let r = sample();
        let page = html(Page::All(&r)).unwrap();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<script>x"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{page}");
        assert!(page.contains("registered in Consul"), "{page}");
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"), "{page}");
        assert!(page.contains("setInterval"), "{page}");
        assert!(!page.contains("http://") && !page.contains("https://"), "no external assets: {page}");
        let one = html(Page::One(&r, &r.containers[1])).unwrap();
        assert!(one.contains("&lt;script&gt;x&lt;/script&gt;") && !one.contains(">web<"), "{one}");
        let nf = r.find("nope").unwrap_err();
        let page = html(Page::NotFound(&r, &nf)).unwrap();
        assert!(page.contains("knows no container") && page.contains("&lt;script&gt;alert"), "{page}");
    }
}
