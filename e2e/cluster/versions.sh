# shellcheck shell=bash
# shellcheck disable=SC2034  # sourced: the variables are used by the scripts
# Pinned versions of the local e2e cluster's components (sourced by the scripts).
# Why these: docs/e2e-cluster.md.
KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
# Staging modules (k8s.io/api, client-go, ...) are published as v0.X.Y for v1.X.Y.
KUBE_STAGING_VERSION="v0${KUBE_VERSION#v1}"
# etcd: the version k8s.io/kubernetes itself requires (go.etcd.io/etcd/server/v3), so
# it is built inside the same Go module and shares its compile cache.
ETCD_VERSION="${ETCD_VERSION:-v3.6.4}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.12.1}"

MESH_E2E_CACHE="${MESH_E2E_CACHE:-$HOME/.cache/mesh-e2e}"
MESH_E2E_STATE="${MESH_E2E_STATE:-/var/lib/mesh-e2e}"

# Network layout (everything stays on this machine).
NODE_IF="mesh-e2e0"            # port-less bridge we create (this kernel has no dummy links)
NODE_IP="10.250.0.1"           # node IP on that interface; the apiserver advertises it
NODE_NAME="mesh-e2e-node"
POD_CIDR="10.244.0.0/24"
SERVICE_CIDR="10.96.0.0/16"
KUBE_SVC_IP="10.96.0.1"
DNS_SVC_IP="10.96.0.10"
CNI_BRIDGE="mesh-cni0"
APISERVER_PORT=6443
ETCD_CLIENT_PORT=23790
ETCD_PEER_PORT=23800

export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export PATH="/usr/local/go/bin:$PATH"

log() { printf '%s [%s] %s\n' "$(date -u +%H:%M:%S)" "$(basename "$0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# apt_ensure PKG...: installs the packages that are missing.
apt_ensure() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
  fi
}
