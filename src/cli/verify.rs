//! `sluice verify`: starts a verification in the running pipeline (the
//! management API), shows its progress, and prints what it found.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::Value;

use super::manage::{text, Api, ApiArgs};
use crate::error::{Error, ErrorKind};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The sink to verify; every sink that keeps documents by default.
    #[arg(long, value_name = "NAME")]
    pub sink: Option<String>,
    /// Only this table (one the pipeline streams).
    #[arg(long, value_name = "SCHEMA.TABLE")]
    pub table: Option<String>,
    /// Only rows matching this condition over the table's columns (documents
    /// without a row are then not looked for).
    #[arg(long = "where", value_name = "CONDITION")]
    pub condition: Option<String>,
    /// Send the differences through the pipeline again (a backfill of exactly
    /// those rows; documents without a row are deleted), then verify them again.
    #[arg(long)]
    pub repair: bool,
    /// Print each sink's verification as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Whether every verified index equals its table.
pub async fn run(args: VerifyArgs) -> Result<bool, Error> {
    let api = Api::new(&args.api)?;
    let sinks = match &args.sink {
        Some(sink) => vec![sink.clone()],
        None => {
            let sinks: Value = api.get("/api/sinks").await?;
            sinks
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["type"] != "null")
                .map(|s| text(&s["name"]))
                .collect()
        }
    };
    if sinks.is_empty() {
        return Err(Error::new(
            ErrorKind::Config,
            "the pipeline has no sink that keeps documents to verify",
        ));
    }
    let mut body = serde_json::json!({ "repair": args.repair });
    if let Some(table) = &args.table {
        body["table"] = Value::String(table.clone());
    }
    if let Some(condition) = &args.condition {
        body["where"] = Value::String(condition.clone());
    }
    let mut equal = true;
    for sink in &sinks {
        let started: Value = api
            .post(&format!("/api/sinks/{sink}/verify"), Some(body.clone()))
            .await?;
        let id = started["id"].as_u64().unwrap_or_default();
        let view = follow(&api, id).await?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&view).expect("JSON prints")
            );
        } else {
            print!("{}", summary(&view));
        }
        match view["state"].as_str() {
            Some("equal") => {}
            Some("different") => equal = false,
            _ => {
                return Err(Error::new(
                    ErrorKind::Sink,
                    format!("verify of sink {sink} failed: {}", text(&view["reason"])),
                ))
            }
        }
    }
    Ok(equal)
}

/// The exit code of a verify that failed: 2 for a mistake in the command
/// or configuration, 3 when it could not verify (1 means "different").
pub fn exit_code(e: &Error) -> u8 {
    match e.kind() {
        ErrorKind::Config => 2,
        _ => 3,
    }
}

/// Waits for verification `id` to end, showing what it does meanwhile on
/// stderr (a line every few seconds, or one line kept current on a
/// terminal); returns it as it ended.
async fn follow(api: &Api, id: u64) -> Result<Value, Error> {
    let terminal = std::io::stderr().is_terminal();
    let mut last = Instant::now();
    let mut shown = String::new();
    loop {
        let view: Value = api.get(&format!("/api/verifications/{id}")).await?;
        if view["state"] != "running" {
            if terminal && !shown.is_empty() {
                eprint!("\r\x1b[2K");
            }
            return Ok(view);
        }
        let line = progress(&view);
        if terminal && line != shown {
            eprint!("\r\x1b[2K{line}");
            shown = line;
        } else if !terminal && last.elapsed() >= Duration::from_secs(2) {
            eprintln!("{line}");
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One line on what a running verification does.
fn progress(view: &Value) -> String {
    let table = view["tables"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["done"] != true);
    let mut line = format!(
        "verify {} sink {}: {}",
        view["id"],
        text(&view["sink"]),
        text(&view["phase"])
    );
    if let Some(t) = table {
        let estimate = match t["rows_estimated"].as_u64() {
            Some(n) if n > 0 => format!(" of ~{n}"),
            _ => String::new(),
        };
        line.push_str(&format!(
            " ({}{estimate} rows, {} documents)",
            t["rows"], t["documents"]
        ));
    }
    line
}

/// What a verification found, one block per table.
pub fn summary(view: &Value) -> String {
    let mut out = format!(
        "sink {}: {}\n",
        text(&view["sink"]),
        match view["state"].as_str() {
            Some("equal") => "every index equals its table".to_owned(),
            Some("different") => "indexes differ from their tables".to_owned(),
            _ => format!("could not verify: {}", text(&view["reason"])),
        }
    );
    for t in view["tables"].as_array().into_iter().flatten() {
        let condition = t["condition"]
            .as_str()
            .map(|c| format!(" where {c}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {}{condition} -> index {}: {} rows, {} documents\n",
            text(&t["table"]),
            text(&t["index"]),
            t["rows"],
            t["documents"]
        ));
        for kind in ["missing", "extra", "stale"] {
            let d = &t[kind];
            if d.is_null() {
                out.push_str(&format!("    {kind}: not looked for (--where)\n"));
                continue;
            }
            out.push_str(&format!("    {kind}: {}", d["count"]));
            let examples: Vec<String> = d["examples"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            if !examples.is_empty() {
                out.push_str(&format!(" (e.g. {})", examples.join(", ")));
            }
            out.push('\n');
        }
        if t["changing"].as_u64().unwrap_or(0) > 0 {
            out.push_str(&format!(
                "    changing: {} (rows changed each time they were looked at: live changes, not counted)\n",
                t["changing"]
            ));
        }
        if t["beyond"].as_u64().unwrap_or(0) > 0 {
            out.push_str(&format!(
                "    {} of these are beyond the first 100000: not looked at again nor repaired; verify again\n",
                t["beyond"]
            ));
        }
        if let Some(r) = t.get("repaired").filter(|r| !r.is_null()) {
            out.push_str(&format!(
                "    repaired: {} sent through the pipeline (backfill {}), {} still different\n",
                r["sent"], r["backfill"], r["still_different"]
            ));
            if r["not_keys"].as_u64().unwrap_or(0) > 0 {
                out.push_str(&format!(
                    "    {} of them have ids that are not one value per key column: no row can have them and the pipeline cannot name them; delete them from the index\n",
                    r["not_keys"]
                ));
            }
        }
    }
    for table in view["skipped"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {}: not verified (its documents are made by functions, which run only in the pipeline)\n",
            text(table)
        ));
    }
    out
}
