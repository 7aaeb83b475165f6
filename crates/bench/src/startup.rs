//! How fast each image of the stack starts: from `docker run` to the
//! container answering its own health check (`/health`, what `--probe` and
//! the compose healthchecks ask), `n` times each. registrator and
//! haproxy-sync are healthy only once Consul answers them, so a Consul
//! container runs beside them on the scene's network.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::docker::{Scene, docker};
use crate::stats::Summary;

#[derive(Debug, Serialize)]
pub struct Startup {
    pub image: String,
    /// `docker run` → `/health` answers 200.
    pub run_to_healthy: Summary,
}

/// Starts a container on the scene's network, labelled so the scene removes it.
fn run_on(scene: &Scene, args: &[&str]) -> anyhow::Result<String> {
    let label = format!("portolan-bench={}", scene.label);
    let mut all = vec!["run", "-d", "--label", &label, "--network", &scene.network];
    all.extend_from_slice(args);
    docker(&all)
}

/// The container's address on `network`.
fn address(id: &str, network: &str) -> anyhow::Result<String> {
    let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    Ok(docker(&["inspect", "-f", &format, id])?.trim().to_owned())
}

/// Asks `url` every 5 ms until it answers 200; how long since `t0`.
async fn until_healthy(http: &reqwest::Client, url: &str, t0: Instant) -> anyhow::Result<Duration> {
    while t0.elapsed() < Duration::from_secs(30) {
        if let Ok(resp) = http.get(url).send().await {
            if resp.status() == 200 {
                return Ok(t0.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("{url} not healthy within 30 s")
}

/// Starts each image `n` times; the time each took to answer its health check.
pub async fn run(n: usize) -> anyhow::Result<Vec<Startup>> {
    let scene = Scene::new(&format!("portolan-bench-startup-{}", std::process::id()))?;
    let http = reqwest::Client::builder().timeout(Duration::from_millis(500)).build()?;
    let consul_image = e2e::consul_image();
    let consul =
        run_on(&scene, &["--name", &format!("{}-consul", scene.label), "--network-alias", "consul", &consul_image])?;
    let consul_at = format!("http://{}:8500/v1/status/leader", address(&consul, &scene.network)?);
    until_healthy(&http, &consul_at, Instant::now()).await.context("Consul")?;

    let socket = "/var/run/docker.sock:/var/run/docker.sock:ro";
    let images: [(String, Vec<&str>, u16); 3] = [
        (e2e::image("hello"), vec![], 80),
        (e2e::image("registrator"), vec!["-v", socket], 9090),
        (e2e::image("haproxy"), vec![], 9090),
    ];
    let mut results = Vec::new();
    for (image, extra, port) in images {
        let mut samples = Vec::new();
        for _ in 0..n {
            let mut args = extra.clone();
            args.push(&image);
            if port == 9090 {
                args.push("consul://consul:8500");
            }
            let t0 = Instant::now();
            let id = run_on(&scene, &args)?;
            let url = format!("http://{}:{port}/health", address(&id, &scene.network)?);
            let took = until_healthy(&http, &url, t0).await.with_context(|| format!("{image}\n{}", logs(&id)));
            docker(&["rm", "-f", "-v", &id])?;
            samples.push(took?);
        }
        let summary = Summary::of(&samples);
        eprintln!("[startup] {image}: docker run → healthy {summary}");
        results.push(Startup { image: image.clone(), run_to_healthy: summary });
    }
    Ok(results)
}

fn logs(id: &str) -> String {
    std::process::Command::new("docker")
        .args(["logs", "--tail", "20", id])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout))
        .unwrap_or_default()
}
