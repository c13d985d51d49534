//! The operator's writer: performs the jobs a [`crate::plan::Plan`] lists and fences
//! NodeRoutes at the start of a term. It owns the two rules every write obeys, each
//! written once here:
//! - **fencing**: a request is sent only while [`Leadership::is_leader`] holds, checked
//!   right before it ([`Writer::write`]); NodeRoute writes carry the resourceVersion
//!   they were planned from;
//! - **conflicts**: a 409 or 404 means the object changed or vanished under the write;
//!   the writer reads it again ([`Writer::reread`]) and hands it to the plan's fold,
//!   which decides whose CIDRs are the truth.

use std::future::Future;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use podnet_crds::condition_type::ALLOCATED;
use podnet_crds::{
    API_VERSION, ConditionStatus, NodeRoute, NodeRouteSpec, NodeRouteStatus, PodNetwork,
    make_condition, reason,
};
use serde_json::json;
use tracing::warn;

use crate::events::Announcer;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::plan::{Job, OWN_CONDITIONS, Outcome};

/// The field manager of every status the operator applies.
pub const FIELD_MANAGER: &str = "podnet-operator";

/// Errors of the control loop (starting a term, fencing).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Leadership was lost while starting a term.
    #[error("leadership lost")]
    NotLeader,
    /// Fencing could not finish.
    #[error("could not fence NodeRoute {0}")]
    Fence(String),
}

/// Why a write did not happen.
#[derive(Debug)]
enum Refusal {
    /// This replica does not lead (any more): nothing was sent.
    NotLeader,
    /// 409 or 404: the object changed or vanished under the write. `adopt`: what the
    /// API server has is the truth (a create that lost a race).
    Changed { adopt: bool },
    /// Any other failure; the next pass retries.
    Failed {
        operation: &'static str,
        error: kube::Error,
    },
}

impl Refusal {
    fn adopting(self) -> Self {
        match self {
            Refusal::Changed { .. } => Refusal::Changed { adopt: true },
            other => other,
        }
    }
}

/// Performs API writes for the leader.
pub struct Writer {
    client: Client,
    leadership: Leadership,
    metrics: Metrics,
    events: Announcer,
}

impl Writer {
    /// A writer that writes through `client` while `leadership` holds.
    pub fn new(
        client: Client,
        leadership: Leadership,
        metrics: Metrics,
        events: Announcer,
    ) -> Self {
        Self {
            client,
            leadership,
            metrics,
            events,
        }
    }

    fn noderoutes(&self) -> Api<NodeRoute> {
        Api::all(self.client.clone())
    }

