//! `tollgate`: the one binary. Parses flags and wires the library crates; nothing testable lives here.

mod cli;

/// mimalloc: the request path allocates small buffers on every thread; glibc's arena locks
/// showed up in gateway profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_tracing(args.log.as_deref());
    // TOLLGATE_WORKER_THREADS: async worker threads (default: one per core); 0 runs one event
    // loop on the main thread (tokio's current-thread runtime: no wake-ups between workers)
    let threads = std::env::var("TOLLGATE_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let mut builder = match threads {
        Some(0) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(n) = threads.filter(|n| *n > 0) {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
