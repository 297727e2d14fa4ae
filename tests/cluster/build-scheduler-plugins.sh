#!/usr/bin/env bash
# Build the scheduler-plugins kube-scheduler (sigs.k8s.io/scheduler-plugins/cmd/scheduler, with
# the Coscheduling plugin) from the Go module proxy into
#   ${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}/bin/scheduler-plugins-<version>/kube-scheduler
# Its go.mod pins k8s.io/kubernetes and the staging modules with replace directives, which a
# dependency's go.mod cannot pass on, so a wrapper module repeats them (all are version
# replaces). Idempotent; SCHEDULER_PLUGINS_BIN supplies a ready binary. The last line printed is
# the module directory (its manifests/coscheduling has the PodGroup CRD and scheduler config).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/cluster/versions.env
source "$here/versions.env"
# shellcheck source=tests/cluster/goenv.sh
source "$here/goenv.sh"

version=$SCHEDULER_PLUGINS_VERSION
bin="$cache/bin/scheduler-plugins-$version"
src="$cache/src/scheduler-plugins-$version"


mkdir -p "$cache" "$bin" "$src"
go_lock

moddir="$GOMODCACHE/sigs.k8s.io/scheduler-plugins@$version"
[[ -f $moddir/go.mod ]] || (cd "$src" && go mod download "sigs.k8s.io/scheduler-plugins@$version")

if [[ -n ${SCHEDULER_PLUGINS_BIN:-} ]]; then
  [[ -x $SCHEDULER_PLUGINS_BIN ]] || { log "SCHEDULER_PLUGINS_BIN=$SCHEDULER_PLUGINS_BIN is not executable"; exit 1; }
  log "kube-scheduler (scheduler-plugins): supplied by the environment, not built"
elif [[ -x $bin/kube-scheduler ]]; then
  log "kube-scheduler (scheduler-plugins): cached in $bin"
else
  start=$(date +%s)
  if [[ ! -f $src/go.mod ]]; then
    {
      echo "module kubetrain.local/schedulerplugins"
      echo
      echo "go $(sed -n 's/^go //p' "$moddir/go.mod")"
      echo
      echo "require sigs.k8s.io/scheduler-plugins $version"
      echo
      # every replace line of the module (block or single), version replaces only
      awk '/^replace \(/{r=1;next} r&&/^\)/{r=0;next} r{print "replace " $0} /^replace [^(]/{print}' "$moddir/go.mod" |
        grep -E '=> [^ ]+ v[0-9]' | sed 's/^replace[[:space:]]*/replace /'
    } >"$src/go.mod.tmp"
    mv "$src/go.mod.tmp" "$src/go.mod"
  fi
  log "building sigs.k8s.io/scheduler-plugins/cmd/scheduler@$version (GOCACHE=$GOCACHE)"
  (cd "$src" && go build -p "${KUBETRAIN_BUILD_JOBS:-2}" -trimpath -ldflags "-s -w" \
    -o "$bin/kube-scheduler.tmp" sigs.k8s.io/scheduler-plugins/cmd/scheduler)
  mv -f "$bin/kube-scheduler.tmp" "$bin/kube-scheduler"
  log "built in $(( ($(date +%s) - start) / 60 ))m$(( ($(date +%s) - start) % 60 ))s"
fi
echo "$moddir"
