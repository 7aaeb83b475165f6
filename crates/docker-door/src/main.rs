//! `docker-door`: parses its flags and runs [`docker_door::run`], or
//! [`docker_door::probe`] with `--probe`.

use clap::Parser;
use docker_door::Args;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.probe {
        std::process::exit(if docker_door::probe(&args.listen).await { 0 } else { 1 });
    }
    ops::init_tracing(args.log_format);
    if let Err(e) = docker_door::run(args, ops::shutdown_token()).await {
        tracing::error!("{e}");
        std::process::exit(1);
    }
}
