//! `netscope-agent`: the command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use netscope_agent::{
    app,
    config::{ProbeArgs, RunArgs},
    observability,
};

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
    /// Run the pipeline: consume outbound-call requests from Kafka, execute them under the
    /// resilience policies, attach the kernel's facts of each connection, write results to
    /// Kafka and the audit trail (one JSON line per call on stdout).
    Run(Box<RunArgs>),
    /// Send demo requests to the local pipeline's topic.
    Send(app::SendArgs),
    /// The audit trail in Ceph RGW.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Read a time range back from RGW and check it against the per-node sequence numbers:
    /// prints the report as JSON; exit status 0 when complete, 3 when there are gaps,
    /// duplicates or bad objects.
    Verify(app::VerifyArgs),
}

fn runtime() -> Result<tokio::runtime::Runtime, std::io::Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    observability::init();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(&e, 1),
    };
    match cli.command {
        Command::Probe(args) => {
            let settings = match args.validate() {
                Ok(s) => s,
                Err(e) => return fail(&e, 2),
            };
            match rt.block_on(app::run_probe(settings)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => fail(&e, 1),
            }
        }
        Command::Run(args) => {
            let settings = match args.validate() {
                Ok(s) => s,
                Err(e) => return fail(&e, 2),
            };
            match rt.block_on(app::run_pipeline(settings)) {
                Ok(summary) => {
                    println!("{}", serde_json::to_string(&summary).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e, 1),
            }
        }
        Command::Audit(AuditCommand::Verify(args)) => {
            let settings = match args.validate() {
                Ok(s) => s,
                Err(e) => return fail(&e, 2),
            };
            match rt.block_on(app::verify_audit(&settings)) {
                Ok(report) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                    for (node, n) in &report.nodes {
                        eprintln!(
                            "netscope-agent: audit {node}: {} events, sequences {}..={}, {} gaps, {} duplicates",
                            n.events,
                            n.first_sequence,
                            n.last_sequence,
                            n.gaps.len(),
                            n.duplicates.len()
                        );
                    }
                    if report.complete() {
                        eprintln!(
                            "netscope-agent: audit complete ({} objects)",
                            report.objects
                        );
                        ExitCode::SUCCESS
                    } else {
                        eprintln!(
                            "netscope-agent: audit INCOMPLETE: {} bad objects; gaps/duplicates listed above",
                            report.bad_objects.len()
                        );
                        ExitCode::from(3)
                    }
                }
                Err(e) => fail(&e, 1),
            }
        }
        Command::Send(args) => match rt.block_on(app::send_demo(&args)) {
            Ok(n) => {
                eprintln!("netscope-agent: sent {n} demo requests to {}", args.topic);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e, 1),
        },
    }
}

/// One clear line, no backtrace.
fn fail(error: &dyn std::error::Error, code: u8) -> ExitCode {
    eprintln!("netscope-agent: error: {error}");
    ExitCode::from(code)
}
