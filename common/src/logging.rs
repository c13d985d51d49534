//! tracing setup: text or JSON on stderr, filtered by `RUST_LOG` or the given level.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("log format must be text or json, not {other:?}")),
        }
    }
}

/// Installs the global subscriber. `level` is used when `RUST_LOG` is unset.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The logging flags every podnet binary takes.
#[derive(clap::Args, Clone, Debug)]
pub struct LogArgs {
    /// Log line format: text or json.
    #[arg(
        long = "log-format",
        env = "PODNET_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub format: LogFormat,
    /// Log level or tracing filter (`RUST_LOG` wins when set), such as `info` or
    /// `info,kube_runtime=debug`.
    #[arg(
        long = "log-level",
        env = "PODNET_LOG_LEVEL",
        default_value = "info",
        global = true
    )]
    pub level: String,
}
