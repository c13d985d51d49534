//! hostPort mappings, the plugin's side: a record per attachment that has mappings,
//! `<dataDir>/<network>/hostports/<host veth>.json`, and the node's firewall rewritten
//! from all records (see [`podnet_firewall::hostports`]) whenever one changes.
//!
//! Every change happens under an exclusive `flock` on `<dataDir>/<network>/hostports.lock`
//! (conflicts are decided against every other record, and two ADDs cannot both take a
//! port). A record is written before its rules and removed only after the rules without
//! it are in place, so a process killed at any instant leaves at worst a record whose
//! rules DEL or GC remove — never a rule without a record.

use std::collections::HashSet;
use std::fs::{self, File};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};
use podnet_firewall::hostports::{self, Attachment};
use podnet_firewall::{Backend, Runner, Setting};

use crate::config::NetConf;
use crate::error::{CniError, Code};
use crate::ipam::{io, write_atomic};

/// The records of one network, locked for the lifetime of the value.
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Store {
    /// Waits for the node-wide hostPort lock.
    pub fn lock(data_dir: &Path, network: &str) -> Result<Self, CniError> {
        let net_dir = data_dir.join(network);
        let dir = net_dir.join("hostports");
        fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let path = net_dir.join("hostports.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| {
            CniError::new(
                Code::TryAgainLater,
                "cannot lock the hostPort records",
                format!("{}: {e}", path.display()),
            )
        })?;
        Ok(Self { dir, _lock: lock })
    }

    fn path(&self, owner: &str) -> PathBuf {
        self.dir.join(format!("{owner}.json"))
    }

    /// Every record (a leftover temporary file from a killed writer is removed: under
    /// the lock nobody else is writing).
    pub fn records(&self) -> Result<Vec<Attachment>, CniError> {
        let mut out = Vec::new();
        let entries =
            fs::read_dir(&self.dir).map_err(io(format!("reading {}", self.dir.display())))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp.") {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let text = fs::read_to_string(entry.path())
                .map_err(io(format!("reading {}", entry.path().display())))?;
            let record: Attachment = serde_json::from_str(&text).map_err(|e| {
                CniError::new(
                    Code::Decode,
                    "a hostPort record is unreadable",
                    format!("{}: {e}", entry.path().display()),
                )
            })?;
            out.push(record);
        }
        out.sort_by(|a, b| a.owner.cmp(&b.owner));
        Ok(out)
    }

    fn write(&self, record: &Attachment) -> Result<(), CniError> {
        let text = serde_json::to_string(record).unwrap_or_default();
        write_atomic(&self.dir, &self.path(&record.owner), &text)
    }

    fn remove(&self, owner: &str) -> Result<(), CniError> {
        match fs::remove_file(self.path(owner)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io(format!("removing {}", self.path(owner).display()))(e))
            }
            _ => Ok(()),
        }
    }
}

/// The backend: the daemon's choice from the CNI config, else what the node looks like.
fn backend(conf: &NetConf) -> Backend {
    conf.firewall
        .unwrap_or_else(|| podnet_firewall::choose(Setting::Auto, &Runner::default().facts()).0)
}

/// Writes the firewall for `all`, and the bridge's `route_localnet` with it: on once a
/// mapping on a loopback hostIP exists (after the rules, whose guard keeps 127.0.0.0/8
/// closed to pods, are in), off again before the rules without the last one are written.
fn program(conf: &NetConf, all: &[Attachment]) -> Result<(), CniError> {
    let backend = backend(conf);
    let loopback = hostports::any_loopback(all);
    if !loopback {
        route_localnet(&conf.bridge, false)?;
    }
    hostports::program(backend, &Runner::default(), all, &conf.pod_cidrs).map_err(|e| {
        CniError::new(
            Code::Io,
            format!("cannot program hostPorts in {backend}"),
            e.to_string(),
        )
    })?;
    if loopback {
        route_localnet(&conf.bridge, true)?;
    }
    Ok(())
}

