//! `sluice status` and `sluice backfill …`: the management API from the
//! command line, with a live progress bar for backfills.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{ADDRESS_FILE, DEFAULT_LISTEN};
use crate::error::{Error, ErrorKind};

/// Where the management API is.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The management API, e.g. `http://127.0.0.1:9188`. Default: the address
    /// of the pipeline run with `--config`, else 127.0.0.1:9188.
    #[arg(long, value_name = "URL", env = "SLUICE_API", global = true)]
    pub api: Option<String>,
    /// The configuration the pipeline runs with, to find its API.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BackfillCommand {
    /// Backfill a table into a sink (all rows, or those matching --where) and
    /// show its progress until it ends.
    Start {
        /// The sink to write the rows to.
        #[arg(long, value_name = "NAME")]
        sink: String,
        /// The table to read (one the pipeline streams).
        #[arg(long, value_name = "SCHEMA.TABLE")]
        table: String,
        /// Only rows matching this condition over the table's columns, e.g. "updated_at > now() - interval '1 day'".
        #[arg(long = "where", value_name = "CONDITION")]
        condition: Option<String>,
        /// Return once started instead of showing the progress.
        #[arg(long)]
        detach: bool,
    },
    /// List the backfills.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a backfill's progress until it ends.
    Watch { id: u64 },
    /// Pause a running backfill (it resumes from where it was).
    Pause { id: u64 },
    /// Resume a paused backfill.
    Resume { id: u64 },
    /// Cancel a backfill for good.
    Cancel { id: u64 },
}

/// A client of the management API.
pub(super) struct Api {
    base: String,
    http: reqwest::Client,
    /// The bearer token: from the environment variable the configuration's
    /// `api.token_env` names, else from `SLUICE_API_TOKEN`.
    token: Option<String>,
}

/// The environment variable holding the API token when no configuration
/// names one.
const TOKEN_ENV: &str = "SLUICE_API_TOKEN";

impl Api {
    pub(super) fn new(args: &ApiArgs) -> Result<Api, Error> {
        let (address, token_env) = match &args.config {
            Some(config) => {
                let (address, token_env) = address_of(config)?;
                (Some(address), token_env)
            }
            None => (None, None),
        };
        let base = match &args.api {
            Some(url) => url.clone(),
            None => address.unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
        };
        let token_env = token_env.unwrap_or_else(|| TOKEN_ENV.to_owned());
        let token = std::env::var(&token_env)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        let base = if base.contains("://") {
            base
        } else {
            format!("http://{base}")
        };
        Ok(Api {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            token,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, Error> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if method != reqwest::Method::GET {
            // The API takes changes only with a JSON body.
            request = request.json(&body.unwrap_or_else(|| serde_json::json!({})));
        }
        let response = request.send().await.map_err(|e| {
            Error::new(
                ErrorKind::Connection,
                format!("cannot reach the management API at {}: {e}", self.base),
            )
            .hint("is sluice running? Point at it with --api URL or --config FILE")
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            let parsed: Value = serde_json::from_str(&text).unwrap_or_default();
            let message = parsed["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{status}: {text}"));
            let kind = match parsed["error"]["code"].as_str() {
                Some("not_found" | "invalid" | "conflict" | "unauthorized") => ErrorKind::Config,
                _ => ErrorKind::Protocol,
            };
            return Err(Error::new(kind, message));
        }
        serde_json::from_str(&text)
            .map_err(|e| Error::protocol(format!("unexpected answer from {url}: {e}")))
    }

    pub(super) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub(super) async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, Error> {
        self.call(reqwest::Method::POST, path, body).await
    }
}

/// The API address of the pipeline configured in `path` (the one it serves
/// on now, written to its data directory, else the configured one) and the
/// environment variable its token is in.
fn address_of(path: &Path) -> Result<(String, Option<String>), Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    // Only the addresses matter: no validation (secrets need not be set).
    let config: crate::config::Config = toml::from_str(&text).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("{} is not a sluice configuration: {e}", path.display()),
        )
    })?;
    let serving = config.pipeline.data_dir.join(ADDRESS_FILE);
    let address = match std::fs::read_to_string(serving) {
        Ok(addr) => addr.trim().to_owned(),
        Err(_) => config
            .api
            .listen
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned()),
    };
    Ok((address, config.api.token_env))
}

