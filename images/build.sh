#!/usr/bin/env bash
# Build the operator and trainer images from the repository's Dockerfiles with buildah (no
# Docker engine): ghcr.io/kubetrain/operator:<version> and ghcr.io/kubetrain/trainer:<version>,
# <version> from pyproject.toml, the git revision in org.opencontainers.image.revision.
#
#   bash images/build.sh [--only operator|trainer] [--force]
#                        [--export DIR [--format docker|oci]] [--import-containerd]
#
# --export DIR          also write each image to DIR/<name>-<version>.<format>.tar (and its SBOM,
#                       DIR/<name>-<version>.cdx.json)
# --import-containerd   import them into containerd's k8s.io namespace (ctr; the socket is
#                       $CONTAINERD_ADDRESS, default /run/containerd/containerd.sock)
# --force               rebuild even when the inputs did not change
#
# Cached: an image whose inputs (Dockerfile, .dockerignore, its lock, the source tree, the base
# image, the version) did not change since it was built is not built again (a few seconds);
# within a build, buildah's layer cache keeps the dependency layer until the lock changes.
# Wheels are kept in $KUBETRAIN_CACHE/wheels, the Debian base in $KUBETRAIN_CACHE/images.
# Supply chain: pip installs the locks in hash-checking mode (every wheel's sha256 is in the lock);
# each build writes a CycloneDX SBOM of its Python distributions from its lock into the image
# (/usr/share/doc/kubetrain/sbom.cdx.json, label dev.kubetrain.sbom), copied out to
# $KUBETRAIN_CACHE/images/<name>-<version>.cdx.json; the base is recorded by name and digest in the
# labels org.opencontainers.image.base.name/.digest.
# BASE_IMAGE=<image> skips the Debian base (e.g. python:3.11-slim where it can be pulled).
# Behind a TLS-intercepting proxy the host's CA bundle ($CA_BUNDLE, default the system bundle) is
# mounted into the build steps and named in PIP_CERT; it is never copied into an image.
# Needs root and buildah (and debootstrap for the base).
set -euo pipefail
# The whole script is one compound command: bash reads it completely before running any of it,
# so editing this file while it runs (a long build) cannot change what runs.
{

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CACHE="${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}"
REGISTRY=ghcr.io/kubetrain
INPUTS_LABEL=dev.kubetrain.image.inputs
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
CONTAINERD_ADDRESS="${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}"

log() { echo "[images] $*" >&2; }
die() { echo "images/build.sh: $*" >&2; exit 2; }

only=(operator trainer)
export_dir=""
format=docker
import_containerd=0
force=0
while (($#)); do
  case $1 in
    --only) only=("${2:?--only needs operator or trainer}"); shift 2 ;;
    --export) export_dir="${2:?--export needs a directory}"; shift 2 ;;
    --format) format="${2:?--format needs docker or oci}"; shift 2 ;;
    --import-containerd) import_containerd=1; shift ;;
    --force) force=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1'; see --help" ;;
  esac
done
for name in "${only[@]}"; do
  [[ $name == operator || $name == trainer ]] || die "--only: '$name' is not operator or trainer"
done
[[ $format == docker || $format == oci ]] || die "--format: '$format' is not docker or oci"
((EUID == 0)) || die "needs root (buildah builds as root here); run it with sudo"
command -v buildah >/dev/null || die "needs buildah: apt-get install buildah"

mkdir -p "$CACHE/images"
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')

dockerfile_of() { if [[ $1 == operator ]]; then echo Dockerfile; else echo trainer_image/Dockerfile; fi; }

# The files an image's build reads: what its Dockerfile COPYs (minus .dockerignore's patterns).
input_files() {
  local name=$1
  printf '%s\n' "$(dockerfile_of "$name")" .dockerignore .containerignore pyproject.toml README.md \
    images/build-tools.lock "images/$name.lock"
  find operator trainer_image/kubetrain_trainer -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
    ! -path '*/.mypy_cache/*' | LC_ALL=C sort
}

# Cache key: the content of every input file, the base image's id and the version.
inputs_digest() {
  local name=$1 base_id=$2
  {
    input_files "$name" | while IFS= read -r f; do sha256sum -- "$f"; done
    echo "base $base_id version $VERSION"
  } | sha256sum | cut -c1-32
}

# The commit the inputs come from; "-dirty" when an input differs from it.
revision() {
  local name=$1 rev
  rev=$(git rev-parse HEAD 2>/dev/null) || { echo unknown; return; }
  if [[ -n $(git status --porcelain -- "$(dockerfile_of "$name")" pyproject.toml README.md images \
    operator trainer_image/kubetrain_trainer 2>/dev/null) ]]; then
    rev+=-dirty
  fi
  echo "$rev"
}

image_label() { buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null || true; }
image_id() { buildah inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true; }

