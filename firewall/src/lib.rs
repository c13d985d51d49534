//! podnet's firewall on a node, shared by podnet-daemon (masquerade) and podnet-cni
//! (hostPort mappings, [`hostports`]), so both use the backend the daemon chose.
//!
//! This crate must never import Kubernetes types nor anything async: podnet-cni links
//! it, and it runs the distribution's `nft` / `iptables-*` tools, nothing else.
//!
//! Masquerade sits behind one small trait, [`NatTable`], with two drivers:
//! [`nftables::Nftables`] (the default: one `inet podnet` table, sets for the addresses,
//! applied with `nft` in one transaction) and [`iptables::Iptables`] (podnet's own nat
//! chain, applied with `iptables-restore`, in the legacy or the nft variant the node
//! uses). [`choose`] picks one per node from what the node runs (pure, tested); a
//! recording fake stands in for the kernel in unit tests.

pub mod hostports;
pub mod iptables;
pub mod nftables;
pub mod policy;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use ipnet::IpNet;

/// Errors running a firewall tool.
#[derive(Debug, thiserror::Error)]
#[error("{command}: {detail}")]
pub struct FirewallError {
    /// The command line.
    pub command: String,
    /// What went wrong (its stderr, or why it could not run).
    pub detail: String,
}

/// The masquerade rules of one node.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MasqueradePlan {
    /// Sources to masquerade: this node's pod CIDRs.
    pub sources: Vec<IpNet>,
    /// Destinations that keep the pod's address: every pod CIDR still in use (every
    /// PodNetwork's served CIDRs, draining ones included, this node's own CIDRs and
    /// every routed peer CIDR), then the own network's nonMasqueradeCIDRs; none covered
    /// by another entry.
    pub exempt: Vec<IpNet>,
}

/// Which firewall podnet programs on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Backend {
    /// nftables: the `inet podnet` table.
    Nftables,
    /// iptables over the nf_tables kernel API (iptables-nft).
    IptablesNft,
    /// iptables over the legacy xtables kernel API (iptables-legacy).
    IptablesLegacy,
}

impl Backend {
    /// The name podnet reports (NodeRoute status, metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nftables => "nftables",
            Self::IptablesNft => "iptables-nft",
            Self::IptablesLegacy => "iptables-legacy",
        }
    }

    /// Every backend.
    pub const ALL: [Backend; 3] = [Self::Nftables, Self::IptablesNft, Self::IptablesLegacy];
}

impl std::str::FromStr for Backend {
    type Err = String;

