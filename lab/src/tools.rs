//! Where the lab finds the real components it runs.

use std::path::{Path, PathBuf};

use crate::LabError;

/// Default cache of the binaries `scripts/build-tools.sh` builds.
pub const DEFAULT_TOOLS_CACHE: &str = "/var/cache/podnet-tools";
const BUILD_HINT: &str = "run scripts/build-tools.sh (the README test command does)";

/// Paths of the external programs the lab and the tests drive.
#[derive(Debug, Clone)]
pub struct Tools {
    /// etcd built by scripts/build-tools.sh (3.6: Debian's 3.4 lacks the progress
    /// requests that let kube-apiserver serve consistent lists from its watch cache).
    pub etcd: PathBuf,
    /// kube-apiserver built by scripts/build-tools.sh.
    pub kube_apiserver: PathBuf,
    /// kubectl built by scripts/build-tools.sh.
    pub kubectl: PathBuf,
    /// helm built by scripts/build-tools.sh.
    pub helm: PathBuf,
    /// cnitool built by scripts/build-tools.sh.
    pub cnitool: PathBuf,
    /// openssl, for the lab's certificates and keys.
    pub openssl: PathBuf,
}

impl Tools {
    /// Locates every tool: the built ones in `$PODNET_TOOLS_CACHE/bin`
    /// (default `/var/cache/podnet-tools/bin`), openssl on the system.
    /// Fails naming the first one missing and what installs it.
    pub fn locate() -> Result<Self, LabError> {
        let cache = std::env::var_os("PODNET_TOOLS_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_TOOLS_CACHE));
        let bin = cache.join("bin");
        Ok(Self {
            etcd: existing("etcd", bin.join("etcd"), BUILD_HINT)?,
            kube_apiserver: existing("kube-apiserver", bin.join("kube-apiserver"), BUILD_HINT)?,
            kubectl: existing("kubectl", bin.join("kubectl"), BUILD_HINT)?,
            helm: existing("helm", bin.join("helm"), BUILD_HINT)?,
            cnitool: existing("cnitool", bin.join("cnitool"), BUILD_HINT)?,
            openssl: existing("openssl", system_path("openssl"), "apt-get install openssl")?,
        })
    }
}

fn system_path(name: &str) -> PathBuf {
    ["/usr/local/bin", "/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| Path::new("/usr/bin").join(name))
}

fn existing(name: &'static str, path: PathBuf, hint: &'static str) -> Result<PathBuf, LabError> {
    // A symlink into a cache whose build was removed is as missing as no file at all.
    if path.is_file() {
        Ok(path)
    } else {
        Err(LabError::MissingTool { name, path, hint })
    }
}
