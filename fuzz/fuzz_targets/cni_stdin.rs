//! The network configuration podnet-cni reads from stdin: parsing and validation must
//! answer every input with a configuration or a CNI error, never a panic; a parsed
//! configuration always renders a result in its own version, and written back as the
//! conflist entry podnet-daemon writes (the shared contract type) it parses to the same
//! configuration: the two sides of the contract agree on every value they accept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podnet_cni::config::{NetConf, version_hint};

fuzz_target!(|data: &[u8]| {
    let _ = version_hint(data);
    match NetConf::parse(data) {
        Ok(conf) => {
            for net in &conf.pod_cidrs {
                let _ = NetConf::gateway(net);
            }
            let cidrs: Vec<String> = conf.pod_cidrs.iter().map(ToString::to_string).collect();
            let mut list = podnet_contract::ConfList::for_node(
                &cidrs,
                conf.mtu.unwrap_or(1500),
                &conf.bridge,
                &conf.data_dir.display().to_string(),
                conf.firewall.map(|b| b.as_str()),
            );
            list.cni_version = conf.cni_version.clone();
            list.name = conf.name.clone();
            let text = list
                .plugin_config(0)
                .map(|v| v.to_string())
                .unwrap_or_default();
            let again = NetConf::parse(text.as_bytes()).unwrap_or_else(|e| {
                panic!("the daemon's rendering of an accepted config is refused: {e}\n{text}")
            });
            assert_eq!(again.pod_cidrs, conf.pod_cidrs);
            assert_eq!(again.bridge, conf.bridge);
            assert_eq!(again.data_dir, conf.data_dir);
            assert_eq!(again.name, conf.name);
            assert_eq!(again.cni_version, conf.cni_version);
            assert_eq!(again.mtu, Some(conf.mtu.unwrap_or(1500)));
            assert_eq!(again.firewall, conf.firewall);
        }
        // The error JSON a runtime reads must always serialize.
        Err(e) => {
            let _ = e.to_json(&version_hint(data));
        }
    }
});
