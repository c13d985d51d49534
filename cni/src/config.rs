//! The plugin's inputs — the CNI_* environment and the network configuration on stdin —
//! validated before anything is touched, and the result it prints.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use podnet_contract::{DEFAULT_BRIDGE, DEFAULT_IPAM_DIR, PLUGIN_TYPE, PluginConf};
use podnet_firewall::Backend;
use podnet_firewall::hostports::PortMapping;

use crate::error::{CniError, Code};

/// Versions this plugin speaks; results are printed in the request's version.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// Largest stdin accepted: configurations are a few KiB; anything larger is refused.
pub const MAX_STDIN: usize = 1 << 20;

/// The CNI verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify an attachment.
    Check,
    /// Report supported versions.
    Version,
    /// Release everything not in the valid attachments.
    Gc,
    /// Report readiness.
    Status,
}

/// The CNI_* environment of one invocation.
#[derive(Clone, Debug)]
pub struct Env {
    /// The verb.
    pub command: Command,
    /// CNI_CONTAINERID (validated; empty for VERSION, GC and STATUS).
    pub container_id: String,
    /// CNI_NETNS (may be empty for DEL).
    pub netns: Option<PathBuf>,
    /// CNI_IFNAME (validated).
    pub ifname: String,
    /// CNI_ARGS as key/value pairs, in order (validated; see [`parse_cni_args`]).
    pub args: Vec<(String, String)>,
}

/// The most CNI_ARGS may hold.
pub const MAX_CNI_ARGS: usize = 64 * 1024;

/// Parses CNI_ARGS: `KEY=VALUE` pairs separated by `;` (SPEC.md). Keys are
/// alphanumeric with `_`, `-` and `.`; values have no control characters. Empty
/// segments (`a=1;;b=2`, a trailing `;`) are allowed. Keys podnet does not use
/// (everything but the `K8S_POD_*` ones and `IgnoreUnknown`) are accepted and ignored:
/// podnet has no per-pod options, so no key can change what it does.
pub fn parse_cni_args(raw: &str) -> Result<Vec<(String, String)>, String> {
    if raw.len() > MAX_CNI_ARGS {
        return Err(format!("{} bytes; at most {MAX_CNI_ARGS}", raw.len()));
    }
    let mut out = Vec::new();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let shown: String = pair.chars().take(64).collect();
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!("{shown:?} is not KEY=VALUE"));
        };
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(format!("{shown:?}: invalid key"));
        }
        if v.chars().any(char::is_control) {
            return Err(format!("{shown:?}: control character in the value"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn valid_id(s: &str) -> bool {
    // SPEC.md: "^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$" — no '/', so never a path.
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Whether `s` can name a network interface.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

impl Env {
    /// Reads and validates the environment `get` returns for each variable.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let bad = |what: &str, why: String| {
            CniError::new(Code::InvalidEnvironment, format!("invalid {what}"), why)
        };
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("GC") => Command::Gc,
            Some("STATUS") => Command::Status,
            Some(other) => return Err(bad("CNI_COMMAND", format!("unknown command {other:?}"))),
            None => return Err(bad("CNI_COMMAND", "CNI_COMMAND is not set".into())),
        };
        // SPEC.md lists what each verb requires: ADD and CHECK the container ID, netns
        // and ifname; DEL the container ID and ifname (netns optional); VERSION, GC and
        // STATUS none of them. Only the verbs that use a variable read (and validate)
        // it: libcni probes VERSION with placeholders (CNI_NETNS=dummy and the like),
        // and whatever else a runtime sets is never carried along unvalidated.
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let (container_id, ifname, netns, args) = if needs_attachment {
            let container_id = get("CNI_CONTAINERID").unwrap_or_default();
            let ifname = get("CNI_IFNAME").unwrap_or_default();
            let netns = get("CNI_NETNS")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from);
            if !valid_id(&container_id) {
                return Err(bad(
                    "CNI_CONTAINERID",
                    format!("{container_id:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"),
                ));
            }
            if !valid_ifname(&ifname) {
                return Err(bad(
                    "CNI_IFNAME",
                    format!(
                        "{ifname:?} must be 1-15 characters without '/', ':' or whitespace, and not '.' or '..'"
                    ),
                ));
            }
            if command != Command::Del && netns.is_none() {
                return Err(bad(
                    "CNI_NETNS",
                    "CNI_NETNS is required for ADD and CHECK".into(),
                ));
            }
            if let Some(ns) = &netns
                && !ns.is_absolute()
            {
                return Err(bad(
                    "CNI_NETNS",
                    format!("{} is not an absolute path", ns.display()),
                ));
            }
            let args = parse_cni_args(&get("CNI_ARGS").unwrap_or_default())
                .map_err(|why| bad("CNI_ARGS", why))?;
            (container_id, ifname, netns, args)
        } else {
            (String::new(), String::new(), None, Vec::new())
        };
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            args,
        })
    }
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// The container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

