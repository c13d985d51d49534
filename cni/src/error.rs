//! CNI errors: the spec's codes, printed as the spec's error JSON.

use serde::Serialize;

/// A CNI error code (SPEC.md "Error" section).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    /// Incompatible CNI version.
    IncompatibleVersion = 1,
    /// Unsupported field in network configuration.
    UnsupportedField = 2,
    /// Container unknown or does not exist.
    UnknownContainer = 3,
    /// Invalid necessary environment variables.
    InvalidEnvironment = 4,
    /// I/O failure.
    Io = 5,
    /// Failed to decode content.
    Decode = 6,
    /// Invalid network config.
    InvalidConfig = 7,
    /// Try again later.
    TryAgainLater = 11,
    /// STATUS: the plugin cannot serve ADD now.
    NotAvailable = 50,
    /// CHECK: the attachment does not match what ADD made (plugin-specific range).
    CheckFailed = 100,
    /// ADD: CNI_IFNAME already exists in the namespace (plugin-specific range).
    InterfaceExists = 101,
    /// ADD: a hostPort another pod on this node holds (plugin-specific range).
    PortConflict = 102,
}

/// An error the plugin reports to the runtime.
#[derive(Debug, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    /// The spec's code.
    pub code: Code,
    /// A short message.
    pub msg: String,
    /// What exactly went wrong.
    pub details: String,
}

impl CniError {
    /// A new error.
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error JSON for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Json<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: &'a str,
        }
        serde_json::to_string(&Json {
            cni_version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"error\"}}", self.code as u32))
    }
}

impl From<podnet_netlink::Error> for CniError {
    fn from(e: podnet_netlink::Error) -> Self {
        CniError::new(Code::Io, "netlink request failed", e.to_string())
    }
}
