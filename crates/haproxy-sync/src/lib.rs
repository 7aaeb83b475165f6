//! haproxy-sync: keeps HAProxy's configuration equal to Consul's healthy
//! instances, with validated, hitless changes.
//!
//! # Layout
//!
//! - [`known`]: what is known of Consul, each answer a pure transition.
//! - [`watch`]: two blocking queries and a few reads → [`model::Catalog`] snapshots.
//! - [`model`]: pure routing rules: catalog → sanitised template data.
//! - [`render`]: the handlebars template → configuration text.
//! - [`haproxy`]: `haproxy -c`, the master process (kept by
//!   [`ops::supervise`]) and its two sockets.
//! - [`slots`]: instances laid out on server slots; runtime API commands.
//! - [`sync`]: quiescence, and the apply: runtime API or check, atomic write
//!   and reload, as pure functions decide.
//! - [`routes`]: the routes page: every service, its route or why none.
//! - [`tls`]: TLS certificates checked and applied through the runtime API.
//! - [`metrics`]: what `/metrics` reports.
//! - [`keeper`]: haproxy-keeper's part: haproxy-sync kept running beside HAProxy.
//! - [`config`]: command line and environment.
//!
//! [`run`] wires haproxy-sync and [`keep`] haproxy-keeper; the binaries
//! only parse their arguments and call them.
#![forbid(unsafe_code)]

pub mod config;
pub mod haproxy;
pub mod keeper;
pub mod known;
pub mod metrics;
pub mod model;
pub mod render;
pub mod routes;
pub mod slots;
pub mod sync;
pub mod tls;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch as channel;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use prometheus_client::registry::Registry;

use crate::config::Args;
use crate::haproxy::Haproxy;
use crate::metrics::Metrics;
use crate::render::Renderer;
use crate::sync::{Applier, SyncOptions};
use crate::watch::{WatchOptions, WatchStats};

/// How long to wait for Consul's first answer before starting HAProxy with
/// whatever configuration there is.
const FIRST_ANSWER_WAIT: Duration = Duration::from_secs(3);

