//! The management API: JSON over HTTP, bound to this machine by default.
//! Health, the pipeline and its sinks with their positions, and backfills:
//! start, list, get, pause, resume, cancel. `openapi.yaml` at the top of the
//! repository describes it; `sluice status` and `sluice backfill` use it.

mod routes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::backfill::Manager;
use crate::error::{Error, ErrorKind, Result};
use crate::model::problem::ConfigProblem;
use crate::pipeline::PipelinePlan;

/// Default address of the management API: this machine only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9188";
/// File in the data directory holding the address the API is served on
/// (for `sluice status --config`, also when the port was chosen by the system).
pub const ADDRESS_FILE: &str = "api.addr";

/// `[api]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Serve the management API.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Address to serve it on, e.g. `127.0.0.1:9188` (the default: only this
    /// machine can reach it). Port 0 lets the system choose one. When the
    /// default address is taken, sluice runs without the API and says so;
    /// an address set here must be free.
    #[serde(default)]
    pub listen: Option<String>,
    /// Environment variable holding the API's bearer token. When set, every
    /// request needs `Authorization: Bearer <token>`; an address other
    /// machines can reach is refused without one.
    #[serde(default)]
    pub token_env: Option<String>,
}

fn default_enabled() -> bool {
    true
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            enabled: true,
            listen: None,
            token_env: None,
        }
    }
}

impl ApiConfig {
    pub fn validate(&self, problems: &mut Vec<ConfigProblem>) {
        if let Some(listen) = &self.listen {
            match listen.parse::<SocketAddr>() {
                Err(_) => problems.push(ConfigProblem {
                    field: "api.listen".into(),
                    message: format!("`{listen}` is not an address such as {DEFAULT_LISTEN}"),
                }),
                Ok(addr)
                    if self.enabled && !addr.ip().is_loopback() && self.token_env.is_none() =>
                {
                    problems.push(ConfigProblem {
                        field: "api.listen".into(),
                        message: format!(
                            "`{listen}` can be reached from other machines, and the API starts \
                             backfills and reads the pipeline's state: set api.token_env to an \
                             environment variable holding a token, or listen on 127.0.0.1"
                        ),
                    })
                }
                Ok(_) => {}
            }
        }
        if let Some(name) = &self.token_env {
            if name.trim().is_empty() {
                problems.push(ConfigProblem {
                    field: "api.token_env".into(),
                    message: "must name an environment variable".into(),
                });
            }
        }
    }

    /// The token every request must carry, read from `token_env`.
    pub fn token(&self) -> Result<Option<String>> {
        let Some(name) = &self.token_env else {
            return Ok(None);
        };
        match std::env::var(name) {
            Ok(token) if !token.trim().is_empty() => Ok(Some(token.trim().to_owned())),
            _ => Err(Error::new(
                ErrorKind::Config,
                format!("api.token_env: the environment variable {name} is not set"),
            )
            .hint(format!(
                "export {name}=<a long random token>, or remove api.token_env"
            ))),
        }
    }
}

/// What the handlers reach.
#[derive(Clone)]
pub struct AppState {
    pub plan: Arc<PipelinePlan>,
    pub backfills: Arc<Manager>,
    pub verifier: Arc<crate::verify::Verifier>,
}

/// Who may call: the bearer token, when one is configured.
#[derive(Clone)]
pub(crate) struct Guard {
    token: Option<Arc<str>>,
}

/// A running API server; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    address_file: PathBuf,
}

impl Server {
    /// Stops serving and waits until the address is free to bind again.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.address_file);
    }
}

/// Serves the API as configured; `None` when it is off, or when the default
/// address is taken (logged).
pub async fn serve(config: &ApiConfig, data_dir: &Path, state: AppState) -> Result<Option<Server>> {
    if !config.enabled {
        return Ok(None);
    }
    let addr: SocketAddr = config
        .listen
        .as_deref()
        .unwrap_or(DEFAULT_LISTEN)
        .parse()
        .map_err(|_| Error::new(ErrorKind::Config, "api.listen is not an address"))?;
    let guard = Guard {
        token: config.token()?.map(Arc::from),
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) if config.listen.is_none() => {
            tracing::warn!(%addr, error = %e, "the management API is not served: its default address is taken (set api.listen to another address)");
            return Ok(None);
        }
        Err(e) => {
            return Err(Error::new(
                ErrorKind::Config,
                format!("cannot serve the management API on {addr}: {e}"),
            )
            .hint("set api.listen to a free address, or api.enabled = false"))
        }
    };
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the API's address", e))?;
    let address_file = data_dir.join(ADDRESS_FILE);
    std::fs::write(&address_file, addr.to_string())
        .map_err(|e| Error::io(format!("cannot write {}", address_file.display()), e))?;
    let app = routes::router(state, guard);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the management API stopped");
        }
    });
    tracing::info!(%addr, "serving the management API");
    Ok(Some(Server {
        addr,
        task,
        address_file,
    }))
}
