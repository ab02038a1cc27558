//! `sluice fn test`: runs one function of a configuration on a sample
//! message and prints what it returned, so a function can be tried before it
//! is deployed.

use std::path::PathBuf;

use clap::Subcommand;

use crate::config::Config;
use crate::error::{Error, ErrorKind};
use crate::functions::{self, FunctionKind};
use crate::pipeline::change::RouteAction;

#[derive(Debug, Subcommand)]
pub enum FunctionCommand {
    /// Run one function on a message written as JSON and print its result.
    ///
    /// The message is `{"action": "insert" | "update" | "delete" | "read",
    /// "record": {...}, "changes": {...}, "metadata": {...}}` (`changes` and
    /// `metadata` may be left out). A transform prints the document, a filter
    /// `{"keep": true | false}`, a route `{"index": ..., "action": ...}`.
    Test {
        /// The configuration that defines the function.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The function's name (`[functions.NAME]`).
        #[arg(long, value_name = "NAME")]
        function: String,
        /// A JSON file with the message.
        #[arg(long, value_name = "FILE.json")]
        input: PathBuf,
    },
}

pub fn run(command: FunctionCommand) -> Result<(), Error> {
    let FunctionCommand::Test {
        config,
        function,
        input,
    } = command;
    let config = Config::read(&config)?;
    let Some(kind) = config.functions.get(&function).map(|f| f.kind) else {
        let known: Vec<&str> = config.functions.keys().map(String::as_str).collect();
        return Err(
            Error::new(ErrorKind::Config, format!("no function `{function}`")).hint(
                if known.is_empty() {
                    "the configuration defines no [functions.NAME]".to_owned()
                } else {
                    format!("functions: {}", known.join(", "))
                },
            ),
        );
    };
    // Only this function: the others may not compile yet.
    let only = config
        .functions
        .iter()
        .filter(|(name, _)| **name == function)
        .map(|(name, f)| (name.clone(), f.clone()))
        .collect();
    let runtime = functions::compile(&only, &config.base_dir, config.function_memory_bytes())
        .map_err(|errors| {
            let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            Error::new(ErrorKind::Config, text.join("\n"))
        })?;
    let text = std::fs::read_to_string(&input)
        .map_err(|e| Error::io(format!("cannot read {}", input.display()), e))?;
    let message: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("{} is not JSON: {e}", input.display()),
        )
    })?;
    let args = functions::json_args(runtime.lua(), &message).map_err(|e| {
        Error::new(ErrorKind::Config, format!("{}: {e}", input.display()))
            .hint(r#"a message is {"action": "insert", "record": {...}, "changes": {...}, "metadata": {...}}"#)
    })?;
    let failed = |e: functions::FunctionError| Error::new(ErrorKind::Sink, e.to_string());
    let output = match kind {
        FunctionKind::Transform => {
            let doc = runtime.transform(&function, args).map_err(failed)?;
            serde_json::from_slice(&doc).expect("a transform writes JSON")
        }
        FunctionKind::Filter => {
            serde_json::json!({ "keep": runtime.filter(&function, args).map_err(failed)? })
        }
        FunctionKind::Route => {
            let route = runtime.route(&function, args).map_err(failed)?;
            let action = match route.action {
                Some(RouteAction::Upsert) => "index",
                Some(RouteAction::Delete) => "delete",
                None => "as the change says",
            };
            serde_json::json!({ "index": route.index, "action": action })
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&output).expect("JSON values print")
    );
    Ok(())
}
