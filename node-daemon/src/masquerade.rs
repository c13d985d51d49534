//! Masquerade: podnet's own nat chain `PODNET-MASQ`, hooked into POSTROUTING once, per
//! IP family, replaced as a whole with `iptables-restore --noflush` (the chain's
//! declaration empties it inside the same transaction, so no half-state is ever
//! visible). A check reads with `iptables-save` only and writes only on a difference.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ipnet::IpNet;

use crate::desired::MasqueradePlan;

/// podnet's chain in the nat table.
pub const CHAIN: &str = "PODNET-MASQ";
const HOOK: &str = "-A POSTROUTING -m comment --comment \"podnet masquerade\" -j PODNET-MASQ";

/// Errors running iptables.
#[derive(Debug, thiserror::Error)]
#[error("{command}: {detail}")]
pub struct MasqueradeError {
    command: String,
    detail: String,
}

/// Runs the iptables tools, in the node's namespace or in another one (`--netns`).
#[derive(Clone, Debug, Default)]
pub struct Iptables {
    /// Enter this network namespace first (through nsenter).
    pub netns: Option<PathBuf>,
}

/// What a masquerade pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MasqueradeReport {
    /// Families whose rules were (re)written or removed.
    pub written: usize,
}

impl Iptables {
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

    fn run(
        &self,
        tool: &str,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String, MasqueradeError> {
        let err = |detail: String| MasqueradeError {
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

    /// (hook present, chain rules) as the kernel has them now; `None` rules: no chain.
    fn current(&self, v6: bool) -> Result<(bool, Option<Vec<String>>), MasqueradeError> {
        let save = self.run(
            if v6 {
                "ip6tables-save"
            } else {
                "iptables-save"
            },
            &["-t", "nat"],
            None,
        )?;
        let mut hook = false;
        let mut chain = None;
        for line in save.lines() {
            if line.starts_with(&format!(":{CHAIN} ")) {
                chain.get_or_insert_with(Vec::new);
            } else if line.starts_with("-A POSTROUTING ") && line.ends_with(&format!("-j {CHAIN}"))
            {
                hook = true;
            } else if line.starts_with(&format!("-A {CHAIN} ")) {
                chain.get_or_insert_with(Vec::new).push(line.to_string());
            }
        }
        Ok((hook, chain))
    }

    /// Makes both families' rules equal `plan` (`None`: no chain, no hook).
    pub fn apply(
        &self,
        plan: Option<&MasqueradePlan>,
    ) -> Result<MasqueradeReport, MasqueradeError> {
        let mut report = MasqueradeReport::default();
        for v6 in [false, true] {
            let want = plan
                .map(|p| render(p, v6))
                .filter(|rules| !rules.is_empty());
            let (hook, have) = self.current(v6)?;
            let restore = if v6 {
                "ip6tables-restore"
            } else {
                "iptables-restore"
            };
            match want {
                Some(rules) => {
                    if hook && have.as_ref() == Some(&rules) {
                        continue;
                    }
                    let mut text = format!("*nat\n:{CHAIN} - [0:0]\n");
                    for r in &rules {
                        text.push_str(r);
                        text.push('\n');
                    }
                    if !hook {
                        text.push_str(HOOK);
                        text.push('\n');
                    }
                    text.push_str("COMMIT\n");
                    self.run(restore, &["--noflush"], Some(&text))?;
                    report.written += 1;
                }
                None => {
                    if !hook && have.is_none() {
                        continue;
                    }
                    let mut text = String::from("*nat\n");
                    if hook {
                        text.push_str(&HOOK.replacen("-A", "-D", 1));
                        text.push('\n');
                    }
                    if have.is_some() {
                        text.push_str(&format!(":{CHAIN} - [0:0]\n-X {CHAIN}\n"));
                    }
                    text.push_str("COMMIT\n");
                    self.run(restore, &["--noflush"], Some(&text))?;
                    report.written += 1;
                }
            }
        }
        Ok(report)
    }
}

/// The chain's rules for one family, exactly as `iptables-save` prints them.
pub fn render(plan: &MasqueradePlan, v6: bool) -> Vec<String> {
    let fam = |n: &IpNet| n.addr().is_ipv6() == v6;
    let mut rules = Vec::new();
    for src in plan.sources.iter().filter(|s| fam(s)) {
        for dst in plan.exempt.iter().filter(|d| fam(d)) {
            rules.push(format!("-A {CHAIN} -s {src} -d {dst} -j RETURN"));
        }
        rules.push(format!("-A {CHAIN} -s {src} -j MASQUERADE"));
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_per_family() {
        let plan = MasqueradePlan {
            sources: vec![
                "10.244.1.0/24".parse().unwrap_or_default(),
                "fd00:0:0:1::/64".parse().unwrap_or_default(),
            ],
            exempt: vec![
                "10.244.0.0/16".parse().unwrap_or_default(),
                "fd00::/48".parse().unwrap_or_default(),
            ],
        };
        assert_eq!(
            render(&plan, false),
            [
                "-A PODNET-MASQ -s 10.244.1.0/24 -d 10.244.0.0/16 -j RETURN",
                "-A PODNET-MASQ -s 10.244.1.0/24 -j MASQUERADE"
            ]
        );
        assert_eq!(render(&plan, true).len(), 2);
    }
}
