//! What the benchmark programs share: their results as JSON lines (`--json FILE`,
//! appended, one record per measured size) for `bench-report`, which turns them into
//! `docs/benchmarks.md`'s tables and the curves under `docs/`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One benchmark program's results at one size.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    /// The program (`bench-operator`, `bench-daemon`, `bench-cni`).
    pub bench: String,
    /// What was varied: nodes, peers, or pods already on the node.
    pub size: usize,
    /// A variant at that size (the CNI harness), empty when there is one.
    #[serde(default)]
    pub variant: String,
    /// The command line that produced it.
    pub command: String,
    /// When it was measured (UTC, RFC 3339).
    #[serde(default)]
    pub at: String,
    /// Each measured quantity, one value per run (or per invocation), unit in its name.
    pub series: BTreeMap<String, Vec<f64>>,
}

/// The environment variable carrying the command line to record, for a benchmark
/// that re-executes itself.
pub const COMMAND_ENV: &str = "PODNET_BENCH_COMMAND";

/// This program's command line as `target/release/<bench> args…`.
pub fn command_line(bench: &str) -> String {
    std::env::args()
        .enumerate()
        .map(|(i, a)| {
            if i == 0 {
                format!("target/release/{bench}")
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Record {
    /// A record of `bench` at `size`, with the running program's command line (or
    /// [`COMMAND_ENV`], which a program that re-executes itself sets for the child).
    pub fn new(bench: &str, size: usize, variant: &str) -> Self {
        let command = std::env::var(COMMAND_ENV)
            .ok()
            .unwrap_or_else(|| command_line(bench));
        Self {
            bench: bench.into(),
            size,
            variant: variant.into(),
            command,
            at: k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%d %H:%M UTC")
                .to_string(),
            series: BTreeMap::new(),
        }
    }

    /// Adds one value to series `name`.
    pub fn push(&mut self, name: &str, value: f64) {
        self.series.entry(name.into()).or_default().push(value);
    }

    /// Sets series `name`.
    pub fn set(&mut self, name: &str, values: Vec<f64>) {
        self.series.insert(name.into(), values);
    }

    /// Appends the record to `path` as one JSON line (nothing when `None`).
    pub fn append_to(&self, path: Option<&Path>) -> std::io::Result<()> {
        let Some(path) = path else {
            return Ok(());
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let line = serde_json::to_string(self).map_err(std::io::Error::other)?;
        writeln!(f, "{line}")
    }
}

/// Median, minimum and maximum of `v` (NaN for an empty series).
pub fn spread(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (median, s[0], s[n - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_series() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert!(spread(&[]).0.is_nan());
    }
}
