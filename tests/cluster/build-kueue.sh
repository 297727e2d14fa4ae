#!/usr/bin/env bash
# Build the pinned Kueue manager (sigs.k8s.io/kueue/cmd/kueue) from the Go module proxy into
#   ${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}/bin/kueue-<version>/kueue
# and make sure the module's own manifests (CRDs, RBAC, webhooks under config/components) are in
# the Go module cache, where tests/cluster/kueue.py reads them. Idempotent; KUEUE_BIN supplies a
# ready binary instead. The last line printed is the module directory.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/cluster/versions.env
source "$here/versions.env"
# shellcheck source=tests/cluster/goenv.sh
source "$here/goenv.sh"

bin="$cache/bin/kueue-$KUEUE_VERSION"


mkdir -p "$cache" "$bin"
go_lock

moddir="$GOMODCACHE/sigs.k8s.io/kueue@$KUEUE_VERSION"
if [[ ! -f $moddir/config/components/crd/bases/kueue.x-k8s.io_workloads.yaml ]]; then
  (cd "$(mktemp -d)" && go mod download "sigs.k8s.io/kueue@$KUEUE_VERSION")
fi

if [[ -n ${KUEUE_BIN:-} ]]; then
  [[ -x $KUEUE_BIN ]] || { log "KUEUE_BIN=$KUEUE_BIN is not an executable file"; exit 1; }
  log "kueue: supplied by the environment, not built"
elif [[ -x $bin/kueue ]]; then
  log "kueue: cached in $bin"
else
  start=$(date +%s)
  log "building sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION (GOCACHE=$GOCACHE)"
  # go install pkg@version: the module's own go.mod (no replace directives in v0.17.0) decides
  # every dependency, outside any wrapper module.
  (cd "$(mktemp -d)" && GOBIN="$bin.tmp" go install -p "${KUBETRAIN_BUILD_JOBS:-2}" -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" \
    "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION")
  mv -f "$bin.tmp/kueue" "$bin/kueue" && rmdir "$bin.tmp"
  log "built kueue in $(( ($(date +%s) - start) / 60 ))m$(( ($(date +%s) - start) % 60 ))s"
fi
echo "$moddir"