/// The network configuration as a runtime hands it over: podnet's own fields are the
/// conflist entry podnet-daemon writes ([`PluginConf`], shared with it), plus what the
/// runtime adds.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(flatten)]
    plugin: PluginConf,
    dns: Option<Value>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<Attachment>>,
    ipam: Option<Value>,
    runtime_config: Option<Value>,
}

/// The validated network configuration.
#[derive(Clone, Debug)]
pub struct NetConf {
    /// The request's CNI version (results are printed in it).
    pub cni_version: String,
    /// The network name.
    pub name: String,
    /// The bridge.
    pub bridge: String,
    /// The node's pod CIDRs, at most one per family, IPv4 first.
    pub pod_cidrs: Vec<IpNet>,
    /// MTU; `None`: the default-route interface's.
    pub mtu: Option<u32>,
    /// Lease directory.
    pub data_dir: PathBuf,
    /// DNS settings passed through to the result.
    pub dns: Option<Value>,
    /// The previous result (CHECK, DEL).
    pub prev_result: Option<Value>,
    /// GC: the attachments to keep; `None` when the runtime sent no list.
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The firewall for hostPort mappings (the daemon's choice); `None`: detect.
    pub firewall: Option<Backend>,
    /// `runtimeConfig.portMappings`: the pod's hostPorts.
    pub port_mappings: Vec<PortMapping>,
}

/// The version in a configuration, for error JSON, even when the rest is unusable.
pub fn version_hint(stdin: &[u8]) -> String {
    serde_json::from_slice::<HashMap<String, Value>>(stdin)
        .ok()
        .and_then(|m| {
            m.get("cniVersion")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_string())
}

impl NetConf {
    /// Parses and validates the configuration from stdin.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        if stdin.len() > MAX_STDIN {
            return Err(CniError::new(
                Code::Decode,
                "network configuration too large",
                format!("{} bytes; at most {MAX_STDIN}", stdin.len()),
            ));
        }
        let raw: RawConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                Code::Decode,
                "cannot decode the network configuration",
                e.to_string(),
            )
        })?;
        let invalid = |what: &str, why: String| {
            CniError::new(Code::InvalidConfig, format!("invalid {what}"), why)
        };
        let cni_version = raw.cni_version.unwrap_or_default();
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                "incompatible CNI version",
                format!(
                    "{cni_version:?} is not one of {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if raw.ipam.is_some() {
            return Err(CniError::new(
                Code::UnsupportedField,
                "unsupported field ipam",
                "podnet-cni has built-in IPAM from podCIDRs; remove the ipam section",
            ));
        }
        let name = raw.name.unwrap_or_default();
        if !valid_id(&name) {
            return Err(invalid(
                "name",
                format!("{name:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"),
            ));
        }
        if let Some(t) = &raw.plugin.plugin_type
            && t != PLUGIN_TYPE
        {
            return Err(invalid(
                "type",
                format!("{t:?}: this plugin is {PLUGIN_TYPE}"),
            ));
        }
        let bridge = raw
            .plugin
            .bridge
            .unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        if !valid_ifname(&bridge) {
            return Err(invalid(
                "bridge",
                format!("{bridge:?} is not a valid interface name"),
            ));
        }
        let mut pod_cidrs = Vec::new();
        for c in raw.plugin.pod_cidrs.unwrap_or_default() {
            let net: IpNet = c
                .parse()
                .map_err(|_| invalid("podCIDRs", format!("{c:?} is not a CIDR")))?;
            if net != net.trunc() {
                return Err(invalid("podCIDRs", format!("{c:?} has host bits set")));
            }
            let max_prefix = if matches!(net, IpNet::V4(_)) { 30 } else { 126 };
            if net.prefix_len() > max_prefix {
                return Err(invalid(
                    "podCIDRs",
                    format!("{c:?} is too small for a gateway and a pod"),
                ));
            }
            if pod_cidrs
                .iter()
                .any(|p: &IpNet| p.addr().is_ipv4() == net.addr().is_ipv4())
            {
                return Err(invalid("podCIDRs", "at most one CIDR per IP family".into()));
            }
            pod_cidrs.push(net);
        }
        if pod_cidrs.is_empty() {
            return Err(invalid(
                "podCIDRs",
                "at least one pod CIDR is required".into(),
            ));
        }
        pod_cidrs.sort_by_key(|n| !n.addr().is_ipv4());
        if let Some(mtu) = raw.plugin.mtu
            && !(576..=65535).contains(&mtu)
        {
            return Err(invalid("mtu", format!("{mtu} is outside 576..65535")));
        }
        let data_dir = PathBuf::from(
            raw.plugin
                .data_dir
                .unwrap_or_else(|| DEFAULT_IPAM_DIR.to_string()),
        );
        if !data_dir.is_absolute() {
            return Err(invalid(
                "dataDir",
                format!("{} is not an absolute path", data_dir.display()),
            ));
        }
        let firewall = raw
            .plugin
            .firewall
            .as_deref()
            .map(str::parse::<Backend>)
            .transpose()
            .map_err(|why| invalid("firewall", why))?;
        let port_mappings = match raw.runtime_config.as_ref().map(|r| &r["portMappings"]) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .map(PortMapping::from_runtime)
                .collect::<Result<_, _>>()
                .map_err(|why| invalid("runtimeConfig.portMappings", why))?,
            Some(other) => {
                return Err(invalid(
                    "runtimeConfig.portMappings",
                    format!("{other} is not a list"),
                ));
            }
        };
        Ok(Self {
            cni_version,
            name,
            bridge,
            pod_cidrs,
            mtu: raw.plugin.mtu,
            data_dir,
            dns: raw.dns,
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments.or(raw.attachments),
            firewall,
            port_mappings,
        })
    }

    /// The gateway of each CIDR: its first address.
    pub fn gateway(net: &IpNet) -> IpAddr {
        podnet_contract::gateway(net)
    }
}

