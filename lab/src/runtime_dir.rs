//! Unique directories for lab instances.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::LabError;

/// Where lab instances keep their files: `$PODNET_RUN_DIR`, else /dev/shm (etcd fsyncs
/// are free on tmpfs), else the system temp dir.
fn base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PODNET_RUN_DIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Creates a fresh directory `<base>/<prefix>-<pid>-<n>` that no other instance uses.
pub(crate) fn create_unique_dir(prefix: &str) -> Result<PathBuf, LabError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let base = base_dir();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{prefix}-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(LabError::io("creating", dir)(e)),
        }
    }
}
