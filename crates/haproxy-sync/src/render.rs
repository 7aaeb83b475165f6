//! Renders the HAProxy configuration from a handlebars template.

use handlebars::Handlebars;

use crate::model::Config;

/// The template shipped in `haproxy/haproxy.cfg.hbs`.
pub const DEFAULT_TEMPLATE: &str = include_str!("../../../haproxy/haproxy.cfg.hbs");

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {name} does not parse: {source}")]
    Template { name: String, source: Box<handlebars::TemplateError> },
    #[error("template {name} failed to render: {source}")]
    Render { name: String, source: Box<handlebars::RenderError> },
}

/// A parsed template, ready to render many times.
pub struct Renderer {
    registry: Handlebars<'static>,
    name: String,
}

impl Renderer {
    /// Parses `source`. Strict mode is on (a misspelt variable is an error,
    /// not an empty string) and HTML escaping is off (this is not HTML).
    pub fn new(name: &str, source: &str) -> Result<Self, RenderError> {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(handlebars::no_escape);
        registry
            .register_template_string("config", source)
            .map_err(|e| RenderError::Template { name: name.to_owned(), source: Box::new(e) })?;
        Ok(Self { registry, name: name.to_owned() })
    }

    #[allow(clippy::expect_used, reason = "the built-in template; a unit test renders it")]
    pub fn default_template() -> Self {
        Self::new("haproxy/haproxy.cfg.hbs", DEFAULT_TEMPLATE).expect("the default template parses")
    }

    pub fn render(&self, config: &Config) -> Result<String, RenderError> {
        let text = self
            .registry
            .render("config", config)
            .map_err(|e| RenderError::Render { name: self.name.clone(), source: Box::new(e) })?;
        Ok(tidy(&text))
    }
}

/// Drops runs of blank lines the template's block helpers leave behind.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.lines() {
        if line.trim().is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use consul::HealthStatus;

    use super::*;
    use crate::model::{self, Catalog, Instance, Stats};

    fn config(catalog: &Catalog) -> Config {
        Config {
            services: model::services(catalog).0,
            bind: String::new(),
            http_port: 80,
            stats: Stats { enabled: true, port: 1936 },
            runtime_socket: "/run/admin.sock".into(),
            hard_stop_after: "30s".into(),
            template: "t".into(),
            default_backend: "no_route".into(),
            access_log: false,
            https: None,
        }
    }

    #[test]
    fn default_template_routes_each_service_by_prefix_and_strips_it() {
        let inst = Instance {
            id: "x:1".into(),
            address: "10.0.0.2".into(),
            port: 8080,
            status: HealthStatus::Passing,
            tags: vec![],
            meta: Default::default(),
            ..Default::default()
        };
        let catalog =
            Catalog { services: [("hello".to_owned(), std::sync::Arc::new(vec![inst]))].into(), ..Default::default() };
        let text = Renderer::default_template().render(&config(&catalog)).unwrap();
        for needle in [
            "acl path_be_hello path /hello\n",
            "acl path_be_hello path_beg /hello/\n",
            "use_backend be_hello if path_be_hello\n",
            "backend be_hello\n    balance roundrobin\n    option httpchk GET /\n    http-request replace-path ^/hello/?(.*) /\\1\n",
            "server x_1 10.0.0.2:8080 check weight 100\n",
            "stats auth \"${STATS_USER}:${STATS_PASSWORD}\"",
            "default_backend no_route",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains("\n\n\n"));
    }

    #[test]
    fn edge_settings_shape_frontends_and_backends() {
        let inst = |service: &str, meta: &[(&str, &str)]| Instance {
            id: format!("{service}-1"),
            address: "10.0.0.2".into(),
            port: 6379,
            status: HealthStatus::Passing,
            tags: vec![],
            meta: meta.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ..Default::default()
        };
        let catalog = Catalog {
            services: [
                ("cache", vec![inst("cache", &[("lb_mode", "tcp"), ("lb_port", "6380"), ("lb_maxconn", "50")])]),
                (
                    "web",
                    vec![inst("web", &[("lb_sticky", "true"), ("lb_rate_limit", "20"), ("lb_https_redirect", "on")])],
                ),
            ]
            .into_iter()
            .map(|(n, i)| (n.to_owned(), std::sync::Arc::new(i)))
            .collect(),
            ..Default::default()
        };
        let mut cfg = config(&catalog);
        cfg.access_log = true;
        // Without TLS, no redirect; with it on 443, to the same URL over
        // HTTPS; on another port, to that port.
        let plain = Renderer::default_template().render(&cfg).unwrap();
        assert!(!plain.contains("redirect"), "{plain}");
        cfg.https = Some(model::Https { port: 8443, crt_list: "/c/list".into() });
        let other = Renderer::default_template().render(&cfg).unwrap();
        let needle = "http-request redirect location https://%[req.hdr(host),field(1,:)]:8443%[capture.req.uri] code 308 if !{ ssl_fc } path_be_web\n";
        assert!(other.contains(needle), "{other}");
        cfg.https = Some(model::Https { port: 443, crt_list: "/c/list".into() });
        let text = Renderer::default_template().render(&cfg).unwrap();
        if let Ok(path) = std::env::var("RENDER_EDGE_TO") {
            std::fs::write(path, &text).unwrap();
        }
        for needle in [
            "log stdout format raw local0 info\n",
            "frontend tcp_cache\n    mode tcp\n    bind :6380\n",
            "default_backend be_cache\n",
            "backend be_cache\n    balance roundrobin\n    mode tcp\n",
            "server cache-1 10.0.0.2:6379 check weight 100 maxconn 50\n",
            "cookie lb_web insert indirect nocache httponly\n",
            "server web-1 10.0.0.2:6379 check weight 100 cookie web-1\n",
            "http-request deny deny_status 429 if { sc_http_req_rate(0) gt 20 }\n",
            "http-request redirect scheme https code 308 if !{ ssl_fc } path_be_web\n",
            "\"request_id\":\"%[var(txn.request_id),json(utf8s)]\"",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        // A TCP service has no path route in the HTTP frontend.
        assert!(!text.contains("path_be_cache"), "{text}");
    }

    #[test]
    fn strict_mode_refuses_unknown_variables() {
        let r = Renderer::new("t", "{{no_such_field}}").unwrap();
        let err = r.render(&config(&Catalog::default())).unwrap_err().to_string();
        assert!(err.contains("no_such_field"), "{err}");
        // A template that does not parse is refused at start, naming the file.
        let err = Renderer::new("mine.hbs", "{{#each services}}").err().expect("refused").to_string();
        assert!(err.contains("mine.hbs"), "{err}");
    }
}
