//! The command line: `sluice run`, `check`, `search`, `demo`, `failed`, and
//! the management commands `status` and `backfill` ([`manage`]).

pub mod function;
pub mod manage;
pub mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::error::{Error, ErrorKind};

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Keeps search indexes in sync with Postgres in real time"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing syntax: `info`, `sluice=debug`); overrides RUST_LOG.
    #[arg(long, global = true)]
    pub log: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream changes from Postgres into the configured sinks until stopped (SIGINT/SIGTERM).
    Run(SourceArgs),
    /// Validate the configuration and the source database, reporting every problem.
    Check(SourceArgs),
    /// Search an embedded index; prints matching documents as JSON lines.
    Search(SearchArgs),
    /// Start a throwaway Postgres with a demo table, stream it into an embedded index, and search it.
    Demo(DemoArgs),
    /// List, retry or discard writes that a sink parked after they kept failing.
    #[command(subcommand)]
    Failed(FailedCommand),
    /// Show the running pipeline, its sinks and its backfills (through the management API).
    Status {
        #[command(flatten)]
        api: manage::ApiArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Try the functions of a configuration on sample messages.
    #[command(subcommand, name = "fn")]
    Function(function::FunctionCommand),
    /// Start, list, watch, pause, resume or cancel backfills of a running pipeline.
    Backfill {
        #[command(flatten)]
        api: manage::ApiArgs,
        #[command(subcommand)]
        command: manage::BackfillCommand,
    },
    /// Compare each table with its index in each sink (through the management API): rows without
    /// a document, documents without a row, and documents that differ. Exits 0 when equal, 1 when
    /// not, 2 on a mistake in the command, 3 when it could not verify.
    Verify(verify::VerifyArgs),
}

#[derive(Debug, Subcommand)]
pub enum FailedCommand {
    /// Print parked writes as JSON lines (oldest first).
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this sink's writes.
        #[arg(long, value_name = "NAME")]
        sink: Option<String>,
    },
    /// Send parked writes again, each with every later parked write to the same document, in order.
    Retry {
        /// The configuration the pipeline runs with (for the sink's settings).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "NAME")]
        sink: String,
        /// The `key` of a message (see `list`); repeatable.
        #[arg(long = "key", value_name = "KEY", required_unless_present = "all")]
        keys: Vec<String>,
        /// Every parked write of the sink.
        #[arg(long, conflicts_with = "keys")]
        all: bool,
    },
    /// Delete parked writes for good.
    Discard {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, value_name = "NAME")]
        sink: String,
        /// The `key` of a message (see `list`); repeatable.
        #[arg(long = "key", value_name = "KEY", required_unless_present = "all")]
        keys: Vec<String>,
        /// Every parked write of the sink.
        #[arg(long, conflicts_with = "keys")]
        all: bool,
    },
}

/// Where the failed-message stores are: the pipeline's configuration, or
/// its data directory.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The configuration the pipeline runs with (its `pipeline.data_dir`).
    #[arg(long, value_name = "FILE", conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// The data directory of the pipeline (default: sluice-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl StoreArgs {
    fn data_dir(&self) -> Result<PathBuf, Error> {
        Ok(match (&self.config, &self.data_dir) {
            (Some(config), _) => Config::load(config)?.pipeline.data_dir,
            (None, Some(dir)) => dir.clone(),
            (None, None) => PathBuf::from(crate::config::DEFAULT_DATA_DIR),
        })
    }
}

/// Either a config file or the one-line form.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// A TOML configuration file (see README.md).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["database_url", "tables"])]
    pub config: Option<PathBuf>,
    /// The source database (one-line form), e.g. postgres://user@localhost/db.
    #[arg(
        long,
        value_name = "URL",
        env = "SLUICE_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// A table to stream (one-line form), as SCHEMA.TABLE; repeat for more tables.
    #[arg(long = "table", value_name = "SCHEMA.TABLE")]
    pub tables: Vec<String>,
    /// Directory for the embedded indexes and state (one-line form).
    #[arg(long, value_name = "DIR", default_value = crate::config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Directory the indexes were written to.
    #[arg(long, value_name = "DIR", default_value = crate::config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Index name (by default the table name).
    #[arg(long, value_name = "NAME")]
    pub index: String,
    /// Maximum number of documents printed.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// Print only the number of matching documents.
    #[arg(long)]
    pub count: bool,
    /// Query: words, `field:value`, ranges `price:[10 TO 20]`, or `*` for all.
    pub query: String,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the demo's index (recreated).
    #[arg(long, value_name = "DIR", default_value = "sluice-demo")]
    pub data_dir: PathBuf,
    /// Rows inserted into the demo table.
    #[arg(long, default_value_t = 10_000)]
    pub rows: u32,
}

