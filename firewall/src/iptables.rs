//! The iptables driver: podnet's own nat chain `PODNET-MASQ`, hooked into POSTROUTING
//! once, per IP family, replaced as a whole with `iptables-restore --noflush` (the
//! chain's declaration empties it inside the same transaction, so no half-state is ever
//! visible). A check reads with `iptables-save` only and writes only on a difference.
//! The variant (legacy or nft) is the one the node's rules live in: rules in the other
//! would be invisible to the rest of the host.

use ipnet::IpNet;

use crate::{Backend, FirewallError, MasqueradePlan, NatTable, Runner};

/// podnet's chain in the nat table.
pub const CHAIN: &str = "PODNET-MASQ";
const HOOK: &str = "-A POSTROUTING -m comment --comment \"podnet masquerade\" -j PODNET-MASQ";

/// Which iptables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// iptables over the legacy xtables kernel API.
    Legacy,
    /// iptables over nf_tables.
    Nft,
}

impl Variant {
    /// The variant of an iptables backend (`None` for nftables).
    pub fn of(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Nftables => None,
            Backend::IptablesNft => Some(Self::Nft),
            Backend::IptablesLegacy => Some(Self::Legacy),
        }
    }
}

/// A set of podnet's own chains in one table and the rules of built-in chains that jump
/// to them (each a whole `-A <BUILTIN> ... -j <CHAIN>` line).
#[derive(Clone, Copy, Debug)]
pub struct Owned<'a> {
    /// The table (`nat`, `filter`).
    pub table: &'a str,
    /// podnet's chains.
    pub chains: &'a [&'a str],
    /// The jumps into them.
    pub hooks: &'a [&'a str],
}

/// What of an [`Owned`] set the kernel has: each hook's presence, each chain's rules
/// (`None`: no such chain).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Present {
    /// Per hook, in order.
    pub hooks: Vec<bool>,
    /// Per chain, in order.
    pub chains: Vec<Option<Vec<String>>>,
}

/// Parses `iptables-save -t <table>` for `owned` (pure). A hook is recognised by its
/// built-in chain, its comment and its target, however iptables orders its matches.
pub fn read_owned(save: &str, owned: Owned<'_>) -> Present {
    let mut out = Present {
        hooks: vec![false; owned.hooks.len()],
        chains: vec![None; owned.chains.len()],
    };
    for line in save.lines() {
        for (i, hook) in owned.hooks.iter().enumerate() {
            let (builtin, target, comment) = hook_parts(hook);
            if line.starts_with(builtin) && line.ends_with(target) && line.contains(comment) {
                out.hooks[i] = true;
            }
        }
        for (i, chain) in owned.chains.iter().enumerate() {
            if line.starts_with(&format!(":{chain} ")) {
                out.chains[i].get_or_insert_with(Vec::new);
            } else if line.starts_with(&format!("-A {chain} ")) {
                out.chains[i]
                    .get_or_insert_with(Vec::new)
                    .push(line.to_string());
            }
        }
    }
    out
}

/// A hook's "-A BUILTIN " prefix, its " -j CHAIN" suffix and its comment match.
fn hook_parts(hook: &str) -> (&str, &str, &str) {
    let builtin_end = hook
        .match_indices(' ')
        .nth(1)
        .map_or(hook.len(), |(i, _)| i + 1);
    let target_start = hook.rfind(" -j ").unwrap_or(0);
    let comment = hook
        .find("--comment ")
        .and_then(|i| {
            let rest = &hook[i..];
            rest.find("\" ").map(|end| &rest[..end + 1])
        })
        .unwrap_or("");
    (&hook[..builtin_end], &hook[target_start..], comment)
}

/// The `iptables-restore --noflush` script that makes `owned` hold `want` (one rule
/// list per chain; `None`: remove every chain and hook), given what is `present`.
/// Declaring a chain empties it inside the same transaction, so no half state is
/// visible. `None` when nothing needs to change.
pub fn restore_script(
    owned: Owned<'_>,
    present: &Present,
    want: Option<&[Vec<String>]>,
) -> Option<String> {
    let mut text = format!("*{}\n", owned.table);
    match want {
        Some(rules) => {
            let same = present.hooks.iter().all(|h| *h)
                && present
                    .chains
                    .iter()
                    .zip(rules)
                    .all(|(have, want)| have.as_ref() == Some(want));
            if same {
                return None;
            }
            for chain in owned.chains {
                text.push_str(&format!(":{chain} - [0:0]\n"));
            }
            for r in rules.iter().flatten() {
                text.push_str(r);
                text.push('\n');
            }
            for (hook, here) in owned.hooks.iter().zip(&present.hooks) {
                if !here {
                    text.push_str(hook);
                    text.push('\n');
                }
            }
        }
        None => {
            if !present.hooks.iter().any(|h| *h) && present.chains.iter().all(Option::is_none) {
                return None;
            }
            for (hook, here) in owned.hooks.iter().zip(&present.hooks) {
                if *here {
                    text.push_str(&hook.replacen("-A", "-D", 1));
                    text.push('\n');
                }
            }
            for (chain, here) in owned.chains.iter().zip(&present.chains) {
                if here.is_some() {
                    text.push_str(&format!(":{chain} - [0:0]\n-X {chain}\n"));
                }
            }
        }
    }
    text.push_str("COMMIT\n");
    Some(text)
}

/// The iptables driver.
#[derive(Debug)]
pub struct Iptables {
    /// Runs the tools.
    pub runner: Runner,
    /// legacy or nft.
    pub variant: Variant,
}