/// Runs haproxy-sync as configured by `args` until `shutdown`.
pub async fn run(args: Args, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = consul::Client::new(&args.consul.settings()?)?;
    let renderer = match &args.template {
        Some(path) => {
            let source =
                std::fs::read_to_string(path).with_context(|| format!("reading template {}", path.display()))?;
            Renderer::new(&path.display().to_string(), &source)?
        }
        None => Renderer::default_template(),
    };
    let credentials = args.stats_credentials()?;
    if credentials.is_none() {
        warn!("STATS_USER and STATS_PASSWORD (or STATS_PASSWORD_FILE) are not both set: the stats page is off");
    }
    // Held from here until this returns, when this process runs HAProxy.
    let runs_haproxy = !args.external && args.command.is_none() && !args.dry_run && !args.once;
    let held = if runs_haproxy { held_listeners(&args) } else { Vec::new() };
    let mut haproxy = haproxy_for(&args, credentials.clone());
    haproxy.env.extend(held.iter().map(haproxy::HeldListener::env));
    create_dirs(&args)?;
    let tls_opts = tls_options(&args)?;
    let opts = SyncOptions {
        wait_min: args.wait.0,
        wait_max: args.wait.1,
        bind: args.bind.clone(),
        http_port: args.http_port,
        stats_port: args.stats_port,
        stats_enabled: credentials.is_some(),
        runtime_socket: args.runtime_socket.clone(),
        hard_stop_after: args.hard_stop_after.clone(),
        template_name: args.template.as_ref().map_or("haproxy/haproxy.cfg.hbs".to_owned(), |p| p.display().to_string()),
        min_slots: args.min_slots,
        reload_command: args.command.clone(),
        external: args.external,
        default_service: args.default_service.clone(),
        runtime_api: args.apply == config::ApplyMode::Runtime,
        access_log: args.access_log,
        https: tls_opts
            .as_ref()
            .map(|t| model::Https { port: args.https_port, crt_list: t.crt_list().display().to_string() }),
    };
    let runtime = args.command.is_none().then(|| args.runtime_socket.clone());
    let board = routes::Board::new(runtime, &args.tag, args.registrator_url.clone());
    let metrics = Metrics::default();
    let mut applier = Applier::new(haproxy.clone(), renderer, opts, metrics.clone()).with_board(board.clone());
    let mut tls = tls_opts.map(|o| tls::Tls::new(o, haproxy.clone(), metrics.clone()));

    let (tx, mut rx) = channel::channel(None);
    let watch_opts = WatchOptions { tag: args.tag.clone(), ..WatchOptions::default() };
    let stats = Arc::new(WatchStats {
        errors: metrics.consul_errors.clone(),
        up: metrics.consul_up.clone(),
        service_reads: metrics.consul_service_reads.clone(),
        sweeps: metrics.consul_sweeps.clone(),
    });
    let watcher = tokio::spawn(watch::run(client.clone(), watch_opts, tx, stats, shutdown.clone()));
    let admin = match args.dry_run || args.once {
        true => None,
        false => {
            args.admin.bind().await.with_context(|| format!("serving /metrics on {:?}", args.admin.metrics_addr))?
        }
    };
    if let Some(listener) = admin {
        let mut registry = Registry::with_prefix("haproxy_sync");
        metrics.register(&mut registry);
        let health = {
            let metrics = metrics.clone();
            Arc::new(move || {
                if metrics.consul_up.get() == 1 { Ok(String::new()) } else { Err("Consul does not answer".to_owned()) }
            }) as ops::admin::HealthCheck
        };
        ops::admin::serve(listener, Arc::new(registry), health, routes::router(board), shutdown.clone());
    }

    // The certificates and crt-list the configuration names are there
    // before it is checked; HAProxy already running gets changes at once.
    if let Some(tls) = tls.as_mut().filter(|_| !args.dry_run) {
        tls.sync().await.context("TLS certificates")?;
    }
    if args.dry_run || args.once {
        return once(&args, &mut applier, &mut rx, &shutdown).await.map(|()| watcher.abort());
    }

    // Start HAProxy with Consul's state if it answers soon; else with the
    // configuration on disk; else with no routes (every path answers 404).
    let catalog = match tokio::time::timeout(FIRST_ANSWER_WAIT, rx.wait_for(Option::is_some)).await {
        Ok(Ok(catalog)) => catalog.clone(),
        _ => None,
    };
    rx.mark_unchanged();
    // An HAProxy already running (haproxy-sync restarted beside it) gets
    // the first configuration loaded too.
    let running = args.command.is_some() || (args.external && haproxy.master("show proc").await.is_ok());
    match catalog {
        Some(catalog) => {
            let plan = applier.plan(&catalog)?;
            applier.apply(plan, running).await.context("first configuration")?;
            applier.tell_board(Ok(Some("first configuration")));
        }
        None if applier.adopt_existing(running).await => {
            info!("Consul has not answered yet; starting with the configuration on disk")
        }
        None => {
            warn!("Consul has not answered yet; starting with no routes");
            let plan = applier.plan(&Default::default())?;
            applier.apply(plan, false).await.context("empty configuration")?;
        }
    }

    let (ready_tx, ready_rx) = channel::channel(false);
    let supervisor = if args.command.is_some() {
        // The user's command loads the file wherever HAProxy runs.
        let _ = ready_tx.send(true);
        tokio::spawn(async {})
    } else if args.external {
        tokio::spawn(haproxy::follow(haproxy, ready_tx, shutdown.clone()))
    } else {
        tokio::spawn(haproxy::supervise(haproxy, Duration::from_secs(args.grace), ready_tx, shutdown.clone()))
    };
    let certs = tls.map(|tls| tokio::spawn(tls::watch(tls, tls::POLL, Some(client.clone()), shutdown.clone())));
    sync::run(applier, rx, ready_rx, shutdown.clone()).await;
    if let Some(certs) = certs {
        let _ = certs.await;
    }
    watcher.abort();
    let _ = supervisor.await;
    Ok(())
}

