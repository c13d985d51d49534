//! The last state the daemon programmed, kept on the node (`<state-dir>/programmed.json`)
//! so that a daemon starting without an API server (a node rebooting while the control
//! plane is away) programs what it last knew instead of nothing.
//!
//! Written atomically (temporary file, fsync, rename) and only when it changed; read
//! once at start. A file that cannot be read or parsed is reported and ignored: it is a
//! cache, never a source of truth, and what it holds passed the validation rules when
//! it was written.

use std::io::{BufRead, Write};
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
        Ok(bytes) => serde_json::from_slice::<Desired>(&bytes)
            .map(|mut d| {
                // Sorted as computed; a file written otherwise is sorted here
                // (`Desired::incumbent` searches it).
                d.routes.sort();
                Some(d)
            })
            .map_err(|source| StateError::Parse { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io { path, source }),
    }
}

/// Saves `desired` unless the file holds it already. Returns whether it wrote. The
/// state is serialized straight into the comparison and then the file, never into
/// memory whole (20,000 routes make 1.5 MB of JSON).
pub fn save(dir: &Path, desired: &Desired) -> Result<bool, StateError> {
    let path = dir.join(FILE);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StateError::Io { path, source }
    };
    let parse = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StateError::Parse { path, source }
    };
    if let Ok(old) = std::fs::File::open(&path) {
        let mut same = SameAs {
            old: std::io::BufReader::with_capacity(16 << 10, old),
            same: true,
        };
        serde_json::to_writer(&mut same, desired).map_err(parse(&path))?;
        if same.same && same.old.fill_buf().is_ok_and(|rest| rest.is_empty()) {
            return Ok(false);
        }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(".{FILE}.tmp"));
    {
        let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut w = std::io::BufWriter::with_capacity(16 << 10, f);
        serde_json::to_writer(&mut w, desired).map_err(parse(&tmp))?;
        let f = w.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(true)
}

/// A writer that compares what is written with what `old` holds.
struct SameAs<R> {
    old: R,
    same: bool,
}

impl<R: BufRead> Write for SameAs<R> {
    fn write(&mut self, mut buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len();
        while self.same && !buf.is_empty() {
            let old = self.old.fill_buf()?;
            if old.is_empty() {
                self.same = false;
                break;
            }
            let k = old.len().min(buf.len());
            self.same = old[..k] == buf[..k];
            self.old.consume(k);
            buf = &buf[k..];
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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
        // A file holding more, or less, than the state is rewritten.
        let text = std::fs::read(dir.join(FILE)).unwrap_or_default();
        for wrong in [[&text[..], b" "].concat(), text[..text.len() - 1].to_vec()] {
            let _ = std::fs::write(dir.join(FILE), wrong);
            assert!(save(&dir, &d).unwrap_or(false));
            assert_eq!(std::fs::read(dir.join(FILE)).unwrap_or_default(), text);
        }
        assert_eq!(load(&dir).ok().flatten(), Some(d));
        let _ = std::fs::write(dir.join(FILE), b"{not json");
        assert!(matches!(load(&dir), Err(StateError::Parse { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