    /// Sends `request` if, right now, this replica leads; sorts its failure.
    async fn write<T>(
        &self,
        operation: &'static str,
        request: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, Refusal> {
        if !self.leadership.is_leader() {
            return Err(Refusal::NotLeader);
        }
        request.await.map_err(|error| match &error {
            kube::Error::Api(s) if s.code == 409 || s.code == 404 => {
                Refusal::Changed { adopt: false }
            }
            _ => Refusal::Failed { operation, error },
        })
    }

    /// Reads a NodeRoute again after a write was refused for a conflict.
    async fn reread(&self, name: &str, conflict: bool) -> Result<Option<NodeRoute>, Refusal> {
        if conflict {
            self.metrics.conflicts.inc();
        }
        self.noderoutes()
            .get_opt(name)
            .await
            .map_err(|error| Refusal::Failed {
                operation: "get",
                error,
            })
    }

    /// Writes a NodeRoute's status with its own resourceVersion as precondition, so no
    /// older write can land after it. Returns the NodeRoute as it is afterwards (none:
    /// it is gone).
    pub async fn fence(&self, mut nr: NodeRoute) -> Result<Option<NodeRoute>, Error> {
        let name = nr.name_any();
        for _ in 0..5 {
            let status = nr.status.clone().unwrap_or_default();
            let condition = make_condition(
                &status.conditions,
                ALLOCATED,
                ConditionStatus::Unknown,
                reason::PENDING,
                "waiting for an allocation by the new operator leader".into(),
                nr.metadata.generation,
            );
            let mut desired = status.clone();
            desired.conditions = vec![condition];
            let api = self.noderoutes();
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let patch = Patch::Apply(status_patch(&name, nr.resource_version(), &desired));
            match self
                .write("fence", api.patch_status(&name, &params, &patch))
                .await
            {
                Ok(fresh) => return Ok(Some(fresh)),
                Err(Refusal::NotLeader) => return Err(Error::NotLeader),
                Err(Refusal::Changed { .. }) => match self.reread(&name, true).await {
                    Ok(Some(fresh)) => nr = fresh,
                    Ok(None) => return Ok(None),
                    Err(Refusal::Failed { error, .. }) => return Err(error.into()),
                    Err(_) => return Err(Error::Fence(name)),
                },
                Err(Refusal::Failed { error, .. }) => return Err(error.into()),
            }
        }
        Err(Error::Fence(name))
    }

    /// Performs one job and reports how it ended.
    pub async fn execute(&self, job: Job) -> Outcome {
        let node_route = job.is_node_route();
        let name = job.name();
        let refusal = match self.perform(job).await {
            Ok(outcome) => return outcome,
            Err(refusal) => refusal,
        };
        match refusal {
            Refusal::NotLeader if node_route => Outcome::Skipped { name },
            Refusal::Changed { adopt } if node_route => match self.reread(&name, !adopt).await {
                Ok(fresh) => Outcome::Conflict {
                    name,
                    fresh: fresh.map(Box::new),
                    adopt,
                },
                Err(refusal) => self.failed(name, refusal, node_route),
            },
            refusal => self.failed(name, refusal, node_route),
        }
    }

    fn failed(&self, name: String, refusal: Refusal, node_route: bool) -> Outcome {
        if let Refusal::Failed { operation, error } = &refusal {
            self.metrics.error(operation);
            warn!(object = %name, operation, error = %error, "API write failed; retrying on the next pass");
        }
        if node_route {
            Outcome::Failed { name }
        } else {
            Outcome::Done
        }
    }

    async fn perform(&self, job: Job) -> Result<Outcome, Refusal> {
        let nr_api = self.noderoutes();
        match job {
            Job::Create {
                name,
                uid,
                network,
                status,
            } => {
                let nr = NodeRoute {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        owner_references: Some(vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: name.clone(),
                            uid,
                            controller: Some(true),
                            block_owner_deletion: None,
                        }]),
                        ..Default::default()
                    },
                    spec: NodeRouteSpec {
                        node_name: name.clone(),
                        pod_network: network,
                    },
                    status: None,
                };
                // Someone else created it (or our cache lags): adopt what is there.
                let created = self
                    .write("create", nr_api.create(&PostParams::default(), &nr))
                    .await
                    .map_err(Refusal::adopting)?;
                self.write_status(&name, created.resource_version(), *status)
                    .await
            }
            Job::WriteStatus { name, rv, status } => {
                self.write_status(&name, Some(rv), *status).await
            }
            Job::SetNetwork { name, rv, network } => {
                let patch =
                    json!({"metadata": {"resourceVersion": rv}, "spec": {"podNetwork": network}});
                self.write(
                    "patch-spec",
                    nr_api.patch(&name, &PatchParams::default(), &Patch::Merge(patch)),
                )
                .await?;
                Ok(Outcome::Written { name, before: rv })
            }
            Job::DeleteOrphan { name, uid } => {
                // The cache may lag: only a 404 from the API server proves the node gone.
                let nodes: Api<Node> = Api::all(self.client.clone());
                let node = nodes
                    .get_opt(&name)
                    .await
                    .map_err(|error| Refusal::Failed {
                        operation: "get-node",
                        error,
                    })?;
                if node.is_some() {
                    return Ok(Outcome::Skipped { name });
                }
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match self.write("delete", nr_api.delete(&name, &dp)).await {
                    // Gone already, or a new NodeRoute of that name (another uid).
                    Ok(_) | Err(Refusal::Changed { .. }) => Ok(Outcome::Deleted { name }),
                    Err(refusal) => Err(refusal),
                }
            }
            Job::ConfirmRelease { name } => {
                // Only a 404 from the API server proves the NodeRoute gone.
                match self.reread(&name, false).await? {
                    None => Ok(Outcome::Released { name }),
                    Some(fresh) => Ok(Outcome::Conflict {
                        name,
                        fresh: Some(Box::new(fresh)),
                        adopt: true,
                    }),
                }
            }
            Job::Announce {
                reference,
                reason,
                note,
            } => {
                self.events.warn(reference, reason, &note).await;
                Ok(Outcome::Done)
            }
            Job::SetNodePodCidrs { name, cidrs } => {
                // podCIDRs can only be set while empty; the API server refuses a change.
                let patch = json!({"spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}});
                let nodes: Api<Node> = Api::all(self.client.clone());
                self.write(
                    "patch-node-podcidrs",
                    nodes.patch(&name, &PatchParams::default(), &Patch::Merge(patch)),
                )
                .await?;
                Ok(Outcome::Done)
            }
            Job::NetworkStatus { name, status, pn } => {
                let api: Api<PodNetwork> = Api::all(self.client.clone());
                let patch = json!({
                    "apiVersion": API_VERSION, "kind": "PodNetwork",
                    "metadata": {"name": name}, "status": status,
                });
                self.write(
                    "apply-network-status",
                    api.patch_status(
                        &name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(patch),
                    ),
                )
                .await?;
                let before = pn.status.clone().unwrap_or_default();
                self.events.network(&pn, &before, &status).await;
                Ok(Outcome::Done)
            }
        }
    }

    async fn write_status(
        &self,
        name: &str,
        rv: Option<String>,
        status: NodeRouteStatus,
    ) -> Result<Outcome, Refusal> {
        let patch = status_patch(name, rv.clone(), &status);
        let api = self.noderoutes();
        let written = self
            .write(
                "apply-status",
                api.patch_status(
                    name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(patch),
                ),
            )
            .await?;
        self.events.node(&written, &status).await;
        Ok(Outcome::Written {
            name: name.into(),
            before: rv.unwrap_or_default(),
        })
    }
}

/// The server-side-apply body of the operator's part of a NodeRoute's status; the
/// resourceVersion, when given, is the write's precondition.
fn status_patch(name: &str, rv: Option<String>, status: &NodeRouteStatus) -> serde_json::Value {
    let mut meta = json!({"name": name});
    if let Some(rv) = rv.filter(|r| !r.is_empty()) {
        meta["resourceVersion"] = json!(rv);
    }
    // Only the operator's own conditions: the daemon's Programmed merges in by type.
    let conditions: Vec<&Condition> = status
        .conditions
        .iter()
        .filter(|c| OWN_CONDITIONS.contains(&c.type_.as_str()))
        .collect();
    json!({
        "apiVersion": API_VERSION,
        "kind": "NodeRoute",
        "metadata": meta,
        "status": {
            "nodeIPs": status.node_ips,
            "podCIDRs": status.pod_cidrs,
            "conditions": conditions,
            "observedGeneration": status.observed_generation,
        }
    })
}
