#!/usr/bin/env bash
# The e2e cluster on kind, for machines with Docker (the same tests run unchanged):
#   e2e/cluster/kind.sh up     # create cluster, build + load images, write kubeconfig
#   e2e/cluster/kind.sh down
# Then: eval "$(e2e/cluster/kind.sh env)"; cargo test -p e2e --features e2e -- --test-threads=1
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${KIND_CLUSTER:-mesh-e2e}"
KUBECONFIG_OUT="${KIND_KUBECONFIG:-$REPO/target/kind-$CLUSTER.kubeconfig}"
NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.34.0}"
VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml" | head -n1)"

# The address the kind node reaches the host (test process) on: the docker network's gateway.
host_ip() { docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' | tr ' ' '\n' | grep -m1 '\.'; }

case "${1:-up}" in
  up)
    command -v kind >/dev/null && command -v docker >/dev/null || { echo "kind and docker are required" >&2; exit 1; }
    kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --wait 120s
    mkdir -p "$(dirname "$KUBECONFIG_OUT")"
    kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_OUT"
    while read -r name pkg bins; do
      [[ -z "$name" || "$name" == \#* ]] && continue
      docker build -f "$REPO/deploy/docker/Dockerfile" --build-arg PACKAGE="$pkg" --build-arg BINS="$bins" \
        -t "mesh.local/$name:$VERSION" "$REPO"
      kind load docker-image --name "$CLUSTER" "mesh.local/$name:$VERSION"
    done <"$REPO/deploy/images/images.txt"
    "$0" env
    ;;
  env)
    echo "export KUBECONFIG=$KUBECONFIG_OUT"
    echo "export MESH_E2E_HOST_IP=$(host_ip)"
    ;;
  down) kind delete cluster --name "$CLUSTER" ;;
  *) echo "usage: $0 up|env|down" >&2; exit 2 ;;
esac
