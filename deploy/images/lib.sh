# shellcheck shell=bash
# Docker-less OCI image building (sourced by deploy/images/build and e2e/cluster/local-up).
#
# An image is a Debian bookworm minbase root filesystem (plus iptables and
# ca-certificates, made once by debootstrap and cached) and one layer with our
# binaries in /usr/local/bin. Images are written into one OCI image layout
# (several images share the base layer blob) and packed as a tar archive that
# `ctr images import` and `skopeo copy oci-archive:` understand.

MESH_E2E_CACHE="${MESH_E2E_CACHE:-$HOME/.cache/mesh-e2e}"
BASE_REV="bookworm-minbase-1"   # bump to rebuild the cached base root fs
BASE_DIR="$MESH_E2E_CACHE/rootfs-$BASE_REV"

_ilog() { printf '%s [images] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

_mirror() {
  local m
  m="$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | head -n1 | tr -d ' ')"
  echo "${m:-http://deb.debian.org/debian}"
}

# Makes (once) the base layer: $BASE_DIR/layer.tar and its digest in $BASE_DIR/layer.sha256.
base_layer() {
  [[ -f "$BASE_DIR/layer.sha256" ]] && return
  command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  local root="$BASE_DIR.tmp/rootfs"
  rm -rf "$BASE_DIR.tmp"; mkdir -p "$root"
  _ilog "debootstrap bookworm minbase (+iptables, ca-certificates) into $root"
  debootstrap --variant=minbase --include=iptables,ca-certificates bookworm "$root" "$(_mirror)" \
    >"$BASE_DIR.tmp/debootstrap.log" 2>&1 || { tail -20 "$BASE_DIR.tmp/debootstrap.log" >&2; return 1; }
  rm -rf "${root:?}"/var/cache/apt/archives/*.deb "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/log/* "${root:?}"/dev/*
  tar --numeric-owner --sort=name -C "$root" -cf "$BASE_DIR.tmp/layer.tar" .
  sha256sum "$BASE_DIR.tmp/layer.tar" | cut -d' ' -f1 >"$BASE_DIR.tmp/layer.sha256"
  rm -rf "$root"
  rm -rf "$BASE_DIR"; mv "$BASE_DIR.tmp" "$BASE_DIR"
  _ilog "base layer ready: $(du -h "$BASE_DIR/layer.tar" | cut -f1), sha256:$(cat "$BASE_DIR/layer.sha256")"
}

# oci_init DIR: empty OCI layout with the base layer blob in it.
oci_init() {
  local dir=$1 d
  base_layer
  rm -rf "$dir"; mkdir -p "$dir/blobs/sha256"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci-layout"
  : >"$dir/.manifests"
  d="$(cat "$BASE_DIR/layer.sha256")"
  ln "$BASE_DIR/layer.tar" "$dir/blobs/sha256/$d" 2>/dev/null || cp "$BASE_DIR/layer.tar" "$dir/blobs/sha256/$d"
}

_blob() { # _blob DIR FILE -> prints digest, moves FILE into blobs
  local d
  d="$(sha256sum "$2" | cut -d' ' -f1)"
  mv "$2" "$1/blobs/sha256/$d"
  echo "$d"
}

# oci_add DIR REF FILE...: adds image REF (e.g. mesh.local/http-echo:0.1.0) whose
# layer holds FILEs in /usr/local/bin; the first file is the entrypoint.
oci_add() {
  local dir=$1 ref=$2; shift 2
  local stage base_d layer_d cfg_d man_d f entry
  entry="/usr/local/bin/$(basename "$1")"
  stage="$(mktemp -d)"
  mkdir -p "$stage/usr/local/bin"
  for f in "$@"; do cp "$f" "$stage/usr/local/bin/"; done
  tar --numeric-owner --owner=0 --group=0 --sort=name --mtime=@0 -C "$stage" -cf "$dir/layer.tmp" .
  rm -rf "$stage"
  layer_d="$(_blob "$dir" "$dir/layer.tmp")"
  base_d="$(cat "$BASE_DIR/layer.sha256")"
  cat >"$dir/cfg.tmp" <<JSON
{"architecture":"amd64","os":"linux","config":{"Entrypoint":["$entry"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/","Labels":{"org.opencontainers.image.title":"${ref%%:*}"}},"rootfs":{"type":"layers","diff_ids":["sha256:$base_d","sha256:$layer_d"]},"history":[{"created_by":"debootstrap $BASE_REV"},{"created_by":"deploy/images: $*"}]}
JSON
  local cfg_size base_size layer_size
  cfg_size=$(stat -c %s "$dir/cfg.tmp")
  cfg_d="$(_blob "$dir" "$dir/cfg.tmp")"
  base_size=$(stat -c %s "$dir/blobs/sha256/$base_d")
  layer_size=$(stat -c %s "$dir/blobs/sha256/$layer_d")
  cat >"$dir/man.tmp" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$cfg_d","size":$cfg_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$base_d","size":$base_size},{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$layer_d","size":$layer_size}]}
JSON
  local man_size
  man_size=$(stat -c %s "$dir/man.tmp")
  man_d="$(_blob "$dir" "$dir/man.tmp")"
  printf '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}\n' \
    "$man_d" "$man_size" "$ref" "$ref" >>"$dir/.manifests"
  _ilog "image $ref (entrypoint $entry)"
}

# oci_pack DIR OUT.tar: writes index.json and packs the layout.
oci_pack() {
  local dir=$1 out=$2
  { printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":['
    paste -sd, "$dir/.manifests"
    printf ']}\n'; } >"$dir/index.json"
  tar -C "$dir" --exclude=.manifests -cf "$out.tmp" oci-layout index.json blobs
  mv "$out.tmp" "$out"
}

# oci_import OUT.tar SOCKET: imports into containerd's k8s.io namespace.
oci_import() {
  ctr -a "$2" -n k8s.io images import "$1" >/dev/null
}
