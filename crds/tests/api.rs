//! The generated CRDs on a real kube-apiserver: installation, the examples, the
//! validation the API server enforces (with its messages), printer columns, `kubectl
//! explain`, and condition merging under server-side apply.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use podnet_lab::ControlPlane;
use podnet_lab::testing::{ApiTest, chart_crds_dir, run_api_tests};

fn main() -> ExitCode {
    run_api_tests(vec![
        ApiTest::new(
            "crds_are_established_and_reapplying_changes_nothing",
            |cp| async move {
                let out = kubectl(
                    &cp,
                    &[
                        "apply",
                        "--server-side",
                        "-f",
                        &chart_crds_dir().display().to_string(),
                    ],
                )?;
                // podnet's two and upstream's ClusterNetworkPolicy (vendored).
                ensure!(
                    out.matches("serverside-applied").count() == 3,
                    "unexpected apply output: {out}"
                );
                let names = kubectl(
                    &cp,
                    &["get", "crd", "-o", "jsonpath={.items[*].metadata.name}"],
                )?;
                ensure!(
                    names.contains("podnetworks.podnet.dev")
                        && names.contains("noderoutes.podnet.dev")
                        && names.contains("clusternetworkpolicies.policy.networking.k8s.io"),
                    "{names}"
                );
                let shorts = kubectl(
                    &cp,
                    &["api-resources", "--api-group=podnet.dev", "--no-headers"],
                )?;
                ensure!(
                    shorts
                        .lines()
                        .any(|l| l.starts_with("noderoutes") && l.contains(" nr ")),
                    "{shorts}"
                );
                ensure!(
                    shorts
                        .lines()
                        .any(|l| l.starts_with("podnetworks") && l.contains(" pn ")),
                    "{shorts}"
                );
                ensure!(
                    shorts.lines().count() == 2
                        && shorts
                            .lines()
                            .all(|l| l.split_whitespace().any(|w| w == "false")),
                    "podnet resources must be cluster-scoped: {shorts}"
                );
                Ok(())
            },
        ),
        ApiTest::new("examples_are_accepted", |cp| async move {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
            let mut count = 0;
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "yaml") {
                    kubectl(&cp, &["apply", "-f", &path.display().to_string()])
                        .with_context(|| format!("{} rejected", path.display()))?;
                    count += 1;
                }
            }
            ensure!(count >= 3, "expected at least 3 examples, found {count}");
            let v6 = kubectl(
                &cp,
                &[
                    "get",
                    "pn",
                    "v6-large",
                    "-o",
                    "jsonpath={.spec.nodeMaskSize.ipv6}",
                ],
            )?;
            ensure!(v6 == "64", "nodeMaskSize.ipv6 = {v6}");
            // Defaults are applied by the API server.
            let v4 = kubectl(
                &cp,
                &[
                    "get",
                    "pn",
                    "v6-large",
                    "-o",
                    "jsonpath={.spec.nodeMaskSize.ipv4}",
                ],
            )?;
            ensure!(v4 == "24", "defaulted nodeMaskSize.ipv4 = {v4}");
            Ok(())
        }),
        ApiTest::new(
            "invalid_podnetworks_are_rejected_with_clear_messages",
            |cp| async move {
                let cases: &[(&str, &str, &str)] = &[
                    (
                        "malformed-cidr",
                        r#"cidrs: ["10.244.0.0/33"]"#,
                        "spec.cidrs[0]: Invalid value: \"10.244.0.0/33\": must be a CIDR in canonical form",
                    ),
                    (
                        "not-a-cidr",
                        r#"cidrs: ["banana"]"#,
                        "must be a CIDR in canonical form, such as 10.244.0.0/16",
                    ),
                    (
                        "host-bits",
                        r#"cidrs: ["10.244.0.1/16"]"#,
                        "host bits must be zero",
                    ),
                    (
                        "no-cidrs",
                        r#"cidrs: []"#,
                        "spec.cidrs: Invalid value: 0: spec.cidrs in body should have at least 1 items",
                    ),
                    (
                        "v4-mask-high",
                        "cidrs: [\"10.244.0.0/16\"]\n  nodeMaskSize: {ipv4: 31}",
                        "spec.nodeMaskSize.ipv4 in body should be less than or equal to 30",
                    ),
                    (
                        "v4-mask-low",
                        "cidrs: [\"10.0.0.0/8\"]\n  nodeMaskSize: {ipv4: 4}",
                        "spec.nodeMaskSize.ipv4 in body should be greater than or equal to 8",
                    ),
                    (
                        "v6-mask-high",
                        "cidrs: [\"fd00::/56\"]\n  nodeMaskSize: {ipv6: 127}",
                        "spec.nodeMaskSize.ipv6 in body should be less than or equal to 126",
                    ),
                    (
                        "mask-wider-than-pool",
                        "cidrs: [\"10.244.0.0/16\"]\n  nodeMaskSize: {ipv4: 12}",
                        "every entry of cidrs must be at least as large as the node mask size",
                    ),
                    (
                        "overlap",
                        r#"cidrs: ["10.244.0.0/16", "10.244.128.0/17"]"#,
                        "entries of cidrs must not overlap each other",
                    ),
                    (
                        "duplicate",
                        r#"cidrs: ["10.244.0.0/16", "10.244.0.0/16"]"#,
                        "Duplicate value",
                    ),
                    (
                        "bad-nonmasq",
                        "cidrs: [\"10.244.0.0/16\"]\n  masquerade: {nonMasqueradeCIDRs: [\"198.18.0.0\"]}",
                        "spec.masquerade.nonMasqueradeCIDRs[0]",
                    ),
                    (
                        "tiny-mtu",
                        "cidrs: [\"10.244.0.0/16\"]\n  mtu: 600",
                        "mtu must be 0 (use the node's default-route interface MTU) or at least 1280",
                    ),
                ];
                for (name, spec, want) in cases {
                    let doc = format!(
                        "apiVersion: podnet.dev/v1alpha1\nkind: PodNetwork\nmetadata:\n  name: invalid-{name}\nspec:\n  {spec}\n"
                    );
                    // Client-side validation off: the API server alone must refuse it.
                    let err = kubectl_fails(&cp, &["apply", "--validate=false", "-f", "-"], &doc)
                        .with_context(|| format!("case {name}"))?;
                    ensure!(
                        err.contains(want),
                        "case {name}: expected {want:?} in:\n{err}"
                    );
                }
                Ok(())
            },
        ),
        ApiTest::new(
            "node_mask_size_is_immutable_while_cidrs_may_grow",
            |cp| async move {
                let doc = "apiVersion: podnet.dev/v1alpha1\nkind: PodNetwork\nmetadata:\n  name: immutable-mask\nspec:\n  cidrs: [\"10.10.0.0/16\"]\n  nodeMaskSize: {ipv4: 24}\n";
                kubectl_in(&cp, &["apply", "-f", "-"], doc)?;
                let err = kubectl_fails(
                    &cp,
                    &[
                        "patch",
                        "pn",
                        "immutable-mask",
                        "--type=merge",
                        "-p",
                        r#"{"spec":{"nodeMaskSize":{"ipv4":25}}}"#,
                    ],
                    "",
                )?;
                ensure!(err.contains("nodeMaskSize is immutable"), "{err}");
                kubectl(
                    &cp,
                    &[
                        "patch",
                        "pn",
                        "immutable-mask",
                        "--type=merge",
                        "-p",
                        r#"{"spec":{"cidrs":["10.10.0.0/16","10.11.0.0/16"]}}"#,
                    ],
                )
                .context("adding a CIDR must be accepted")?;
                let mask = kubectl(
                    &cp,
                    &[
                        "get",
                        "pn",
                        "immutable-mask",
                        "-o",
                        "jsonpath={.spec.nodeMaskSize.ipv4}",
                    ],
                )?;
                ensure!(mask == "24", "mask changed to {mask}");
                Ok(())
            },
        ),
        ApiTest::new("invalid_noderoutes_are_rejected", |cp| async move {
            let err = kubectl_fails(
                &cp,
                &["apply", "--validate=false", "-f", "-"],
                "apiVersion: podnet.dev/v1alpha1\nkind: NodeRoute\nmetadata:\n  name: node-x\nspec:\n  nodeName: node-y\n",
            )?;
            ensure!(
                err.contains("metadata.name must equal spec.nodeName"),
                "{err}"
            );
            kubectl_in(
                &cp,
                &["apply", "-f", "-"],
                "apiVersion: podnet.dev/v1alpha1\nkind: NodeRoute\nmetadata:\n  name: node-v\nspec:\n  nodeName: node-v\n",
            )?;
            for (status, want) in [
                (
                    r#"{"status":{"podCIDRs":["10.244.1.7/24"]}}"#,
                    "host bits must be zero",
                ),
                (
                    r#"{"status":{"nodeIPs":["198.18.0.300"]}}"#,
                    "must be an IP address in canonical form",
                ),
                (
                    r#"{"status":{"podCIDRs":["10.244.1.0/24","fd00::/64","10.244.2.0/24"]}}"#,
                    "must have at most 2 items",
                ),
            ] {
                let err = kubectl_fails(
                    &cp,
                    &[
                        "patch",
                        "nr",
                        "node-v",
                        "--subresource=status",
                        "--type=merge",
                        "-p",
                        status,
                    ],
                    "",
                )?;
                ensure!(
                    err.contains(want),
                    "status {status}: expected {want:?} in {err}"
                );
            }
            let err = kubectl_fails(
                &cp,
                &[
                    "patch",
                    "nr",
                    "node-v",
                    "--type=merge",
                    "-p",
                    r#"{"spec":{"nodeName":"other"}}"#,
                ],
                "",
            )?;
            ensure!(err.contains("nodeName is immutable"), "{err}");
            Ok(())
        }),
        ApiTest::new(
            "printer_columns_show_allocation_and_programming",
            |cp| async move {
                kubectl_in(
                    &cp,
                    &["apply", "-f", "-"],
                    "apiVersion: podnet.dev/v1alpha1\nkind: NodeRoute\nmetadata:\n  name: node-cols\nspec:\n  nodeName: node-cols\n",
                )?;
                let status = r#"{"status":{"nodeIPs":["198.18.0.2"],"podCIDRs":["10.244.3.0/24"],"conditions":[
                {"type":"Allocated","status":"True","reason":"Allocated","message":"ok","lastTransitionTime":"2026-01-01T00:00:00Z"},
                {"type":"Programmed","status":"False","reason":"Pending","message":"waiting","lastTransitionTime":"2026-01-01T00:00:00Z"}],
                "firewall":"nftables"}}"#;
                kubectl(
                    &cp,
                    &[
                        "patch",
                        "nr",
                        "node-cols",
                        "--subresource=status",
                        "--type=merge",
                        "-p",
                        status,
                    ],
                )?;
                let out = kubectl(&cp, &["get", "nr", "node-cols"])?;
                let header: Vec<&str> = out
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect();
                ensure!(
                    header
                        == [
                            "NAME",
                            "NODE-IP",
                            "POD-CIDRS",
                            "ALLOCATED",
                            "PROGRAMMED",
                            "FIREWALL",
                            "AGE"
                        ],
                    "{out}"
                );
                let row = out.lines().nth(1).unwrap_or_default();
                ensure!(
                    row.contains("198.18.0.2")
                        && row.contains("10.244.3.0/24")
                        && row.contains("True")
                        && row.contains("False")
                        && row.contains("nftables"),
                    "{out}"
                );
                kubectl(
                    &cp,
                    &[
                        "apply",
                        "-f",
                        &Path::new(env!("CARGO_MANIFEST_DIR"))
                            .join("../examples/podnetwork-dualstack.yaml")
                            .display()
                            .to_string(),
                    ],
                )?;
                let out = kubectl(&cp, &["get", "pn", "default"])?;
                let header: Vec<&str> = out
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect();
                ensure!(
                    header == ["NAME", "CIDRS", "NODES", "READY", "AGE"],
                    "{out}"
                );
                let both = kubectl(&cp, &["get", "pn,nr"])?;
                ensure!(
                    both.contains("podnetwork.podnet.dev/default")
                        && both.contains("noderoute.podnet.dev/node-cols"),
                    "{both}"
                );
                Ok(())
            },
        ),
        ApiTest::new("kubectl_explain_prints_field_docs", |cp| async move {
            let out = kubectl(&cp, &["explain", "podnetwork.spec.cidrs"])?;
            ensure!(out.contains("The address pools of this network"), "{out}");
            let out = kubectl(&cp, &["explain", "noderoute.status.podCIDRs"])?;
            ensure!(
                out.contains("source") && out.contains("of truth of the allocation"),
                "{out}"
            );
            let out = kubectl(&cp, &["explain", "pn.spec.nodeMaskSize"])?;
            ensure!(out.contains("Immutable"), "{out}");
            Ok(())
        }),
        ApiTest::new(
            "conditions_from_two_field_managers_merge_by_type",
            |cp| async move {
                kubectl_in(
                    &cp,
                    &["apply", "-f", "-"],
                    "apiVersion: podnet.dev/v1alpha1\nkind: NodeRoute\nmetadata:\n  name: node-ssa\nspec:\n  nodeName: node-ssa\n",
                )?;
                let apply = |manager: &str, type_: &str| {
                    let doc = format!(
                        "apiVersion: podnet.dev/v1alpha1\nkind: NodeRoute\nmetadata:\n  name: node-ssa\nstatus:\n  conditions:\n  - type: {type_}\n    status: \"True\"\n    reason: Done\n    message: by {manager}\n    lastTransitionTime: \"2026-01-01T00:00:00Z\"\n"
                    );
                    kubectl_in(
                        &cp,
                        &[
                            "apply",
                            "--server-side",
                            "--subresource=status",
                            &format!("--field-manager={manager}"),
                            "-f",
                            "-",
                        ],
                        &doc,
                    )
                };
                apply("podnet-operator", "Allocated")?;
                apply("podnet-daemon", "Programmed")?;
                let types = kubectl(
                    &cp,
                    &[
                        "get",
                        "nr",
                        "node-ssa",
                        "-o",
                        "jsonpath={.status.conditions[*].type}",
                    ],
                )?;
                ensure!(
                    types.contains("Allocated") && types.contains("Programmed"),
                    "server-side apply replaced instead of merging: {types}"
                );
                Ok(())
            },
        ),
    ])
}

fn kubectl(cp: &Arc<ControlPlane>, args: &[&str]) -> anyhow::Result<String> {
    kubectl_in(cp, args, "")
}

fn kubectl_in(cp: &Arc<ControlPlane>, args: &[&str], input: &str) -> anyhow::Result<String> {
    let out = cp.kubectl_with_input(args, input)?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs kubectl expecting a refusal; returns its error text.
fn kubectl_fails(cp: &Arc<ControlPlane>, args: &[&str], input: &str) -> anyhow::Result<String> {
    let out = cp.kubectl_with_input(args, input)?;
    if out.status.success() {
        bail!(
            "kubectl {} was accepted but must be refused:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}
