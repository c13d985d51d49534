//! The CNI configuration list podnet-daemon writes for podnet-cni: one type, serialized
//! by the daemon and deserialized by the plugin, so the two cannot drift apart.

use serde::{Deserialize, Serialize};

use crate::{CONFLIST_CNI_VERSION, NETWORK_NAME, PLUGIN_TYPE};

/// The podnet plugin's entry in the conflist: the fields podnet-cni reads from its
/// network configuration. Values are kept as the strings of the wire format; the plugin
/// validates them (a runtime may hand it anything).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginConf {
    /// Always [`PLUGIN_TYPE`] in what the daemon writes.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub plugin_type: Option<String>,
    /// The node bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// The node's pod CIDRs, at most one per IP family.
    #[serde(rename = "podCIDRs", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidrs: Option<Vec<String>>,
    /// MTU of the bridge and the pod interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The lease directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// The firewall backend the node's daemon chose (`nftables`, `iptables-nft`,
    /// `iptables-legacy`): where the plugin programs hostPort mappings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<String>,
    /// The CNI capabilities the plugin asks the runtime for (`portMappings`: the
    /// runtime passes each pod's hostPorts in `runtimeConfig.portMappings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<std::collections::BTreeMap<String, bool>>,
}

/// A CNI configuration list (`*.conflist`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfList {
    /// The CNI version of the list.
    pub cni_version: String,
    /// The network name.
    pub name: String,
    /// The plugins, in chain order.
    pub plugins: Vec<PluginConf>,
}

impl ConfList {
    /// The list the daemon writes for a node: podnet-cni alone, with the node's pod
    /// CIDRs, MTU, bridge, lease directory and firewall, asking for port mappings.
    pub fn for_node(
        pod_cidrs: &[String],
        mtu: u32,
        bridge: &str,
        data_dir: &str,
        firewall: Option<&str>,
    ) -> Self {
        Self {
            cni_version: CONFLIST_CNI_VERSION.to_string(),
            name: NETWORK_NAME.to_string(),
            plugins: vec![PluginConf {
                plugin_type: Some(PLUGIN_TYPE.to_string()),
                bridge: Some(bridge.to_string()),
                pod_cidrs: Some(pod_cidrs.to_vec()),
                mtu: Some(mtu),
                data_dir: Some(data_dir.to_string()),
                firewall: firewall.map(str::to_string),
                capabilities: Some([("portMappings".to_string(), true)].into()),
            }],
        }
    }

    /// The file's text: pretty JSON with a final newline (stable, so an unchanged list
    /// renders byte for byte the same and is never rewritten).
    pub fn render(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Parses a conflist's text.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The podnet plugin's entry, if the list has one.
    pub fn podnet(&self) -> Option<&PluginConf> {
        self.plugins
            .iter()
            .find(|p| p.plugin_type.as_deref() == Some(PLUGIN_TYPE))
    }

    /// The network configuration a runtime hands the plugin at `index`: the list's
    /// `cniVersion` and `name` added to the plugin's own entry (as libcni does).
    pub fn plugin_config(&self, index: usize) -> Option<serde_json::Value> {
        let mut v = serde_json::to_value(self.plugins.get(index)?).ok()?;
        let obj = v.as_object_mut()?;
        obj.insert("cniVersion".into(), self.cni_version.clone().into());
        obj.insert("name".into(), self.name.clone().into());
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_feeds_the_plugin_what_a_runtime_would() {
        let list = ConfList::for_node(
            &["10.244.1.0/24".into(), "fd00:10:244:1::/64".into()],
            1450,
            "podnet0",
            "/run/podnet/ipam",
            Some("nftables"),
        );
        let text = list.render();
        assert!(text.ends_with('\n'));
        assert_eq!(ConfList::parse(&text).ok(), Some(list.clone()));
        assert_eq!(list.render(), text, "rendering is stable");
        let conf = list.plugin_config(0).unwrap_or_default();
        assert_eq!(conf["type"], "podnet-cni");
        assert_eq!(conf["cniVersion"], "1.1.0");
        assert_eq!(conf["name"], "podnet");
        assert_eq!(conf["podCIDRs"][1], "fd00:10:244:1::/64");
        assert_eq!(conf["mtu"], 1450);
        assert_eq!(conf["firewall"], "nftables");
        assert_eq!(conf["capabilities"]["portMappings"], true);
        assert!(list.podnet().is_some());
    }
}