    /// Parses a name [`Backend::as_str`] gives.
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not one of nftables, iptables-nft, iptables-legacy"))
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the admin asked for (the daemon's `--firewall`, the chart's `daemon.firewall`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Setting {
    /// Follow kube-proxy's mode when it can be seen, else nftables if the kernel has it,
    /// else iptables.
    Auto,
    /// nftables.
    Nftables,
    /// iptables, in the variant that holds the node's rules.
    Iptables,
}

/// What a node's firewall looks like, as far as the choice is concerned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// kube-proxy's nftables tables exist (it runs in nftables mode).
    pub kube_proxy_nftables: bool,
    /// kube-proxy's chains exist in iptables-legacy.
    pub kube_proxy_legacy: bool,
    /// kube-proxy's chains exist in iptables-nft.
    pub kube_proxy_iptables_nft: bool,
    /// `nft` works against this kernel.
    pub nftables_works: bool,
    /// Rules in iptables-legacy and iptables-nft (the iptables wrappers' count: the
    /// variant holding more rules is the one the node uses).
    pub legacy_rules: usize,
    /// See `legacy_rules`.
    pub nft_rules: usize,
}

/// Picks the backend, and says why (pure).
pub fn choose(setting: Setting, facts: &Facts) -> (Backend, String) {
    let iptables_variant = || {
        if facts.legacy_rules > facts.nft_rules {
            (
                Backend::IptablesLegacy,
                format!(
                    "iptables-legacy holds the node's rules ({} against {} in iptables-nft)",
                    facts.legacy_rules, facts.nft_rules
                ),
            )
        } else {
            (
                Backend::IptablesNft,
                format!(
                    "iptables-nft ({} rules; iptables-legacy {})",
                    facts.nft_rules, facts.legacy_rules
                ),
            )
        }
    };
    match setting {
        Setting::Nftables => (Backend::Nftables, "set to nftables".into()),
        Setting::Iptables => {
            let (b, why) = iptables_variant();
            (b, format!("set to iptables; {why}"))
        }
        Setting::Auto if facts.kube_proxy_nftables => {
            (Backend::Nftables, "kube-proxy runs in nftables mode".into())
        }
        Setting::Auto if facts.kube_proxy_legacy => (
            Backend::IptablesLegacy,
            "kube-proxy runs in iptables mode, on iptables-legacy".into(),
        ),
        Setting::Auto if facts.kube_proxy_iptables_nft => (
            Backend::IptablesNft,
            "kube-proxy runs in iptables mode, on iptables-nft".into(),
        ),
        Setting::Auto if facts.nftables_works => (
            Backend::Nftables,
            "no kube-proxy rules seen; the kernel has nftables".into(),
        ),
        Setting::Auto => {
            let (b, why) = iptables_variant();
            (b, format!("no nftables in this kernel; {why}"))
        }
    }
}

/// The firewall operations the daemon needs; each driver implements it, and a recording
/// fake does in unit tests.
pub trait NatTable {
    /// Which backend this is.
    fn backend(&self) -> Backend;
    /// Makes podnet's masquerade rules equal `plan` (`None`: none at all), writing only
    /// when something differs, in one transaction. Returns how many transactions ran.
    fn apply(&mut self, plan: Option<&MasqueradePlan>) -> Result<usize, FirewallError>;
    /// Removes everything podnet has in this backend; whether there was anything.
    fn remove(&mut self) -> Result<bool, FirewallError>;
}

/// Runs the firewall tools, in the daemon's network namespace or in another one.
#[derive(Clone, Debug, Default)]
pub struct Runner {
    /// Enter this network namespace first (through nsenter).
    pub netns: Option<PathBuf>,
}

impl Runner {
    fn command(&self, tool: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg(tool);
                c
            }
            None => Command::new(tool),
        }
    }

    /// Runs `tool args` with `input` on stdin; its stdout, or an error with its stderr.
    pub fn run(
        &self,
        tool: &str,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String, FirewallError> {
        use std::io::Write;
        let err = |detail: String| FirewallError {
            command: format!("{tool} {}", args.join(" ")),
            detail,
        };
        let mut child = self
            .command(tool)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(e.to_string()))?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| err(e.to_string()))?;
        }
        let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
        if !out.status.success() {
            return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A file under `/proc` as the target network namespace sees it (`None`:
    /// unreadable), e.g. `sys/net/bridge/bridge-nf-call-iptables`.
    pub fn proc_file(&self, file: &str) -> Option<String> {
        let path = format!("/proc/{file}");
        match &self.netns {
            None => std::fs::read_to_string(path).ok(),
            Some(_) => self.run("cat", &[&path], None).ok(),
        }
    }

    /// Whether bridge netfilter hands bridged IPv4 and IPv6 packets to the IP hooks
    /// (`net.bridge.bridge-nf-call-iptables` and `-ip6tables` are 1): without it,
    /// traffic between two pods of a node (bridged) passes no forward hook.
    pub fn bridge_netfilter(&self) -> bool {
        ["iptables", "ip6tables"].iter().all(|t| {
            self.proc_file(&format!("sys/net/bridge/bridge-nf-call-{t}"))
                .is_some_and(|v| v.trim() == "1")
        })
    }

    /// A file of `/proc/net` as the target namespace sees it (`None`: unreadable).
    pub fn proc_net(&self, file: &str) -> Option<String> {
        let path = format!("/proc/self/net/{file}");
        match &self.netns {
            None => std::fs::read_to_string(path).ok(),
            Some(_) => self.run("cat", &[&path], None).ok(),
        }
    }

    /// Whether a legacy xtables table of a family is loaded. Asking
    /// `iptables-legacy-save -t <table>` on a node that never used legacy iptables would load
    /// it (the kernel autoloads the module), leaving empty legacy tables behind that
    /// confuse every later detection: podnet never does.
    pub fn legacy_table_loaded(&self, v6: bool, table: &str) -> bool {
        let file = if v6 {
            "ip6_tables_names"
        } else {
            "ip_tables_names"
        };
        self.proc_net(file)
            .is_some_and(|names| names.lines().any(|l| l.trim() == table))
    }

    /// Looks at the node's firewall for [`choose`].
    pub fn facts(&self) -> Facts {
        let nft = self.run("nft", &["list", "tables"], None);
        // Without `-t`, the save tools list only the tables already loaded.
        let count = |save: &str| -> (usize, bool) {
            let mut rules = 0;
            let mut kube = false;
            for tool in [save, &save.replace("iptables", "ip6tables")] {
                if let Ok(text) = self.run(tool, &[], None) {
                    rules += text.lines().filter(|l| l.starts_with("-A ")).count();
                    kube |= text.contains("KUBE-SERVICES") || text.contains("KUBE-FORWARD");
                }
            }
            (rules, kube)
        };
        let (legacy_rules, kube_proxy_legacy) = count("iptables-legacy-save");
        let (nft_rules, kube_proxy_iptables_nft) = count("iptables-nft-save");
        Facts {
            kube_proxy_nftables: nft
                .as_ref()
                .is_ok_and(|t| t.lines().any(|l| l.trim_end().ends_with(" kube-proxy"))),
            kube_proxy_legacy,
            kube_proxy_iptables_nft,
            nftables_works: nft.is_ok(),
            legacy_rules,
            nft_rules,
        }
    }
}

/// The driver for `backend`.
pub fn driver(backend: Backend, runner: Runner) -> Box<dyn NatTable + Send> {
    match backend {
        Backend::Nftables => Box::new(nftables::Nftables { runner }),
        Backend::IptablesNft => Box::new(iptables::Iptables {
            runner,
            variant: iptables::Variant::Nft,
        }),
        Backend::IptablesLegacy => Box::new(iptables::Iptables {
            runner,
            variant: iptables::Variant::Legacy,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_kube_proxy_then_the_kernel() {
        let f = |kp_nft, kp_legacy, kp_ipt_nft, works, legacy, nft| Facts {
            kube_proxy_nftables: kp_nft,
            kube_proxy_legacy: kp_legacy,
            kube_proxy_iptables_nft: kp_ipt_nft,
            nftables_works: works,
            legacy_rules: legacy,
            nft_rules: nft,
        };
        let pick = |facts: Facts| choose(Setting::Auto, &facts).0;
        assert_eq!(pick(f(true, false, false, true, 0, 0)), Backend::Nftables);
        assert_eq!(
            pick(f(false, true, false, true, 40, 3)),
            Backend::IptablesLegacy
        );
        assert_eq!(
            pick(f(false, false, true, true, 0, 40)),
            Backend::IptablesNft
        );
        assert_eq!(pick(f(false, false, false, true, 0, 0)), Backend::Nftables);
        assert_eq!(
            pick(f(false, false, false, false, 12, 3)),
            Backend::IptablesLegacy
        );
        assert_eq!(
            pick(f(false, false, false, false, 0, 0)),
            Backend::IptablesNft
        );
        // An explicit setting wins over what kube-proxy does.
        let kp = f(true, false, false, true, 0, 0);
        assert_eq!(choose(Setting::Iptables, &kp).0, Backend::IptablesNft);
        assert_eq!(
            choose(Setting::Nftables, &f(false, true, false, true, 9, 0)).0,
            Backend::Nftables
        );
        let (_, why) = choose(Setting::Auto, &f(false, true, false, true, 40, 3));
        assert!(why.contains("kube-proxy"), "{why}");
    }
}
