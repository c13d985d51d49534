//! Built-in IPAM: one lease file per address under `<dataDir>/<network>/`.
//!
//! * `lock` — every change happens under an exclusive `flock` on it, so concurrent
//!   plugin processes serialize; the kernel drops the lock when a process dies.
//! * `<ip>` — a lease: `<containerID>\n<ifname>\n`. Created by writing a temporary file
//!   and `link(2)`-ing it into place, so a reader never sees a torn lease and a name that
//!   exists is taken.
//! * `attachments/<containerID>:<ifname>` — the addresses of one attachment (replaced by
//!   rename), so DEL finds them without scanning. `:` never appears in either part.
//! * `last.4`, `last.6` — the last address handed out; the next search starts after it,
//!   so allocation does not rescan the pool.
//!
//! * `locks/<host veth name>` — one per attachment ([`AttachmentLock`]): ADD and DEL hold
//!   it for their whole run, so two invocations for one attachment never interleave,
//!   and GC skips an attachment whose lock is taken (an ADD in flight). Named after the
//!   host veth (a hash of container ID and ifname), so GC can ask for a veth it finds
//!   on the bridge as well as for a lease.
//!
//! A crash at any instant leaves at worst a lease without an attachment file, or a
//! temporary file; DEL (which falls back to a scan when the attachment file is missing)
//! and GC release and remove them.
//!
//! Nothing is fsync'ed: atomicity against a killed process comes from link/rename, and
//! the store lives on tmpfs (/run), which a machine crash empties along with every pod.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{CniError, Code};

pub(crate) fn io(what: String) -> impl FnOnce(std::io::Error) -> CniError {
    move |e| CniError::new(Code::Io, "IPAM storage failed", format!("{what}: {e}"))
}

/// An exclusive lock on one attachment (container ID + ifname), held for the lifetime
/// of the value; the kernel drops it when the process dies.
pub struct AttachmentLock {
    path: PathBuf,
    lock: Flock<File>,
}

impl AttachmentLock {
    fn path(data_dir: &Path, network: &str, host_veth: &str) -> PathBuf {
        data_dir.join(network).join("locks").join(host_veth)
    }

    /// Waits for the lock of the attachment whose host veth is `host_veth`.
    pub fn acquire(data_dir: &Path, network: &str, host_veth: &str) -> Result<Self, CniError> {
        Self::take(data_dir, network, host_veth, FlockArg::LockExclusive).map(|l| {
            l.ok_or_else(|| {
                CniError::new(
                    Code::TryAgainLater,
                    "attachment busy",
                    host_veth.to_string(),
                )
            })
        })?
    }

    /// The lock if nobody holds it, else `None` (an operation on it is in flight).
    pub fn try_acquire(
        data_dir: &Path,
        network: &str,
        host_veth: &str,
    ) -> Result<Option<Self>, CniError> {
        Self::take(
            data_dir,
            network,
            host_veth,
            FlockArg::LockExclusiveNonblock,
        )
    }

    fn take(
        data_dir: &Path,
        network: &str,
        host_veth: &str,
        how: FlockArg,
    ) -> Result<Option<Self>, CniError> {
        use std::os::unix::fs::MetadataExt;
        let path = Self::path(data_dir, network, host_veth);
        loop {
            let file = match File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let dir = path.parent().unwrap_or(data_dir);
                    fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
                    continue;
                }
                Err(e) => return Err(io(format!("opening {}", path.display()))(e)),
            };
            let lock = match Flock::lock(file, how) {
                Ok(l) => l,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, e)) => {
                    return Err(CniError::new(
                        Code::TryAgainLater,
                        "cannot lock the attachment",
                        format!("{}: {e}", path.display()),
                    ));
                }
            };
            // A DEL that held it may have removed the file meanwhile: the lock counts
            // only if the path still names the file we locked.
            let same = match (lock.metadata(), fs::metadata(&path)) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if same {
                return Ok(Some(Self { path, lock }));
            }
        }
    }

    /// Removes the lock file, then releases the lock (the attachment is gone). A waiter
    /// on the removed file notices and locks a new one.
    pub fn remove(self) {
        let _ = fs::remove_file(&self.path);
        drop(self.lock);
    }
}

