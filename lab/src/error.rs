//! The lab's error type.

use std::path::PathBuf;

/// Everything that can go wrong bringing up or using the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A program the lab needs is not installed where it looks.
    #[error("{name} not found at {path}: {hint}")]
    MissingTool {
        /// The program.
        name: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// What installs it.
        hint: &'static str,
    },
    /// The lab needs root (network namespaces, etcd data under /dev/shm, ...).
    #[error("the podnet lab needs root: {0}")]
    NotRoot(&'static str),
    /// A file-system operation failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A helper command exited with an error.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// The tail of its standard error.
        stderr: String,
    },
    /// A component did not become ready.
    #[error("{component} did not become ready: {reason}\n--- last lines of {log} ---\n{tail}")]
    NotReady {
        /// etcd or kube-apiserver.
        component: &'static str,
        /// What was seen.
        reason: String,
        /// Its log file.
        log: PathBuf,
        /// The tail of that log.
        tail: String,
    },
    /// A process the lab started could not be signalled.
    #[error("signalling {process}: {reason}")]
    Signal {
        /// Which process, with its PID.
        process: String,
        /// Why not.
        reason: String,
    },
    /// Talking to the API server failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Reading the kubeconfig the lab wrote failed.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// Kubernetes' e2e suite ended without writing its JUnit report.
    #[error("the e2e suite left no JUnit report at {junit} (its output: {log}): {source}")]
    NoReport {
        /// Where the report should be.
        junit: PathBuf,
        /// The suite's output.
        log: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// The lab's state file is unreadable.
    #[error("lab state {path}: {source}")]
    State {
        /// The state file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl LabError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}
