//! The last state the daemon programmed, kept on the node (`<state-dir>/programmed.json`)
//! so that a daemon starting without an API server (a node rebooting while the control
//! plane is away) programs what it last knew instead of nothing.
//!
//! Written atomically (temporary file, fsync, rename) and only when it changed; read
//! once at start. A file that cannot be read or parsed is reported and ignored: it is a
//! cache, never a source of truth, and what it holds passed the validation rules when
//! it was written.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::desired::Desired;

/// The file name under the state directory.
pub const FILE: &str = "programmed.json";

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold a state this version understands.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Reads the saved state; `Ok(None)` when there is none.
pub fn load(dir: &Path) -> Result<Option<Desired>, StateError> {
    let path = dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Parse { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io { path, source }),
    }
}

/// Saves `desired` unless the file holds it already. Returns whether it wrote.
pub fn save(dir: &Path, desired: &Desired) -> Result<bool, StateError> {
    let path = dir.join(FILE);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StateError::Io { path, source }
    };
    let text = serde_json::to_vec(desired).map_err(|source| StateError::Parse {
        path: path.clone(),
        source,
    })?;
    if std::fs::read(&path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(".{FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&text).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::PeerRoute;

    #[test]
    fn round_trips_writes_once_and_survives_garbage() {
        let dir = std::env::temp_dir().join(format!("pnstate{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(load(&dir), Ok(None)));
        let d = Desired {
            routes: vec![PeerRoute {
                dst: "10.244.2.0/24".parse().unwrap_or_default(),
                via: "198.18.0.2"
                    .parse()
                    .unwrap_or(std::net::IpAddr::from([0; 4])),
                node: "b".into(),
            }],
            own_cidrs: vec!["10.244.1.0/24".parse().unwrap_or_default()],
            ..Default::default()
        };
        assert!(save(&dir, &d).unwrap_or(false));
        assert!(!save(&dir, &d).unwrap_or(true), "unchanged: not rewritten");
        assert_eq!(load(&dir).ok().flatten(), Some(d));
        let _ = std::fs::write(dir.join(FILE), b"{not json");
        assert!(matches!(load(&dir), Err(StateError::Parse { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