/// An interface in a result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResultInterface {
    /// Its name.
    pub name: String,
    /// Its MAC address.
    pub mac: String,
    /// The namespace it is in (pod side only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sandbox: Option<String>,
}

/// The outcome of ADD, convertible to every supported version.
#[derive(Clone, Debug)]
pub struct AddResult {
    /// bridge, host veth, pod veth.
    pub interfaces: Vec<ResultInterface>,
    /// (address/prefix, gateway) per family, on the pod interface (index 2).
    pub ips: Vec<(IpNet, IpAddr)>,
    /// Passed through from the configuration.
    pub dns: Option<Value>,
}

impl AddResult {
    /// The result JSON in `version`.
    pub fn to_json(&self, version: &str) -> Value {
        let legacy = version.starts_with("0.");
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|(addr, gw)| {
                let mut ip = serde_json::json!({"address": addr.to_string(), "gateway": gw.to_string(), "interface": 2});
                if legacy {
                    ip["version"] = Value::from(if addr.addr().is_ipv4() { "4" } else { "6" });
                }
                ip
            })
            .collect();
        let routes: Vec<Value> = self
            .ips
            .iter()
            .map(|(addr, gw)| {
                let dst = if addr.addr().is_ipv4() {
                    "0.0.0.0/0"
                } else {
                    "::/0"
                };
                serde_json::json!({"dst": dst, "gw": gw.to_string()})
            })
            .collect();
        let mut out = serde_json::json!({
            "cniVersion": version,
            "interfaces": self.interfaces,
            "ips": ips,
            "routes": routes,
        });
        out["dns"] = self.dns.clone().unwrap_or_else(|| serde_json::json!({}));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn version_answers_libcnis_probe_with_placeholders() {
        // libcni validates a network by calling VERSION with CNI_NETNS=dummy,
        // CNI_IFNAME=dummy, CNI_PATH=dummy (older skel versions required them set).
        let e = env(&[
            ("CNI_COMMAND", "VERSION"),
            ("CNI_NETNS", "dummy"),
            ("CNI_IFNAME", "dummy"),
            ("CNI_PATH", "dummy"),
            ("CNI_ARGS", "not a pair"),
        ]);
        assert!(e.is_ok_and(|e| e.netns.is_none() && e.args.is_empty()));
        for cmd in ["GC", "STATUS"] {
            assert!(
                env(&[
                    ("CNI_COMMAND", cmd),
                    ("CNI_NETNS", "dummy"),
                    ("CNI_PATH", "/opt/cni/bin")
                ])
                .is_ok(),
                "{cmd}"
            );
        }
    }

