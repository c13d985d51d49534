//! Command-line flags with environment-variable fallbacks, for the long-running binaries
//! (a DaemonSet or Deployment sets either).

use std::collections::HashMap;
use std::time::Duration;

/// `--flag value` / `--flag=value` pairs, plus positional words.
#[derive(Debug, Default)]
pub struct Flags {
    values: HashMap<String, String>,
    /// Words that are not flags (subcommands).
    pub positional: Vec<String>,
}

/// A flag that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FlagError(pub String);

impl Flags {
    /// Parses `args` (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, FlagError> {
        let mut flags = Self::default();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            if let Some(f) = a.strip_prefix("--") {
                let (k, v) = match f.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (
                        f.to_string(),
                        it.next()
                            .ok_or_else(|| FlagError(format!("--{f} needs a value")))?,
                    ),
                };
                flags.values.insert(k, v);
            } else {
                flags.positional.push(a);
            }
        }
        Ok(flags)
    }

    /// The value of `--flag`, else of the environment variable `env`.
    pub fn get(&self, flag: &str, env: &str) -> Option<String> {
        self.values
            .get(flag)
            .cloned()
            .or_else(|| std::env::var(env).ok())
    }

    /// Like [`Self::get`] with a default.
    pub fn get_or(&self, flag: &str, env: &str, default: &str) -> String {
        self.get(flag, env).unwrap_or_else(|| default.to_string())
    }

    /// A value parsed as `T`.
    pub fn parse_or<T: std::str::FromStr>(
        &self,
        flag: &str,
        env: &str,
        default: T,
    ) -> Result<T, FlagError> {
        match self.get(flag, env) {
            Some(v) => v
                .parse()
                .map_err(|_| FlagError(format!("--{flag}: cannot parse {v:?}"))),
            None => Ok(default),
        }
    }

    /// A duration given in (fractional) seconds.
    pub fn seconds(&self, flag: &str, env: &str, default: Duration) -> Result<Duration, FlagError> {
        match self.get(flag, env) {
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| FlagError(format!("--{flag}: {v:?} is not a number of seconds"))),
            None => Ok(default),
        }
    }
}