impl SourceArgs {
    /// The configuration these arguments describe.
    pub fn config(&self) -> Result<Config, Error> {
        if let Some(path) = &self.config {
            return Ok(Config::load(path)?);
        }
        let Some(url) = &self.database_url else {
            return Err(Error::new(ErrorKind::Config, "no source given").hint(
                "use --config FILE, or --database-url URL --table SCHEMA.TABLE --data-dir DIR",
            ));
        };
        if self.tables.is_empty() {
            return Err(Error::new(ErrorKind::Config, "no table given")
                .hint("add --table SCHEMA.TABLE (repeatable)"));
        }
        let config = Config::from_flags(url.clone(), &self.tables, self.data_dir.clone());
        config.validate()?;
        Ok(config)
    }
}

/// Process exit code for an error.
pub fn exit_code(e: &Error) -> ExitCode {
    ExitCode::from(e.kind().exit_code())
}

/// Sets up logging to stderr.
pub fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let filter = cli
        .log
        .clone()
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| {
            // The demo prints its own story; logs would drown it.
            let level = if matches!(cli.command, Command::Demo(_)) {
                "warn"
            } else {
                "info"
            };
            EnvFilter::new(format!("{level},tantivy=warn,ractor=warn"))
        });
    // Colours only for a person at a terminal: a file, a pipe or a log
    // collector gets plain text.
    let colour = {
        use std::io::IsTerminal;
        std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when it is
/// called, not when first awaited: a stop request that comes while sluice
/// starts (the metrics endpoint already answers) is a clean stop, not a
/// death by the signal.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stop requested");
    }
}

/// Starts the Prometheus endpoint when configured.
pub fn start_metrics(config: &Config) -> Result<(), Error> {
    if let Some(addr) = &config.pipeline.metrics_listen {
        let addr: std::net::SocketAddr = addr.parse().map_err(|_| {
            Error::new(
                ErrorKind::Config,
                format!("pipeline.metrics_listen `{addr}` is not an address"),
            )
        })?;
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                &crate::pipeline::stats::SECONDS_BUCKETS,
            )
            .map_err(|e| Error::new(ErrorKind::Config, format!("metrics buckets: {e}")))?
            .install()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Config,
                    format!("cannot serve metrics on {addr}: {e}"),
                )
            })?;
        crate::telemetry::register(&crate::telemetry::Known {
            sinks: config.sinks.iter().map(|s| s.name.clone()).collect(),
            tables: config.table_names().iter().map(|t| t.to_string()).collect(),
            functions: config.functions.keys().cloned().collect(),
        });
        // The process's CPU, memory, threads and files, read every second.
        let process = metrics_process::Collector::default();
        process.describe();
        process.collect();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                every.tick().await;
                process.collect();
            }
        });
        tracing::info!(%addr, "serving Prometheus metrics");
    }
    Ok(())
}

pub async fn run(args: SourceArgs) -> Result<(), Error> {
    let config = args.config()?;
    let stop = shutdown_signal();
    start_metrics(&config)?;
    let plan = crate::service::run(&config, stop).await?;
    let s = &plan.stats;
    tracing::info!(
        read = s.reader.snapshot().changes_out,
        decoded = s.decoder.snapshot().changes_out,
        written = s.writer.snapshot().changes_out,
        "stopped"
    );
    Ok(())
}

