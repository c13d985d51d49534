#!/usr/bin/env bash
# Vendors the ClusterNetworkPolicy CRD (sigs.k8s.io/network-policy-api, standard channel)
# into the chart, unchanged but for a header naming its source:
#   scripts/update-cnp-crd.sh [VERSION]   (default: the version the chart ships)
# It comes from the Go module proxy (the module's zip holds config/crd/); podnet-daemon's
# types (node-daemon/src/cluster_policy.rs) must read the version it serves.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${1:-v0.3.0}"
out=charts/podnet/crds/clusternetworkpolicies.policy.networking.k8s.io.yaml
dir=$(cd /tmp && GOFLAGS= GOTOOLCHAIN=local go mod download -json "sigs.k8s.io/network-policy-api@$VERSION" \
  | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
src="$dir/config/crd/standard/policy.networking.k8s.io_clusternetworkpolicies.yaml"
[ -f "$src" ] || { echo "update-cnp-crd: $src not found" >&2; exit 1; }
{
  echo "# ClusterNetworkPolicy: sigs.k8s.io/network-policy-api $VERSION, standard channel"
  echo "# (config/crd/standard/policy.networking.k8s.io_clusternetworkpolicies.yaml, Apache-2.0),"
  echo "# unchanged. Refresh with scripts/update-cnp-crd.sh; podnet-daemon enforces it (docs/policy.md)."
  cat "$src"
} > "$out"
echo "$out"