    #[test]
    fn verbs_without_an_attachment_carry_no_container_id() {
        // Found by the cni_env fuzz target: GC kept an unvalidated CNI_CONTAINERID.
        for cmd in ["GC", "STATUS", "VERSION"] {
            let e = env(&[
                ("CNI_COMMAND", cmd),
                ("CNI_CONTAINERID", "../../etc"),
                ("CNI_IFNAME", "a/b"),
            ]);
            assert!(
                e.is_ok_and(|e| e.container_id.is_empty() && e.ifname.is_empty()),
                "{cmd}"
            );
        }
    }

    #[test]
    fn cni_args_are_parsed_and_malformed_ones_refused() {
        let base = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
        ];
        let with = |args: &str| {
            let mut v = base.to_vec();
            v.push(("CNI_ARGS", args));
            env(&v)
        };
        let ok = with("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;;")
            .map_err(|e| e.msg)
            .map(|e| e.args);
        assert_eq!(
            ok,
            Ok(vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), "default".into()),
                ("K8S_POD_NAME".into(), "web-0".into()),
            ])
        );
        assert!(with("").is_ok_and(|e| e.args.is_empty()));
        let huge = "A=".to_string() + &"x".repeat(MAX_CNI_ARGS);
        for bad in ["novalue", "=v", "a b=1", "k=\u{1}", "../x=1", huge.as_str()] {
            let e = with(bad).err();
            assert!(
                e.is_some_and(|e| e.code == Code::InvalidEnvironment),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn path_like_ids_and_ifnames_are_refused() {
        for id in ["../../etc", "a/b", "", "-x", "a b"] {
            let e = env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", id),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/x"),
            ]);
            assert_eq!(
                e.err().map(|e| e.code),
                Some(Code::InvalidEnvironment),
                "{id}"
            );
        }
        for ifname in ["", ".", "..", "a/b", "a:b", "has space", "sixteen-chars-xx"] {
            let e = env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", ifname),
                ("CNI_NETNS", "/x"),
            ]);
            assert_eq!(
                e.err().map(|e| e.code),
                Some(Code::InvalidEnvironment),
                "{ifname:?}"
            );
        }
        assert!(
            env(&[("CNI_COMMAND", "GC")]).is_ok(),
            "GC needs no attachment variables"
        );
        assert!(
            env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0")
            ])
            .is_ok()
        );
        assert_eq!(
            env(&[("CNI_COMMAND", "FROB")]).err().map(|e| e.code),
            Some(Code::InvalidEnvironment)
        );
    }

    #[test]
    fn the_conflist_the_daemon_writes_is_what_the_plugin_reads() {
        let list = podnet_contract::ConfList::for_node(
            &["10.244.1.0/24".into(), "fd00:10:244:1::/64".into()],
            1450,
            "podnet0",
            "/run/podnet/ipam",
            Some("iptables-legacy"),
        );
        let conf = list.plugin_config(0).unwrap_or_default();
        let parsed = NetConf::parse(conf.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.name, "podnet");
        assert_eq!(parsed.cni_version, "1.1.0");
        assert_eq!(parsed.bridge, "podnet0");
        assert_eq!(parsed.mtu, Some(1450));
        assert_eq!(parsed.data_dir, PathBuf::from("/run/podnet/ipam"));
        let cidrs: Vec<String> = parsed.pod_cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(cidrs, ["10.244.1.0/24", "fd00:10:244:1::/64"]);
        assert_eq!(parsed.firewall, Some(Backend::IptablesLegacy));
        assert!(parsed.port_mappings.is_empty());
    }

    #[test]
    fn port_mappings_come_from_runtime_config_and_are_validated() {
        let base = r#"{"cniVersion":"1.1.0","name":"podnet","podCIDRs":["10.244.1.0/24"]"#;
        let conf = NetConf::parse(
            format!(r#"{base},"runtimeConfig":{{"portMappings":[{{"hostPort":8080,"containerPort":80,"protocol":"udp"}}]}}}}"#).as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(conf.port_mappings.len(), 1);
        assert_eq!(conf.port_mappings[0].host_port, 8080);
        for bad in [
            format!(
                r#"{base},"runtimeConfig":{{"portMappings":[{{"hostPort":0,"containerPort":80}}]}}}}"#
            ),
            format!(r#"{base},"runtimeConfig":{{"portMappings":{{"hostPort":1}}}}}}"#),
            format!(r#"{base},"firewall":"pf"}}"#),
        ] {
            assert_eq!(
                NetConf::parse(bad.as_bytes()).err().map(|e| e.code),
                Some(Code::InvalidConfig),
                "{bad}"
            );
        }
    }

    #[test]
    fn configs_are_validated_with_the_right_codes() {
        let ok = br#"{"cniVersion":"1.1.0","name":"podnet","type":"podnet-cni","podCIDRs":["fd00::/64","10.244.1.0/24"],"futureField":1}"#;
        let conf = NetConf::parse(ok).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(conf.pod_cidrs[0].to_string(), "10.244.1.0/24", "IPv4 first");
        assert_eq!(conf.bridge, "podnet0");
        let cases: &[(&[u8], Code)] = &[
            (b"{not json", Code::Decode),
            (br#"{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"ipam":{"type":"host-local"}}"#, Code::UnsupportedField),
            (
                br#"{"cniVersion":"9.9.9","name":"n","podCIDRs":["10.0.0.0/24"]}"#,
                Code::IncompatibleVersion,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"../x","podCIDRs":["10.0.0.0/24"]}"#,
                Code::InvalidConfig,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.1/24"]}"#,
                Code::InvalidConfig,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24","10.1.0.0/24"]}"#,
                Code::InvalidConfig,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","podCIDRs":[]}"#,
                Code::InvalidConfig,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/31"]}"#,
                Code::InvalidConfig,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"mtu":10}"#,
                Code::InvalidConfig,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"dataDir":"rel"}"#,
                Code::InvalidConfig,
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","podCIDRs":["10.0.0.0/24"],"bridge":"a/b"}"#,
                Code::InvalidConfig,
            ),
        ];
        for (input, code) in cases {
            let got = NetConf::parse(input).err().map(|e| e.code);
            assert_eq!(got, Some(*code), "{}", String::from_utf8_lossy(input));
        }
        let huge = vec![b' '; MAX_STDIN + 1];
        assert_eq!(
            NetConf::parse(&huge).err().map(|e| e.code),
            Some(Code::Decode)
        );
    }

    #[test]
    fn results_follow_the_requested_version() {
        let r = AddResult {
            interfaces: vec![],
            ips: vec![(
                "10.244.1.5/24".parse().unwrap_or_else(|_| IpNet::default()),
                "10.244.1.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            )],
            dns: None,
        };
        assert_eq!(r.to_json("0.3.1")["ips"][0]["version"], "4");
        assert!(r.to_json("1.0.0")["ips"][0].get("version").is_none());
        assert_eq!(r.to_json("1.1.0")["cniVersion"], "1.1.0");
        assert_eq!(r.to_json("1.1.0")["routes"][0]["dst"], "0.0.0.0/0");
    }
}
