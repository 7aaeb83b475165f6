//! Containers for benchmarks, through the Docker CLI, labelled so that a
//! run cleans up after itself.

use anyhow::{Context, bail};
use futures_util::{StreamExt, stream};

/// A network and the containers started on it, removed on drop.
pub struct Scene {
    pub label: String,
    pub network: String,
}

impl Scene {
    pub fn new(label: &str) -> anyhow::Result<Self> {
        let scene = Self { label: label.to_owned(), network: format!("{label}-net") };
        scene.remove_all();
        docker(&["network", "create", "--label", &format!("portolan-bench={label}"), &scene.network])?;
        Ok(scene)
    }

    /// Starts `n` containers asking to be registered as `service`, `parallel` at a time.
    pub async fn start(&self, service: &str, n: usize, parallel: usize) -> anyhow::Result<Vec<String>> {
        let runs = (0..n).map(|_| self.start_one(service));
        let ids: Vec<anyhow::Result<String>> = stream::iter(runs).buffer_unordered(parallel).collect().await;
        ids.into_iter().collect()
    }

    pub async fn start_one(&self, service: &str) -> anyhow::Result<String> {
        self.start_one_with(service, &[]).await
    }

    /// Starts one container asking for `service`, with more `KEY=value` settings.
    pub async fn start_one_with(&self, service: &str, settings: &[&str]) -> anyhow::Result<String> {
        let label = format!("portolan-bench={}", self.label);
        let env = format!("SERVICE_NAME={service}");
        let mut args = vec!["run", "-d", "--rm", "--label", &label, "--network", &self.network, "-e", &env];
        for setting in settings {
            args.extend(["-e", setting]);
        }
        args.extend(["--expose", "80", crate::IMAGE, "sleep", "infinity"]);
        let out = tokio::process::Command::new("docker").args(args).output().await.context("docker run")?;
        if !out.status.success() {
            bail!("docker run: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Kills all `ids` at once: one Docker API request each, all in flight together.
    pub async fn kill(&self, ids: &[String]) -> anyhow::Result<()> {
        let docker = bollard::Docker::connect_with_defaults()?;
        let kills =
            ids.iter().map(|id| docker.kill_container(id, None::<bollard::query_parameters::KillContainerOptions>));
        for result in futures_util::future::join_all(kills).await {
            result.context("kill")?;
        }
        Ok(())
    }

    pub fn remove_all(&self) {
        let filter = format!("label=portolan-bench={}", self.label);
        if let Ok(ids) = docker(&["ps", "-aq", "--filter", &filter]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids);
                let _ = docker(&args);
            }
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.remove_all();
        let _ = docker(&["network", "rm", &self.network]);
    }
}

pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("docker").args(args).output().context("run docker")?;
    if !out.status.success() {
        bail!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