/// Runs HAProxy and haproxy-sync side by side until `shutdown`, restarting
/// either when it dies: haproxy-sync (`sync_bin`, run with `sync_args` and
/// `--external`) drives HAProxy through its sockets, so a crash of it never
/// takes HAProxy down, and a dead HAProxy is restarted on the last file.
pub async fn keep(
    args: Args,
    sync_bin: std::path::PathBuf,
    sync_args: Vec<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Held for as long as the keeper runs, through restarts of either;
    // haproxy-sync inherits it too, for its `haproxy -c`.
    let held = held_listeners(&args);
    let held_env: Vec<(String, String)> = held.iter().map(haproxy::HeldListener::env).collect();
    let mut haproxy = haproxy_for(&args, args.stats_credentials()?);
    haproxy.env.extend(held_env.iter().cloned());
    create_dirs(&args)?;
    let sync_task = tokio::spawn(keeper::keep_sync(sync_bin, sync_args, held_env, shutdown.clone()));
    // HAProxy starts on the file haproxy-sync writes first (Consul's state,
    // the file already there, or no routes), once it passes the check.
    if !keeper::wait_for_config(&haproxy, &shutdown).await {
        let _ = sync_task.await;
        return Ok(());
    }
    let (ready_tx, _ready_rx) = channel::channel(false);
    haproxy::supervise(haproxy, Duration::from_secs(args.grace), ready_tx, shutdown.clone()).await;
    let _ = sync_task.await;
    Ok(())
}

/// Where TLS certificates come from and go, when `--certs` is set.
fn tls_options(args: &Args) -> anyhow::Result<Option<tls::TlsOptions>> {
    let Some(dir) = &args.certs else { return Ok(None) };
    if args.command.is_some() {
        anyhow::bail!("--certs applies certificates through HAProxy's runtime API, which --command does not give");
    }
    let mut opts = tls::TlsOptions::new(dir.clone(), &args.config, args.runtime_socket.clone())
        .with_context(|| format!("the directory of {}", args.config.display()))?;
    opts.kv_prefix.clone_from(&args.certs_kv);
    let list = opts.crt_list().display().to_string();
    if list.chars().any(|c| c.is_whitespace() || c == '"' || c == '#') {
        anyhow::bail!("the crt-list path {list:?} cannot go in HAProxy's configuration (spaces, quotes or #)");
    }
    Ok(Some(opts))
}

/// The HTTP (and, with `--certs`, HTTPS) frontend's socket, held for
/// HAProxy ([`haproxy::HeldListener`]) when the template binds to one;
/// none (HAProxy binds the port itself, and a worker's death refuses
/// connections until it is back) if it does not or the socket cannot be
/// bound.
fn held_listeners(args: &Args) -> Vec<haproxy::HeldListener> {
    let template = match &args.template {
        Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
        None => render::DEFAULT_TEMPLATE.to_owned(),
    };
    let mut wanted = Vec::new();
    if haproxy::template_uses_held_listener(&template) {
        wanted.push((haproxy::HTTP_LISTENER_ENV, "HTTP", args.http_port));
    }
    if args.certs.is_some() && haproxy::template_uses_held_https_listener(&template) {
        wanted.push((haproxy::HTTPS_LISTENER_ENV, "HTTPS", args.https_port));
    }
    let mut held = Vec::new();
    for (var, what, port) in wanted {
        match haproxy::HeldListener::bind_for(var, &args.bind, port) {
            Ok(listener) => {
                info!(port, "holding the {what} listener for HAProxy");
                held.push(listener);
            }
            Err(e) => warn!(error = %e, port, "cannot hold the {what} listener; HAProxy binds it itself"),
        }
    }
    held
}

/// Makes the directories of the configuration file and the sockets.
fn create_dirs(args: &Args) -> anyhow::Result<()> {
    for path in [&args.config, &args.master_socket, &args.runtime_socket] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    Ok(())
}

/// The HAProxy to run; the stats credentials reach it through its environment.
fn haproxy_for(args: &Args, credentials: Option<(String, String)>) -> Haproxy {
    let env = credentials
        .into_iter()
        .flat_map(|(u, p)| [("STATS_USER".to_owned(), u), ("STATS_PASSWORD".to_owned(), p)])
        .collect();
    Haproxy { bin: args.haproxy.clone(), config: args.config.clone(), master_socket: args.master_socket.clone(), env }
}

async fn once(
    args: &Args,
    applier: &mut Applier,
    rx: &mut channel::Receiver<Option<model::Catalog>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let catalog = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = rx.wait_for(Option::is_some) => c.map(|c| c.clone().unwrap_or_default()).context("Consul watcher stopped")?,
        };
        rx.mark_unchanged();
        let plan = applier.plan(&catalog)?;
        if args.dry_run {
            println!("{}", applier.text(&plan)?);
        } else {
            let applied = applier.apply(plan, args.master_socket.exists()).await?;
            info!(?applied, "configuration applied");
        }
        if args.once {
            return Ok(());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            more = sync::settle(rx, args.wait.0, args.wait.1) => if !more { return Ok(()) },
        }
    }
}
