//! The lab's workloads (echo pods on every node, a Service, the external echo host's client pods) and reading them back.

use std::time::{Duration, Instant};

use super::{ECHO_PORT, RealLab, kubectl};
use crate::LabError;

/// The lab's workloads: two echo pods pinned to each node, a hostNetwork echo pod per
/// node, and an echo Deployment behind a ClusterIP Service.
pub(super) fn deploy_workloads(lab: &RealLab) -> Result<(), LabError> {
    let echo = |name: &str, node: &str, host_network: bool, labels: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: lab
  labels: {{{labels}}}
spec:
  nodeName: {node}
  hostNetwork: {host_network}
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: localhost/podnet-lab/busybox:1
    imagePullPolicy: Never
    command: ["/bin/busybox", "httpd", "-f", "-p", "[::]:{ECHO_PORT}", "-h", "/www"]
---
"#
        )
    };
    let mut docs = String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: lab\n---\n");
    for n in &lab.nodes {
        for p in 1..=2 {
            docs.push_str(&echo(
                &format!("{}-pod{p}", n.name),
                &n.name,
                false,
                "role: pod",
            ));
        }
        docs.push_str(&echo(
            &format!("{}-host", n.name),
            &n.name,
            true,
            "role: host",
        ));
    }
    docs.push_str(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
  namespace: lab
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: echo}}
  template:
    metadata:
      labels: {{app: echo}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: localhost/podnet-lab/busybox:1
        imagePullPolicy: Never
        command: ["/bin/busybox", "httpd", "-f", "-p", "[::]:{ECHO_PORT}", "-h", "/www"]
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: lab
spec:
  selector: {{app: echo}}
  ports:
  - port: 80
    targetPort: {ECHO_PORT}
"#,
        replicas = lab.nodes.len()
    ));
    kubectl(lab, &["apply", "-f", "-"], &docs).map(drop)
}

pub(super) async fn wait_workloads(lab: &RealLab, timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    let want = lab.nodes.len() * 4;
    loop {
        let out = kubectl(
            lab,
            &[
                "get",
                "pods",
                "-n",
                "lab",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ],
            "",
        )
        .unwrap_or_default();
        let ready = out.lines().filter(|l| l.ends_with(" True")).count();
        if ready >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::NotReady {
                component: "workload pods",
                reason: format!("{ready} of {want} ready after {timeout:?}:\n{out}"),
                log: lab.dir.clone(),
                tail: kubectl(
                    lab,
                    &["get", "events", "-n", "lab", "--sort-by=.lastTimestamp"],
                    "",
                )
                .unwrap_or_default(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A pod as the matrix needs it.
#[derive(Clone, Debug)]
pub struct PodInfo {
    /// Its name (namespace `lab`).
    pub name: String,
    /// Its node.
    pub node: String,
    /// Its addresses (IPv4 first).
    pub ips: Vec<String>,
    /// Whether it uses the node's network.
    pub host_network: bool,
}

/// The lab's pods in namespace `lab`.
pub fn pods(lab: &RealLab) -> Result<Vec<PodInfo>, LabError> {
    let out = kubectl(lab, &["get", "pods", "-n", "lab", "-o", "json"], "")?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| LabError::Command {
        command: "kubectl get pods -o json".into(),
        stderr: e.to_string(),
    })?;
    let mut out: Vec<PodInfo> = v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|p| PodInfo {
                    name: p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    node: p["spec"]["nodeName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    ips: p["status"]["podIPs"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|i| i["ip"].as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    host_network: p["spec"]["hostNetwork"].as_bool().unwrap_or(false),
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
