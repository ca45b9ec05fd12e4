//! `netscope-agent`: the command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use netscope_agent::{app, config::ProbeArgs, observability};

#[derive(Parser)]
#[command(
    name = "netscope-agent",
    version,
    about = "NetScope: outbound TCP truth from the kernel"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the kernel probe and print one JSON line per closed or failed outbound TCP
    /// connection until Ctrl-C/SIGTERM; then detach and print the reconciled counters.
    Probe(ProbeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    observability::init();
    match cli.command {
        Command::Probe(args) => {
            let settings = match args.validate() {
                Ok(s) => s,
                Err(e) => return fail(&e, 2),
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(&e, 1),
            };
            match runtime.block_on(app::run_probe(settings)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => fail(&e, 1),
            }
        }
    }
}

/// One clear line, no backtrace.
fn fail(error: &dyn std::error::Error, code: u8) -> ExitCode {
    eprintln!("netscope-agent: error: {error}");
    ExitCode::from(code)
}