pub async fn check(args: SourceArgs) -> Result<(), Error> {
    let config = args.config()?;
    // A database that does not answer is not ready (exit 3).
    let mut problems = crate::config::check::check(&config)
        .await
        .map_err(|e| match e.kind() {
            ErrorKind::Connection => e.as_kind(ErrorKind::Setup),
            _ => e,
        })?;
    crate::config::check::check_sinks(&config, &mut problems).await;
    if problems.is_empty() {
        println!(
            "ok: the configuration is valid, the source database is ready and every sink answers"
        );
        return Ok(());
    }
    println!("{} problem(s) found:", problems.len());
    for p in problems.iter() {
        println!("  - {p}");
    }
    Err(Error::new(
        problems.kind(),
        format!("{} problem(s) found", problems.len()),
    ))
}

pub fn search(args: SearchArgs) -> Result<(), Error> {
    let result = crate::sink::embedded::search::search(
        &args.data_dir,
        &args.index,
        &args.query,
        args.limit,
    )?;
    if args.count {
        println!("{}", result.total);
    } else {
        use std::io::Write;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for doc in &result.documents {
            let _ = writeln!(out, "{doc}");
        }
    }
    Ok(())
}

pub async fn failed(command: FailedCommand) -> Result<(), Error> {
    use crate::sink::failed;
    match command {
        FailedCommand::List { store, sink } => {
            use std::io::Write;
            let data_dir = store.data_dir()?;
            let sinks = match sink {
                Some(sink) => vec![sink],
                None => failed::sinks(&data_dir),
            };
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            for sink in sinks {
                for message in failed::list(&data_dir, &sink)? {
                    let line = serde_json::to_string(&message).expect("messages serialize");
                    match writeln!(out, "{line}") {
                        Ok(()) => {}
                        // The reader is gone (`| head`): nothing more to say.
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                        Err(e) => return Err(Error::io("writing the list", e)),
                    }
                }
            }
            Ok(())
        }
        FailedCommand::Discard {
            store,
            sink,
            keys,
            all,
        } => {
            let data_dir = store.data_dir()?;
            let taken = failed::take(&data_dir, &sink, |m| all || keys.contains(&m.key))?;
            println!("discarded {} parked write(s) of sink {sink}", taken.len());
            Ok(())
        }
        FailedCommand::Retry {
            config: config_path,
            sink,
            keys,
            all,
        } => {
            let config = Config::load(&config_path)?;
            let data_dir = config.pipeline.data_dir.clone();
            if sink == crate::functions::FAILED_STORE {
                if crate::data_dir::DataDirLock::acquire(&data_dir).is_ok() {
                    return Err(Error::new(
                        ErrorKind::Config,
                        "parked function calls are retried by the running pipeline: start `sluice run`, then retry them",
                    ));
                }
                let queued = manage::retry_failed(&config_path, &sink, &keys, all).await?;
                println!(
                    "backfilling the rows of {queued} parked function call(s) with the current functions; \
                     `sluice failed list --sink {sink}` shows those that fail again"
                );
                return Ok(());
            }
            let Some(sink_config) = config.sinks.iter().find(|s| s.name == sink) else {
                let names: Vec<_> = config.sinks.iter().map(|s| s.name.as_str()).collect();
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("no sink `{sink}` in the configuration"),
                )
                .hint(format!("sinks: {}", names.join(", "))));
            };
            let select = |m: &failed::FailedMessage| all || keys.contains(&m.key);
            let _lock = match crate::data_dir::DataDirLock::acquire(&data_dir) {
                Ok(lock) => lock,
                Err(_) => {
                    // sluice runs: its writer sends them, in order with the
                    // sink's other writes.
                    let queued = manage::retry_failed(&config_path, &sink, &keys, all).await?;
                    println!(
                        "queued {queued} parked write(s) of sink {sink} for a retry by the running pipeline; \
                         `sluice failed list` shows those that fail again"
                    );
                    return Ok(());
                }
            };
            // Nothing else writes to the sink: send them from here, the same way.
            let queued = failed::queue_retry(&data_dir, &sink, select)?;
            let mut target = crate::sink::build(sink_config, &data_dir)?;
            let sent = failed::replay(&mut *target, crate::lsn::Lsn::ZERO).await?;
            let again = failed::list(&data_dir, &sink)?.len();
            println!(
                "retried {sent} of {queued} parked write(s) of sink {sink}; {again} parked now"
            );
            Ok(())
        }
    }
}
