use haproxy_sync::config::{Args, Explain};

/// An allocator that hands freed memory back to the system (from a
/// background thread, within seconds): rendering a large catalog needs
/// several times the memory that holding it does, and glibc's allocator
/// keeps the peak, in one arena per thread.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("memory is returned to the system only as haproxy-sync allocates: {e}");
    }
    let argv: Vec<String> = std::env::args().collect();
    if let Some(explain) = Explain::from_args(&argv) {
        match haproxy_sync::routes::explain(explain.metrics_addr, &explain.service).await {
            Ok((text, known)) => {
                print!("{text}");
                std::process::exit(if known { 0 } else { 1 });
            }
            Err(e) => {
                eprintln!("{e:#}");
                std::process::exit(2);
            }
        }
    }
    let args = <Args as clap::Parser>::parse_from(argv);
    args.admin.start().await;
    let shutdown = ops::shutdown_token();
    if let Err(e) = haproxy_sync::run(args, shutdown).await {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}
