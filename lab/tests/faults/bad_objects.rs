//! Malformed PodNetworks and NodeRoutes sent with client-side validation off: the API
//! server refuses each naming the field, unknown fields are pruned, nothing crashes.

use anyhow::{bail, ensure};
use podnet_lab::chart;
use podnet_lab::cluster::LabState;

use crate::support::*;

/// Runs the scenario.
pub async fn run(state: &mut LabState) -> anyhow::Result<Outcome> {
    let kc = state.control_plane.kubeconfig.clone();
    let refused = [
        (
            r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"bad1"},"spec":{"cidrs":["10.1.2.3/16"]}}"#,
            "canonical",
        ),
        (
            r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"bad2"},"spec":{"cidrs":["not-a-cidr"]}}"#,
            "cidrs",
        ),
        (
            r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"bad3"},"spec":{"cidrs":"10.0.0.0/8"}}"#,
            "cidrs",
        ),
        (
            r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"bad4"},"spec":{"cidrs":["10.0.0.0/8"],"nodeMaskSize":{"ipv4":4}}}"#,
            "ipv4",
        ),
        (
            r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"bad5"},"spec":{"cidrs":["10.0.0.0/8"],"mtu":-5}}"#,
            "mtu",
        ),
        (
            r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"bad6"},"spec":{"cidrs":["10.0.0.0/16","10.0.1.0/24"]}}"#,
            "overlap",
        ),
        (
            r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"NodeRoute","metadata":{"name":"node-1x"},"spec":{"nodeName":"node-2"}}"#,
            "named after its node",
        ),
        (
            r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"bad7"},"spec":{"cidrs":[]}}"#,
            "cidrs",
        ),
    ];
    let big: Vec<String> = (0..10_000)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    let huge = serde_json::json!({"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"bad8"},"spec":{"cidrs": big}}).to_string();
    let mut n = 0;
    for (doc, expect) in refused
        .iter()
        .map(|(d, e)| (d.to_string(), *e))
        .chain([(huge, "cidrs")])
    {
        match chart::kubectl(&kc, &["apply", "--validate=false", "-f", "-"], &doc) {
            Ok(out) => bail!(
                "the API server accepted {}: {out}",
                &doc[..doc.len().min(200)]
            ),
            Err(e) => {
                let msg = e.to_string();
                ensure!(
                    msg.contains(expect) && msg.contains("Invalid"),
                    "refusal of {} does not say {expect:?}: {msg}",
                    &doc[..doc.len().min(200)]
                );
            }
        }
        n += 1;
    }
    // Unknown fields, with validation off, are pruned (never stored), the object accepted.
    chart::kubectl(
        &kc,
        &["create", "--validate=false", "-f", "-"],
        r#"{"apiVersion":"podnet.dev/v1alpha1","kind":"PodNetwork","metadata":{"name":"extra"},"spec":{"cidrs":["10.251.0.0/16"],"nodeSelector":{"matchLabels":{"pool":"none"}},"bogus":{"x":1}},"status":{"hacked":true}}"#,
    )?;
    let stored: serde_json::Value = serde_json::from_str(&chart::kubectl(
        &kc,
        &["get", "pn", "extra", "-o", "json"],
        "",
    )?)?;
    ensure!(
        stored["spec"].get("bogus").is_none() && stored["status"].get("hacked").is_none(),
        "unknown fields stored: {stored}"
    );
    chart::kubectl(&kc, &["delete", "pn", "extra"], "")?;
    ensure!(alive(state.operator_pid), "podnet-operator exited");
    for node in &state.nodes {
        ensure!(alive(node.daemon_pid), "{}'s daemon exited", node.name);
    }
    Ok(Outcome::default()
        .count(
            "malformed objects refused by the API server naming the field (--validate=false)",
            n,
        )
        .held("unknown fields pruned; operator and daemons unaffected"))
}
