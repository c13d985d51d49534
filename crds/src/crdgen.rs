//! CRD manifests generated from the Rust types, and the schema fragments the derive
//! macros cannot express on their own.

use kube::CustomResourceExt;
use schemars::{Schema, json_schema};

use crate::{NodeRoute, PodNetwork};

/// Upper bound on list lengths: the API server needs one to estimate the cost of the
/// CEL rules that run over every item.
const MAX_CIDRS: u32 = 32;
/// The longest canonical IPv6 CIDR ("ffff:...:ffff/128") is 43 characters.
const MAX_CIDR_LEN: u32 = 43;
/// The longest canonical IPv6 address is 39 characters.
const MAX_IP_LEN: u32 = 39;

/// One generated manifest: the file name under `charts/podnet/crds/` and its YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrdFile {
    /// File name, such as `podnetworks.podnet.dev.yaml`.
    pub file_name: String,
    /// The manifest as YAML.
    pub yaml: String,
}

/// Errors generating manifests.
#[derive(Debug, thiserror::Error)]
#[error("cannot serialize CRD {name} to YAML")]
pub struct CrdGenError {
    name: String,
    #[source]
    source: serde_yaml::Error,
}

/// The CRD manifests of every podnet resource, in a stable order.
pub fn crd_files() -> Result<Vec<CrdFile>, CrdGenError> {
    [PodNetwork::crd(), NodeRoute::crd()]
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let body = serde_yaml::to_string(&crd).map_err(|source| CrdGenError {
                name: name.clone(),
                source,
            })?;
            Ok(CrdFile {
                file_name: format!("{name}.yaml"),
                yaml: format!(
                    "# Generated from crds/src by `cargo run -p podnet-crds --bin crdgen`. Do not edit.\n{body}"
                ),
            })
        })
        .collect()
}

/// A list of `metav1.Condition`, merged by `type` under server-side apply.
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> Schema {
    let mut schema =
        generator.subschema_for::<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema.insert("maxItems".into(), 16.into());
    schema
}

/// A set of canonical CIDRs, validated by the API server's CIDR library.
pub(crate) fn cidr_list_schema(min_items: u32, message: &str) -> Schema {
    json_schema!({
        "type": "array",
        "minItems": min_items,
        "maxItems": MAX_CIDRS,
        "x-kubernetes-list-type": "set",
        "items": {
            "type": "string",
            "maxLength": MAX_CIDR_LEN,
            "x-kubernetes-validations": [
                {"rule": "isCIDR(self)", "message": message},
                {"rule": "!isCIDR(self) || string(cidr(self).masked()) == self", "message": format!("{message}: host bits must be zero and the address written canonically")}
            ]
        }
    })
}

/// Makes a status list written by one owner atomic: server-side apply then replaces it
/// as a whole, so an owner restoring it also removes entries someone else added by hand
/// (with `set`, those would stay, owned by whoever added them). Entries stay unique.
pub(crate) fn owned_whole(mut schema: Schema) -> Schema {
    schema.insert("x-kubernetes-list-type".into(), "atomic".into());
    schema.insert(
        "x-kubernetes-validations".into(),
        serde_json::json!([{"rule": "self.all(x, self.exists_one(y, x == y))", "message": "entries must be unique"}]),
    );
    schema
}

/// A list of canonical IP addresses, at most one per family.
pub(crate) fn ip_list_schema(message: &str) -> Schema {
    json_schema!({
        "type": "array",
        "maxItems": 2,
        "items": {
            "type": "string",
            "maxLength": MAX_IP_LEN,
            "x-kubernetes-validations": [
                {"rule": "isIP(self) && ip.isCanonical(self)", "message": message}
            ]
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// The manifests in the chart are exactly what the types generate. On failure run
    /// `cargo run -p podnet-crds --bin crdgen` and commit the result.
    #[test]
    fn checked_in_crds_match_the_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/podnet/crds");
        let generated = crd_files().unwrap_or_else(|e| panic!("generating CRDs: {e}"));
        for file in &generated {
            let path = dir.join(&file.file_name);
            let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run `cargo run -p podnet-crds --bin crdgen`",
                    path.display()
                )
            });
            assert!(
                on_disk == file.yaml,
                "{} differs from what the Rust types generate; run `cargo run -p podnet-crds --bin crdgen` and commit",
                path.display()
            );
        }
        // Upstream's CRD, vendored unchanged (scripts/update-cnp-crd.sh).
        let vendored = ["clusternetworkpolicies.policy.networking.k8s.io.yaml".to_string()];
        let expected: BTreeSet<String> = generated
            .iter()
            .map(|f| f.file_name.clone())
            .chain(vendored)
            .collect();
        let present: BTreeSet<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        assert_eq!(
            present,
            expected,
            "stale or unknown files in {}",
            dir.display()
        );
    }

    #[test]
    fn conditions_are_a_list_map_keyed_by_type() {
        for file in crd_files().unwrap_or_default() {
            let doc: serde_yaml::Value = serde_yaml::from_str(&file.yaml).unwrap_or_default();
            let conditions = &doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
                ["status"]["properties"]["conditions"];
            assert_eq!(
                conditions["x-kubernetes-list-type"], "map",
                "{}",
                file.file_name
            );
            assert_eq!(
                conditions["x-kubernetes-list-map-keys"],
                serde_yaml::to_value(["type"]).unwrap_or_default(),
                "{}",
                file.file_name
            );
        }
    }
}
