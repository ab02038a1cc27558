use std::process::ExitCode;

use clap::Parser;
use sluice::cli::{self, Cli, Command};

/// jemalloc hands memory freed after a burst (a large transaction, a
/// backfill) back to the system within seconds; glibc's per-thread arenas
/// kept about twice the live heap (`cargo bench --bench memory`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let done = match cli.command {
            Command::Run(args) => cli::run(args).await,
            Command::Check(args) => cli::check(args).await,
            Command::Search(args) => cli::search(args),
            Command::Function(command) => cli::function::run(command),
            Command::Demo(args) => sluice::demo::run(args).await,
            Command::Failed(command) => cli::failed(command).await,
            Command::Status { api, json } => cli::manage::status(api, json).await,
            Command::Backfill { api, command } => cli::manage::backfill(api, command).await,
            Command::Verify(args) => {
                return match cli::verify::run(args).await {
                    Ok(true) => Ok(ExitCode::SUCCESS),
                    // Differences were found and printed.
                    Ok(false) => Ok(ExitCode::from(1)),
                    Err(e) => {
                        eprintln!("error: {e}");
                        Ok(ExitCode::from(cli::verify::exit_code(&e)))
                    }
                };
            }
        };
        done.map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            cli::exit_code(&e)
        }
    }
}