impl Iptables {
    /// `iptables-<variant>-<what>` or its ip6tables twin.
    pub fn tool(&self, v6: bool, what: &str) -> String {
        let family = if v6 { "ip6tables" } else { "iptables" };
        let variant = match self.variant {
            Variant::Legacy => "legacy",
            Variant::Nft => "nft",
        };
        format!("{family}-{variant}-{what}")
    }

    /// One table as `iptables-save` prints it; empty when the legacy table is not
    /// loaded (asking would load it).
    pub fn save(&self, v6: bool, table: &str) -> Result<String, FirewallError> {
        if self.variant == Variant::Legacy && !self.runner.legacy_table_loaded(v6, table) {
            return Ok(String::new());
        }
        self.runner
            .run(&self.tool(v6, "save"), &["-t", table], None)
    }

    /// Makes `owned` hold `want` in one family (see [`restore_script`]); whether it wrote.
    pub fn sync(
        &self,
        v6: bool,
        owned: Owned<'_>,
        want: Option<&[Vec<String>]>,
    ) -> Result<bool, FirewallError> {
        let present = read_owned(&self.save(v6, owned.table)?, owned);
        match restore_script(owned, &present, want) {
            None => Ok(false),
            Some(text) => {
                self.runner.run(
                    &self.tool(v6, "restore"),
                    &["--noflush", "--wait"],
                    Some(&text),
                )?;
                Ok(true)
            }
        }
    }
}

const MASQUERADE: Owned<'static> = Owned {
    table: "nat",
    chains: &[CHAIN],
    hooks: &[HOOK],
};

impl NatTable for Iptables {
    fn backend(&self) -> Backend {
        match self.variant {
            Variant::Legacy => Backend::IptablesLegacy,
            Variant::Nft => Backend::IptablesNft,
        }
    }

    fn apply(&mut self, plan: Option<&MasqueradePlan>) -> Result<usize, FirewallError> {
        let mut written = 0;
        for v6 in [false, true] {
            let want = plan
                .map(|p| vec![render(p, v6)])
                .filter(|rules| !rules[0].is_empty());
            written += usize::from(self.sync(v6, MASQUERADE, want.as_deref())?);
        }
        Ok(written)
    }

    fn remove(&mut self) -> Result<bool, FirewallError> {
        Ok(self.apply(None)? > 0)
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

    #[test]
    fn owned_chains_are_read_and_replaced_in_one_script() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:PODNET-MASQ - [0:0]\n\
            -A POSTROUTING -m comment --comment \"podnet masquerade\" -j PODNET-MASQ\n\
            -A POSTROUTING -j KUBE-POSTROUTING\n\
            -A PODNET-MASQ -s 10.244.1.0/24 -j MASQUERADE\nCOMMIT\n";
        let present = read_owned(save, MASQUERADE);
        assert_eq!(present.hooks, [true]);
        assert_eq!(
            present.chains,
            [Some(vec![
                "-A PODNET-MASQ -s 10.244.1.0/24 -j MASQUERADE".to_string()
            ])]
        );
        // Same rules: nothing to write.
        let same = vec![vec![
            "-A PODNET-MASQ -s 10.244.1.0/24 -j MASQUERADE".to_string(),
        ]];
        assert_eq!(restore_script(MASQUERADE, &present, Some(&same)), None);
        // Other rules: the chain is declared (emptied) and refilled; the hook stays.
        let other = vec![vec![
            "-A PODNET-MASQ -s 10.244.2.0/24 -j MASQUERADE".to_string(),
        ]];
        assert_eq!(
            restore_script(MASQUERADE, &present, Some(&other)).as_deref(),
            Some(
                "*nat\n:PODNET-MASQ - [0:0]\n-A PODNET-MASQ -s 10.244.2.0/24 -j MASQUERADE\nCOMMIT\n"
            )
        );
        // Removal: hook deleted, chain emptied and deleted.
        assert_eq!(
            restore_script(MASQUERADE, &present, None).as_deref(),
            Some(
                "*nat\n-D POSTROUTING -m comment --comment \"podnet masquerade\" -j PODNET-MASQ\n:PODNET-MASQ - [0:0]\n-X PODNET-MASQ\nCOMMIT\n"
            )
        );
        // Nothing there, nothing wanted: no script.
        assert_eq!(
            restore_script(MASQUERADE, &read_owned("*nat\nCOMMIT\n", MASQUERADE), None),
            None
        );
        // A missing hook is added back with the rules.
        let no_hook = read_owned(
            &save.replace(
                "-A POSTROUTING -m comment --comment \"podnet masquerade\" -j PODNET-MASQ\n",
                "",
            ),
            MASQUERADE,
        );
        assert!(
            restore_script(MASQUERADE, &no_hook, Some(&same)).is_some_and(|s| s.contains(HOOK))
        );
    }

    #[test]
    fn hooks_are_recognised_whatever_the_match_order() {
        let hook = "-A OUTPUT -m comment --comment \"podnet hostports\" ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j PODNET-HOSTPORTS";
        assert_eq!(
            hook_parts(hook),
            (
                "-A OUTPUT ",
                " -j PODNET-HOSTPORTS",
                "--comment \"podnet hostports\""
            )
        );
        let owned = Owned {
            table: "nat",
            chains: &["PODNET-HOSTPORTS"],
            hooks: &[hook],
        };
        let saved = "-A OUTPUT ! -d 127.0.0.0/8 -m comment --comment \"podnet hostports\" -m addrtype --dst-type LOCAL -j PODNET-HOSTPORTS";
        assert_eq!(read_owned(saved, owned).hooks, [true]);
        assert_eq!(
            read_owned("-A OUTPUT -j PODNET-HOSTPORTS", owned).hooks,
            [false],
            "not podnet's comment"
        );
    }
}