if [[ -n ${BASE_IMAGE:-} ]]; then
  base=$BASE_IMAGE
  buildah inspect --type image "$base" >/dev/null 2>&1 || buildah pull --quiet "$base" >/dev/null
else
  base=$(flock "$CACHE/images/base.lock" bash images/base.sh)
fi
base_id=$(image_id "$base")
base_digest=$(buildah inspect --type image --format '{{.FromImageDigest}}' "$base")

build_args=(--build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$VERSION")
mounts=()
if [[ -s $CA_BUNDLE ]]; then
  mounts+=(-v "$(readlink -f "$CA_BUNDLE"):/etc/ssl/certs/host-ca.crt:ro")
  build_args+=(--build-arg PIP_CERT=/etc/ssl/certs/host-ca.crt)
fi
mkdir -p "$CACHE/wheels"
mounts+=(-v "$CACHE/wheels:/var/cache/kubetrain-wheels")

# One build of each image (and of the base) at a time: CI's images phase, a test session, a
# developer. A second waits for the first, then finds the image up to date.
build_one() {
  local name=$1 fd
  exec {fd}>"$CACHE/images/build-$name.lock"
  flock "$fd"
  build_locked "$name"
  exec {fd}>&-
}

build_locked() {
  local name=$1 ref="$REGISTRY/$1:$VERSION" digest old_id new_id start
  digest=$(inputs_digest "$name" "$base_id")
  old_id=$(image_id "$ref")
  if ((!force)) && [[ -n $old_id && $(image_label "$ref" "$INPUTS_LABEL") == "$digest" ]]; then
    log "$ref: up to date (inputs $digest)"
    return
  fi
  log "$ref: building from $(dockerfile_of "$name") on $base"
  start=$SECONDS
  buildah bud --layers --force-rm --isolation chroot --network host --format oci \
    "${build_args[@]}" --build-arg "REVISION=$(revision "$name")" "${mounts[@]}" \
    --label "$INPUTS_LABEL=$digest" --label "org.opencontainers.image.base.name=$base" \
    --label "org.opencontainers.image.base.digest=$base_digest" -f "$(dockerfile_of "$name")" -t "$ref" .
  new_id=$(image_id "$ref")
  # The image this one replaces: only its own (small) layers go; the shared ones stay.
  if [[ -n $old_id && $old_id != "$new_id" ]]; then buildah rmi "$old_id" >/dev/null 2>&1 || true; fi
  log "$ref: built in $((SECONDS - start)) s"
  echo "$(date -u +%FT%TZ) $name $VERSION $((SECONDS - start))s inputs=$digest" >>"$CACHE/images/build-times.log"
}

# The image's SBOM (written by its build from the lock) copied out of the image to $2.
sbom_out() {
  local name=$1 dest=$2 ctr mnt
  ctr=$(buildah from --pull-never --quiet "$REGISTRY/$name:$VERSION")
  mnt=$(buildah mount "$ctr")
  install -m 0644 "$mnt/usr/share/doc/kubetrain/sbom.cdx.json" "$dest"
  buildah umount "$ctr" >/dev/null
  buildah rm "$ctr" >/dev/null
}

export_one() {
  local name=$1 ref="$REGISTRY/$1:$VERSION" dir=$2 file
  mkdir -p "$dir"
  file="$dir/$name-$VERSION.$format.tar"
  rm -f "$file"
  buildah push --quiet "$ref" "$format-archive:$file:$ref" >/dev/null
  echo "$file"
}

mkdir -p "$CACHE/images"
for name in "${only[@]}"; do
  build_one "$name"
  sbom_out "$name" "$CACHE/images/$name-$VERSION.cdx.json"
  log "SBOM (CycloneDX): $CACHE/images/$name-$VERSION.cdx.json"
done

if [[ -n $export_dir ]]; then
  for name in "${only[@]}"; do
    log "wrote $(export_one "$name" "$export_dir")"
    cp "$CACHE/images/$name-$VERSION.cdx.json" "$export_dir/"
    log "wrote $export_dir/$name-$VERSION.cdx.json"
  done
fi
if ((import_containerd)); then
  command -v ctr >/dev/null || die "--import-containerd needs ctr: apt-get install containerd"
  tmp=$(mktemp -d "$CACHE/images/import.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  for name in "${only[@]}"; do
    file=$(format=docker export_one "$name" "$tmp")
    ctr --address "$CONTAINERD_ADDRESS" -n k8s.io images import --all-platforms --digests \
      ${CONTAINERD_SNAPSHOTTER:+--snapshotter "$CONTAINERD_SNAPSHOTTER"} "$file" >/dev/null
    rm -f "$file"
    log "imported $REGISTRY/$name:$VERSION into containerd ($CONTAINERD_ADDRESS, namespace k8s.io)"
  done
fi
for name in "${only[@]}"; do
  buildah images --format '{{.Name}}:{{.Tag}} {{.ID}} {{.Size}}' "$REGISTRY/$name:$VERSION"
done
exit
}