/// Sets `net.ipv4.conf.<bridge>.route_localnet` (a bridge that does not exist yet has
/// nothing to set; writes only on a difference).
fn route_localnet(bridge: &str, on: bool) -> Result<(), CniError> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet"));
    let want = if on { "1" } else { "0" };
    match fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Ok(have) if have.trim() == want => Ok(()),
        _ => fs::write(&path, want).map_err(io(format!("writing {}", path.display()))),
    }
}

/// ADD: records the attachment's mappings and programs them. A port another
/// attachment holds is a [`Code::PortConflict`] error and changes nothing.
pub fn add(
    conf: &NetConf,
    container_id: &str,
    owner: &str,
    ips: &[IpAddr],
) -> Result<(), CniError> {
    let record = Attachment {
        owner: owner.to_string(),
        container_id: container_id.to_string(),
        ips: ips.to_vec(),
        mappings: conf.port_mappings.clone(),
    };
    record
        .validate()
        .map_err(|why| CniError::new(Code::InvalidConfig, "invalid portMappings", why))?;
    let store = Store::lock(&conf.data_dir, &conf.name)?;
    let mut all = store.records()?;
    if let Some(why) = hostports::conflict(&record, &all) {
        return Err(CniError::new(
            Code::PortConflict,
            "hostPort already allocated",
            why,
        ));
    }
    all.retain(|a| a.owner != owner);
    all.push(record.clone());
    store.write(&record)?;
    if let Err(e) = program(conf, &all) {
        // Put the firewall back as the other records want it (an iptables node may have
        // taken one family), then forget this one.
        all.retain(|a| a.owner != owner);
        if program(conf, &all).is_ok() {
            let _ = store.remove(owner);
        }
        return Err(e);
    }
    Ok(())
}

/// DEL: the attachment's mappings go (rules first, then the record). Nothing to do, and
/// no firewall command run, for an attachment without a record.
pub fn del(conf: &NetConf, owner: &str) -> Result<(), CniError> {
    let store = Store::lock(&conf.data_dir, &conf.name)?;
    let mut all = store.records()?;
    let before = all.len();
    all.retain(|a| a.owner != owner);
    if all.len() == before {
        return Ok(());
    }
    program(conf, &all)?;
    store.remove(owner)
}

/// GC: the records (and rules) of every attachment not in `keep` whose lock `claim`
/// takes (an attachment with an operation in flight is left alone).
pub fn gc(
    conf: &NetConf,
    keep: &HashSet<String>,
    mut claim: impl FnMut(&str) -> bool,
) -> Result<(), CniError> {
    let store = Store::lock(&conf.data_dir, &conf.name)?;
    let all = store.records()?;
    let (kept, stale): (Vec<Attachment>, Vec<Attachment>) = all
        .into_iter()
        .partition(|a| keep.contains(&a.owner) || !claim(&a.owner));
    if stale.is_empty() {
        return Ok(());
    }
    program(conf, &kept)?;
    for a in &stale {
        store.remove(&a.owner)?;
    }
    Ok(())
}

/// CHECK: the attachment's record holds the runtime's mappings and the firewall has
/// every rule of it.
pub fn check(conf: &NetConf, owner: &str, pod_cidrs: &[IpNet]) -> Result<(), CniError> {
    let failed = |what: String| {
        CniError::new(
            Code::CheckFailed,
            "attachment differs from its ADD result",
            what,
        )
    };
    let store = Store::lock(&conf.data_dir, &conf.name)?;
    let record = store.records()?.into_iter().find(|a| a.owner == owner);
    let Some(record) = record else {
        if conf.port_mappings.is_empty() {
            return Ok(());
        }
        return Err(failed(format!("no hostPort record for {owner}")));
    };
    let mut want = conf.port_mappings.clone();
    let mut have = record.mappings.clone();
    want.sort();
    have.sort();
    if want != have {
        return Err(failed(format!(
            "hostPorts recorded {have:?}, the runtime asks for {want:?}"
        )));
    }
    hostports::verify(backend(conf), &Runner::default(), &record, pod_cidrs).map_err(failed)
}