/// The lease store of one network, locked for the lifetime of the value.
pub struct Ipam {
    dir: PathBuf,
    _lock: Flock<File>,
}

fn attachment_name(container_id: &str, ifname: &str) -> String {
    format!("{container_id}:{ifname}")
}

fn owner_line(container_id: &str, ifname: &str) -> String {
    format!("{container_id}\n{ifname}\n")
}

/// Writes `content` to `path` atomically (temporary file + rename).
pub(crate) fn write_atomic(dir: &Path, path: &Path, content: &str) -> Result<(), CniError> {
    let tmp = dir.join(format!(".tmp.{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    f.write_all(content.as_bytes())
        .map_err(io(format!("writing {}", tmp.display())))?;
    f.sync_data()
        .map_err(io(format!("syncing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io(format!("renaming to {}", path.display())))
}

fn offset(ip: IpAddr, n: u128) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => u32::try_from(u128::from(u32::from(a)).checked_add(n)?)
            .ok()
            .map(|v| IpAddr::V4(v.into())),
        IpAddr::V6(a) => u128::from(a).checked_add(n).map(|v| IpAddr::V6(v.into())),
    }
}

fn as_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The usable pod addresses of `net`: after the network address and the gateway, and
/// (IPv4) before the broadcast address. Returns (first, count).
fn pod_range(net: &IpNet) -> (IpAddr, u128) {
    let first = offset(net.network(), 2).unwrap_or(net.network());
    let last = match net {
        IpNet::V4(_) => as_u128(net.broadcast()).saturating_sub(1),
        IpNet::V6(_) => as_u128(net.broadcast()),
    };
    (first, (last + 1).saturating_sub(as_u128(first)))
}

impl Ipam {
    /// Opens (creating) and locks the store of `network` under `data_dir`.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self, CniError> {
        let dir = data_dir.join(network);
        fs::create_dir_all(dir.join("attachments"))
            .map_err(io(format!("creating {}", dir.display())))?;
        let lock_path = dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(format!("opening {}", lock_path.display())))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| {
            CniError::new(
                Code::TryAgainLater,
                "cannot lock the lease store",
                e.to_string(),
            )
        })?;
        Ok(Self { dir, _lock: lock })
    }

    /// The addresses an attachment holds (from its attachment file).
    pub fn lookup(&self, container_id: &str, ifname: &str) -> Vec<IpAddr> {
        let path = self
            .dir
            .join("attachments")
            .join(attachment_name(container_id, ifname));
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// One address per CIDR for the attachment. An attachment that already holds
    /// addresses keeps them.
    pub fn allocate(
        &mut self,
        cidrs: &[IpNet],
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<IpNet>, CniError> {
        let existing = self.lookup(container_id, ifname);
        let mut out = Vec::new();
        for net in cidrs {
            if let Some(ip) = existing.iter().find(|ip| net.contains(*ip)) {
                out.push(
                    IpNet::new(*ip, net.prefix_len())
                        .map_err(|e| CniError::new(Code::Io, "bad lease", e.to_string()))?,
                );
                continue;
            }
            match self.claim(net, container_id, ifname) {
                Ok(ip) => out.push(
                    IpNet::new(ip, net.prefix_len())
                        .map_err(|e| CniError::new(Code::Io, "bad lease", e.to_string()))?,
                ),
                Err(e) => {
                    // All or nothing: give back what this call claimed.
                    for claimed in out.iter().filter(|n| !existing.contains(&n.addr())) {
                        let _ = fs::remove_file(self.dir.join(claimed.addr().to_string()));
                    }
                    return Err(e);
                }
            }
        }
        let content: String = out.iter().map(|n| format!("{}\n", n.addr())).collect();
        let path = self
            .dir
            .join("attachments")
            .join(attachment_name(container_id, ifname));
        write_atomic(&self.dir, &path, &content)?;
        Ok(out)
    }

    fn claim(&mut self, net: &IpNet, container_id: &str, ifname: &str) -> Result<IpAddr, CniError> {
        let (first, count) = pod_range(net);
        let family = if net.addr().is_ipv4() { "4" } else { "6" };
        let last_path = self.dir.join(format!("last.{family}"));
        let start = fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
            .filter(|ip| net.contains(ip) && as_u128(*ip) >= as_u128(first))
            .map(|ip| (as_u128(ip) - as_u128(first) + 1) % count.max(1))
            .unwrap_or(0);
        let tmp = self.dir.join(format!(".lease.{}", std::process::id()));
        {
            let mut f = File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
            f.write_all(owner_line(container_id, ifname).as_bytes())
                .map_err(io(format!("writing {}", tmp.display())))?;
            f.sync_data()
                .map_err(io(format!("syncing {}", tmp.display())))?;
        }
        // Bounded: a full pool is exhausted after `count` tries, and huge IPv6 pools
        // find a free address long before that.
        let mut result = None;
        for i in 0..count.min(1 << 20) {
            let Some(ip) = offset(first, (start + i) % count) else {
                break;
            };
            match fs::hard_link(&tmp, self.dir.join(ip.to_string())) {
                Ok(()) => {
                    result = Some(ip);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(io(format!("claiming {ip}"))(e));
                }
            }
        }
        let _ = fs::remove_file(&tmp);
        let ip = result.ok_or_else(|| {
            CniError::new(
                Code::TryAgainLater,
                "no free address",
                format!("every address of {net} is leased ({count} usable)"),
            )
        })?;
        write_atomic(&self.dir, &last_path, &ip.to_string())?;
        Ok(ip)
    }

    /// Removes temporary files a killed ADD left behind. Each is written only under the
    /// store lock, which this value holds: any that exists now is stale.
    fn remove_stale_temp_files(&self) {
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".lease.") || name.starts_with(".tmp.") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }

    /// Releases every address of the attachment. Idempotent.
    pub fn release(&mut self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, CniError> {
        self.remove_stale_temp_files();
        let owner = owner_line(container_id, ifname);
        let attachment = self
            .dir
            .join("attachments")
            .join(attachment_name(container_id, ifname));
        let listed = self.lookup(container_id, ifname);
        // Without an attachment file (a crash between lease and attachment), scan.
        let candidates = if attachment.exists() {
            listed
        } else {
            self.leases()?
                .into_iter()
                .filter(|(_, o)| *o == owner)
                .map(|(ip, _)| ip)
                .collect()
        };
        let mut released = Vec::new();
        for ip in candidates {
            let path = self.dir.join(ip.to_string());
            // Only a lease this attachment still owns: the address may have moved on.
            if fs::read_to_string(&path).is_ok_and(|o| o == owner) {
                fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
                released.push(ip);
            }
        }
        match fs::remove_file(&attachment) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("removing {}", attachment.display()))(e)),
        }
        Ok(released)
    }

    /// Every lease: (address, owner line).
    fn leases(&self) -> Result<Vec<(IpAddr, String)>, CniError> {
        let mut out = Vec::new();
        for entry in
            fs::read_dir(&self.dir).map_err(io(format!("reading {}", self.dir.display())))?
        {
            let entry = entry.map_err(io(format!("reading {}", self.dir.display())))?;
            if let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            {
                out.push((ip, fs::read_to_string(entry.path()).unwrap_or_default()));
            }
        }
        Ok(out)
    }

    /// Every attachment holding a lease.
    pub fn attachments(&self) -> Result<HashSet<(String, String)>, CniError> {
        Ok(self
            .leases()?
            .into_iter()
            .filter_map(|(_, owner)| {
                let mut lines = owner.lines();
                Some((lines.next()?.to_string(), lines.next()?.to_string()))
            })
            .collect())
    }

    /// Releases every attachment not in `keep` for which `may_release` says yes (GC
    /// passes one that takes the attachment's lock, so an ADD in flight is left alone);
    /// returns those released.
    pub fn gc(
        &mut self,
        keep: &HashSet<(String, String)>,
        mut may_release: impl FnMut(&str, &str) -> bool,
    ) -> Result<Vec<(String, String)>, CniError> {
        self.remove_stale_temp_files();
        let mut released = Vec::new();
        let mut refused: HashSet<(String, String)> = HashSet::new();
        for (ip, owner) in self.leases()? {
            let mut lines = owner.lines();
            let key = (
                lines.next().unwrap_or_default().to_string(),
                lines.next().unwrap_or_default().to_string(),
            );
            if keep.contains(&key) || refused.contains(&key) {
                continue;
            }
            if !released.contains(&key) && !may_release(&key.0, &key.1) {
                refused.insert(key);
                continue;
            }
            let _ = fs::remove_file(self.dir.join(ip.to_string()));
            let _ = fs::remove_file(
                self.dir
                    .join("attachments")
                    .join(attachment_name(&key.0, &key.1)),
            );
            released.push(key);
        }
        // Attachment files without leases (a crash during release).
        if let Ok(entries) = fs::read_dir(self.dir.join("attachments")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some((cid, ifname)) = name.split_once(':') else {
                    continue;
                };
                let key = (cid.to_string(), ifname.to_string());
                if keep.contains(&key) || refused.contains(&key) {
                    continue;
                }
                if released.contains(&key) || may_release(cid, ifname) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        released.sort();
        released.dedup();
        Ok(released)
    }

    /// Whether each CIDR still has a free address (for STATUS).
    pub fn has_free(&self, cidrs: &[IpNet]) -> Result<bool, CniError> {
        let leases = self.leases()?;
        Ok(cidrs.iter().all(|net| {
            let (_, count) = pod_range(net);
            let used = leases.iter().filter(|(ip, _)| net.contains(ip)).count() as u128;
            used < count
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("podnet-ipam-test-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn allocates_skips_gateway_and_broadcast_and_releases() {
        let d = tmpdir("basic");
        let cidrs = [net("10.9.0.0/29"), net("fd00::/126")];
        let mut ipam = Ipam::open(&d, "n").unwrap_or_else(|e| panic!("{e}"));
        let mut got = Vec::new();
        for i in 0..5 {
            match ipam.allocate(&cidrs[..1], &format!("c{i}"), "eth0") {
                Ok(v) => got.push(v[0].addr().to_string()),
                Err(e) => assert!(i == 5 || e.code == Code::TryAgainLater, "{e}"),
            }
        }
        assert_eq!(
            got,
            ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
        );
        assert!(
            ipam.allocate(&cidrs[..1], "c9", "eth0").is_err(),
            "exhausted"
        );
        assert!(!ipam.has_free(&cidrs[..1]).unwrap_or(true));
        assert_eq!(
            ipam.release("c2", "eth0").ok(),
            Some(vec![
                "10.9.0.4".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
            ])
        );
        assert_eq!(ipam.release("c2", "eth0").ok(), Some(vec![]), "idempotent");
        let again = ipam.allocate(&cidrs, "c9", "eth0").unwrap_or_default();
        assert_eq!(
            again.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            ["10.9.0.4/29", "fd00::2/126"]
        );
        // The same attachment keeps its addresses.
        assert_eq!(
            ipam.allocate(&cidrs, "c9", "eth0").unwrap_or_default(),
            again
        );
        let keep: HashSet<(String, String)> = [("c9".to_string(), "eth0".to_string())].into();
        let released = ipam.gc(&keep, |_, _| true).unwrap_or_default();
        assert_eq!(released.len(), 4);
        assert_eq!(ipam.attachments().unwrap_or_default(), keep);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_lease_without_attachment_file_is_still_released() {
        let d = tmpdir("crash");
        let mut ipam = Ipam::open(&d, "n").unwrap_or_else(|e| panic!("{e}"));
        ipam.allocate(&[net("10.9.0.0/24")], "c1", "eth0")
            .unwrap_or_default();
        fs::remove_file(d.join("n/attachments/c1:eth0")).unwrap_or_default();
        assert_eq!(ipam.release("c1", "eth0").unwrap_or_default().len(), 1);
        assert!(ipam.attachments().unwrap_or_default().is_empty());
        let _ = fs::remove_dir_all(&d);
    }
}