pub async fn status(args: ApiArgs, json: bool) -> Result<(), Error> {
    let api = Api::new(&args)?;
    let pipelines: Value = api.get("/api/pipelines").await?;
    let backfills: Value = api.get("/api/backfills").await?;
    if json {
        let all = serde_json::json!({"pipelines": pipelines, "backfills": backfills});
        println!(
            "{}",
            serde_json::to_string_pretty(&all).expect("JSON prints")
        );
        return Ok(());
    }
    for p in pipelines.as_array().into_iter().flatten() {
        let lag_bytes = p["lag_bytes"]
            .as_u64()
            .map_or_else(|| "unknown".to_owned(), |b| format!("{b} bytes"));
        println!(
            "pipeline {}: {}, confirmed {}, lag {} s ({lag_bytes} of WAL), {} restart(s), tables: {}",
            text(&p["name"]),
            text(&p["state"]),
            text(&p["confirmed_lsn"]),
            p["lag_seconds"],
            p["restarts"],
            p["tables"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let dropped: Vec<&str> = p["dropped_tables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !dropped.is_empty() {
            println!(
                "  dropped tables (their documents stay until they are created again): {}",
                dropped.join(", ")
            );
        }
        for s in p["sinks"].as_array().into_iter().flatten() {
            println!(
                "  sink {} ({}): committed {}, lag {} s, {} parked write(s)",
                text(&s["name"]),
                text(&s["type"]),
                text(&s["committed_lsn"]),
                s["lag_seconds"],
                s["parked"]
            );
        }
        let calls = p["parked_function_calls"].as_u64().unwrap_or(0);
        if calls > 0 {
            println!(
                "  functions: {calls} parked call(s) (sluice failed list --sink {})",
                crate::functions::FAILED_STORE
            );
        }
    }
    let active: Vec<&Value> = backfills
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| matches!(b["state"].as_str(), Some("running" | "paused")))
        .collect();
    if active.is_empty() {
        println!("no backfill running");
    }
    for b in active {
        println!("  {}", describe(b));
    }
    Ok(())
}

pub async fn backfill(args: ApiArgs, command: BackfillCommand) -> Result<(), Error> {
    let api = Api::new(&args)?;
    match command {
        BackfillCommand::Start {
            sink,
            table,
            condition,
            detach,
        } => {
            let mut body = serde_json::json!({ "table": table });
            if let Some(condition) = condition {
                body["where"] = Value::String(condition);
            }
            let path = format!("/api/sinks/{sink}/backfills");
            let started: Value = api.post(&path, Some(body)).await?;
            let id = started["id"].as_u64().unwrap_or_default();
            println!("backfill {id} started: {table} into sink {sink}");
            if detach {
                return Ok(());
            }
            follow(&api, id).await
        }
        BackfillCommand::List { json } => {
            let list: Value = api.get("/api/backfills").await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).expect("JSON prints")
                );
            } else if list.as_array().is_none_or(|l| l.is_empty()) {
                println!("no backfills");
            } else {
                for b in list.as_array().into_iter().flatten() {
                    println!("{}", describe(b));
                }
            }
            Ok(())
        }
        BackfillCommand::Watch { id } => follow(&api, id).await,
        BackfillCommand::Pause { id } => change(&api, id, "pause").await,
        BackfillCommand::Resume { id } => change(&api, id, "resume").await,
        BackfillCommand::Cancel { id } => change(&api, id, "cancel").await,
    }
}

async fn change(api: &Api, id: u64, action: &str) -> Result<(), Error> {
    let b: Value = api
        .post(&format!("/api/backfills/{id}/{action}"), None)
        .await?;
    println!("{}", describe(&b));
    Ok(())
}

/// Shows a backfill's progress until it is no longer running: a live bar
/// on a terminal, a line every few seconds otherwise.
async fn follow(api: &Api, id: u64) -> Result<(), Error> {
    let path = format!("/api/backfills/{id}");
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} rows ({percent}%) {per_sec} ETA {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("backfill {id}"));
        bar
    });
    let mut last_line = Instant::now() - Duration::from_secs(60);
    loop {
        let b: Value = api.get(&path).await?;
        let state = b["state"].as_str().unwrap_or_default().to_owned();
        let done = b["rows_done"].as_u64().unwrap_or_default();
        let total = b["rows_estimated"].as_u64().unwrap_or(done).max(done);
        match &bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            None if last_line.elapsed() >= Duration::from_secs(2) || state != "running" => {
                last_line = Instant::now();
                eprintln!("{}", describe(&b));
            }
            None => {}
        }
        if state != "running" {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            println!("{}", describe(&b));
            return match state.as_str() {
                "failed" => Err(Error::new(
                    ErrorKind::Setup,
                    format!("backfill {id} failed: {}", text(&b["reason"])),
                )),
                _ => Ok(()),
            };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One line about a backfill.
fn describe(b: &Value) -> String {
    let tables: Vec<String> = b["tables"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| match t["condition"].as_str() {
            Some(condition) => format!("{} where {condition}", text(&t["table"])),
            None => text(&t["table"]),
        })
        .collect();
    let mut line = format!(
        "backfill {} [{}] sink {}: {}: {} row(s)",
        b["id"],
        text(&b["state"]),
        text(&b["sink"]),
        tables.join(", "),
        b["rows_done"]
    );
    if let Some(total) = b["rows_estimated"].as_u64() {
        line.push_str(&format!(" of ~{total}"));
    }
    if let Some(percent) = b["percent"].as_f64() {
        line.push_str(&format!(" ({percent:.1}%)"));
    }
    if b["state"] == "running" {
        if let Some(rate) = b["rows_per_second"].as_u64() {
            line.push_str(&format!(", {rate} rows/s"));
        }
        if let Some(eta) = b["eta_seconds"].as_u64() {
            line.push_str(&format!(", ETA {eta}s"));
        }
    }
    if b["settling"] == true {
        line.push_str(", writing the chunks read before");
    }
    if let Some(reason) = b["reason"].as_str() {
        line.push_str(&format!(": {reason}"));
    }
    line
}

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Asks the running pipeline configured in `config` to retry parked writes
/// of `sink` (all, or those with `keys`); returns how many it queued.
pub async fn retry_failed(
    config: &Path,
    sink: &str,
    keys: &[String],
    all: bool,
) -> Result<u64, Error> {
    let api = Api::new(&ApiArgs {
        api: None,
        config: Some(config.to_owned()),
    })?;
    let body = serde_json::json!({"keys": keys, "all": all});
    let answer: Value = api
        .post(&format!("/api/sinks/{sink}/failed/retry"), Some(body))
        .await?;
    Ok(answer["queued"].as_u64().unwrap_or(0))
}
