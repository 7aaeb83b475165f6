//! `portolan-bench`: the project's benchmarks, against real Docker, Consul
//! and HAProxy. `scripts/bench` builds the release binaries and runs it.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark stops at the first thing that goes wrong, saying what"
)]
#![allow(clippy::cast_precision_loss, reason = "statistics over counts and durations far below 2^52")]

mod docker;
mod haproxy;
mod hosts;
mod kill;
mod load;
mod modes;
mod plot;
mod registrator;
mod report;
mod stack;
mod startup;
mod stats;
mod tls;
mod worker;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The image benchmark containers run (made by scripts/base-images).
const IMAGE: &str = "debian:trixie-slim";

#[derive(Debug, Parser)]
#[command(name = "portolan-bench")]
struct Cli {
    /// Where results (JSON) and logs go.
    #[arg(long, default_value = "bench/out")]
    out: PathBuf,
    /// Directory of the release binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Docker event → Consul latency, resync, mass kill, memory.
    Registrator(registrator::Opts),
    /// Consul change → serving latency, scaling under load, a large catalog.
    HaproxySync(haproxy::Opts),
    /// The whole stack scaled under load, changes applied three ways: runtime API, reload, haproxy -sf.
    ApplyModes(modes::Opts),
    /// Discovery latency on the whole compose stack.
    Stack(stack::Opts),
    /// Across Docker hosts: a three-host cluster and a two-node Swarm (scripts/hosts).
    Hosts(hosts::Opts),
    /// Instances SIGKILLed under GET load, with the template's retries and with those before them.
    Kill(kill::Opts),
    /// HAProxy's worker SIGKILLed under load, with the held listener and with HAProxy binding the port itself.
    Worker(worker::Opts),
    /// HTTPS against plain HTTP through HAProxy, and certificates renewed under load.
    Tls(tls::Opts),
    /// Idle memory of the demo service and the images' sizes.
    Footprint,
    /// Writes REPORT.md and its plots into DIR from the results in --out.
    Report {
        #[arg(long, default_value = "bench")]
        dir: PathBuf,
    },
    /// Every scenario at the sizes of the report, then the report.
    All {
        #[arg(long, default_value = "bench")]
        dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.out)?;
    match &cli.scenario {
        Scenario::Registrator(opts) => {
            let results = registrator::run(opts, &cli.bin_dir.join("registrator"), &cli.out).await?;
            write(&cli.out, "registrator", &results)?;
        }
        Scenario::HaproxySync(opts) => {
            let results = haproxy::run(opts, &cli.bin_dir.join("haproxy-sync"), &cli.out).await?;
            write(&cli.out, "haproxy-sync", &results)?;
        }
        Scenario::ApplyModes(opts) => {
            let runs = modes::run(opts, &cli.out).await?;
            write(&cli.out, "apply-modes", &runs)?;
            let png = cli.out.join("apply-modes.png");
            plot::apply_modes(&runs, &png)?;
            eprintln!("wrote {}", png.display());
        }
        Scenario::Stack(opts) => write(&cli.out, "stack", &stack::run(opts).await?)?,
        Scenario::Hosts(opts) => write(&cli.out, "hosts", &hosts::run(opts).await?)?,
        Scenario::Kill(opts) => write(&cli.out, "kill", &kill::run(opts, &cli.out).await?)?,
        Scenario::Worker(opts) => write(&cli.out, "worker", &worker::run(opts, &cli.out).await?)?,
        Scenario::Tls(opts) => write(&cli.out, "tls", &tls::run(opts).await?)?,
        Scenario::Footprint => write(&cli.out, "footprint", &report::footprint(&cli.bin_dir).await?)?,
        Scenario::Report { dir } => report::write(&cli.out, dir, "scripts/bench report")?,
        Scenario::All { dir } => {
            let started = std::time::Instant::now();
            let reg = registrator::Opts { starts: 50, running: vec![50, 200], kill: 50, refused_secs: 150 };
            write(&cli.out, "registrator", &registrator::run(&reg, &cli.bin_dir.join("registrator"), &cli.out).await?)?;
            let hs = haproxy::Opts {
                changes: 50,
                cycles: 10,
                sizes: ["100", "1000", "10000x3"]
                    .iter()
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()
                    .map_err(anyhow::Error::msg)?,
                checked: vec![1000],
                instances: 10,
                node_losses: 5,
                connections: 8,
            };
            write(&cli.out, "haproxy-sync", &haproxy::run(&hs, &cli.bin_dir.join("haproxy-sync"), &cli.out).await?)?;
            let modes_opts = modes::Opts { cycles: 10, connections: 8, rate: 200 };
            write(&cli.out, "apply-modes", &modes::run(&modes_opts, &cli.out).await?)?;
            write(&cli.out, "footprint", &report::footprint(&cli.bin_dir).await?)?;
            write(&cli.out, "stack", &stack::run(&stack::Opts { starts: 50 }).await?)?;
            let kill_opts = kill::Opts { instances: 8, kills: 24, every_ms: 1000, connections: 8 };
            write(&cli.out, "kill", &kill::run(&kill_opts, &cli.out).await?)?;
            let worker_opts = worker::Opts { kills: 5, connections: 8, instances: 3 };
            write(&cli.out, "worker", &worker::run(&worker_opts, &cli.out).await?)?;
            let tls_opts = tls::Opts { seconds: 10, connections: 4, renewals: 10 };
            write(&cli.out, "tls", &tls::run(&tls_opts).await?)?;
            let hosts_opts = hosts::Opts { starts: 30, cuts: 3, leader_kills: 3, swarm_scales: 5 };
            write(&cli.out, "hosts", &hosts::run(&hosts_opts).await?)?;
            write(&cli.out, "run", &serde_json::json!({ "scenarios_seconds": started.elapsed().as_secs_f64() }))?;
            report::write(&cli.out, dir, "scripts/bench")?;
        }
    }
    Ok(())
}

fn write(out: &std::path::Path, name: &str, results: &impl serde::Serialize) -> anyhow::Result<()> {
    let path = out.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(results)? + "\n")?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
