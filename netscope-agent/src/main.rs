//! `netscope-agent`: the command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use netscope_agent::{
    app,
    audit::verify::VerifyReport,
    config::{ApiArgs, ApiSettings, ConfigError, ProbeArgs, ProbeSettings, RunArgs},
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
    /// Attach the kernel probe, serve the API, metrics and live page, and print one JSON line
    /// per closed or failed outbound TCP connection until Ctrl-C/SIGTERM; then detach and print
    /// the reconciled counters.
    Probe(ProbeCommand),
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

#[derive(clap::Args)]
struct ProbeCommand {
    /// Print which hook serves each fact on this kernel (or why none can), and exit: 0 when
    /// every required fact is served, 1 otherwise. Loads nothing.
    #[arg(long)]
    check: bool,
    /// With --check: JSON instead of text.
    #[arg(long, requires = "check")]
    json: bool,
    #[command(flatten)]
    probe: ProbeArgs,
    #[command(flatten)]
    api: ApiArgs,
}

impl ProbeCommand {
    /// Both halves validated, every problem listed at once.
    fn validate(&self) -> Result<(ProbeSettings, ApiSettings), ConfigError> {
        let mut errors = Vec::new();
        let probe = self
            .probe
            .validate()
            .map_err(|ConfigError::Invalid(e)| errors.extend(e))
            .ok();
        let api = self.api.validate_into(&mut errors);
        match (probe, api) {
            (Some(p), Some(a)) if errors.is_empty() => Ok((p, a)),
            _ => Err(ConfigError::Invalid(errors)),
        }
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Read a time range back from RGW and check it against the per-node sequence numbers:
    /// prints the report as JSON; exit status 0 when complete, 3 when there are gaps,
    /// duplicates or bad objects.
    Verify(app::VerifyArgs),
}

/// `probe` runs on one thread: its tasks (ring pump, printer, live view, API) hand every batch
/// of flows from one to the next, and on one thread that costs no wake-up of another (the
/// cross-thread wake-ups were an eighth of its CPU under connection churn). `run`'s calls,
/// consumer and audit writer get two workers.
fn runtime(single_thread: bool) -> Result<tokio::runtime::Runtime, std::io::Error> {
    if single_thread {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    app::limit_malloc_arenas();
    // NETSCOPE_* settings may also come from a `.env` file (NETSCOPE_ENV_FILE, else ./.env);
    // the environment wins over it.
    if let Err(e) = load_env_file() {
        return fail(&e, 2);
    }
    let cli = Cli::parse();
    observability::init();
    // Test builds only (feature `failpoints`): the fault points FAILPOINTS arms.
    let _faults = netscope_agent::faults::from_env();
    let rt = match runtime(matches!(cli.command, Command::Probe(_))) {
        Ok(rt) => rt,
        Err(e) => return fail(&e, 1),
    };
    match cli.command {
        Command::Probe(args) if args.check => print_check(args.json),
        Command::Probe(args) => validated(args.validate(), |(probe, api)| {
            rt.block_on(app::run_probe(probe, api))
                .map(|_| ExitCode::SUCCESS)
        }),
        Command::Run(args) => validated(args.validate(), |s| {
            let summary = rt.block_on(app::run_pipeline(s))?;
            println!("{}", serde_json::to_string(&summary).unwrap_or_default());
            Ok::<_, app::AppError>(ExitCode::SUCCESS)
        }),
        Command::Audit(AuditCommand::Verify(args)) => validated(args.validate(), |s| {
            rt.block_on(app::verify_audit(&s)).map(|r| print_verify(&r))
        }),
        Command::Send(args) => match rt.block_on(app::send_demo(&args)) {
            Ok(n) => {
                eprintln!("netscope-agent: sent {n} demo requests to {}", args.topic);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e, 1),
        },
    }
}

/// Runs a command on settings that validated (exit code 2 with every problem otherwise); a
/// failure while running exits 1.
fn validated<S, E: std::error::Error, F: std::error::Error>(
    settings: Result<S, E>,
    run: impl FnOnce(S) -> Result<ExitCode, F>,
) -> ExitCode {
    match settings {
        Err(e) => fail(&e, 2),
        Ok(s) => run(s).unwrap_or_else(|e| fail(&e, 1)),
    }
}

/// `probe --check`: the report on stdout; exit 0 when every required fact is served.
fn print_check(json: bool) -> ExitCode {
    let report = netscope_agent::probe::check::check();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", report.render());
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The report as JSON on stdout, a line per node on stderr; exit 0 when complete, 3 otherwise.
fn print_verify(report: &VerifyReport) -> ExitCode {
    println!(
        "{}",
        serde_json::to_string_pretty(report).unwrap_or_default()
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

#[derive(Debug, thiserror::Error)]
#[error("env file {path}: {source}")]
struct EnvFileError {
    path: String,
    source: dotenvy::Error,
}

/// Loads the `.env` file: absent is fine (unless named explicitly); unreadable or malformed is
/// an error. Variables already in the environment are kept.
fn load_env_file() -> Result<(), EnvFileError> {
    let named = std::env::var("NETSCOPE_ENV_FILE").ok();
    let path = named.clone().unwrap_or_else(|| ".env".to_owned());
    match dotenvy::from_path(&path) {
        Ok(()) => Ok(()),
        Err(dotenvy::Error::Io(e))
            if e.kind() == std::io::ErrorKind::NotFound && named.is_none() =>
        {
            Ok(())
        }
        Err(source) => Err(EnvFileError { path, source }),
    }
}

/// One clear line, no backtrace.
fn fail(error: &dyn std::error::Error, code: u8) -> ExitCode {
    eprintln!("netscope-agent: error: {error}");
    ExitCode::from(code)
}
