#!/usr/bin/env bash
# Build the pinned control-plane binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, helm, and kubelet + kube-proxy for the real node) from the Go module proxy into
#   ${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}/bin/<version-key>/
# Idempotent: binaries already there are reused. Binaries supplied through KUBEBUILDER_ASSETS or a
# per-binary variable (TEST_ASSET_ETCD, TEST_ASSET_KUBE_APISERVER, TEST_ASSET_KUBE_CONTROLLER_MANAGER,
# TEST_ASSET_KUBE_SCHEDULER, TEST_ASSET_KUBECTL, KWOK_BIN, HELM_BIN) are not built.
# The last line printed is the bin directory.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/cluster/versions.env
source "$here/versions.env"
# shellcheck source=tests/cluster/goenv.sh
source "$here/goenv.sh"

key="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
bin="$cache/bin/$key"
src="$cache/src/$key"


# name | go package | per-binary variable
targets=(
  "etcd|go.etcd.io/etcd/server/v3|TEST_ASSET_ETCD"
  "kube-apiserver|k8s.io/kubernetes/cmd/kube-apiserver|TEST_ASSET_KUBE_APISERVER"
  "kube-controller-manager|k8s.io/kubernetes/cmd/kube-controller-manager|TEST_ASSET_KUBE_CONTROLLER_MANAGER"
  "kube-scheduler|k8s.io/kubernetes/cmd/kube-scheduler|TEST_ASSET_KUBE_SCHEDULER"
  "kubectl|k8s.io/kubernetes/cmd/kubectl|TEST_ASSET_KUBECTL"
  "kwok|sigs.k8s.io/kwok/cmd/kwok|KWOK_BIN"
  "helm|helm.sh/helm/v3/cmd/helm|HELM_BIN"
  # the real-node tier (tests/node): a kubelet and kube-proxy joined to the same control plane
  "kubelet|k8s.io/kubernetes/cmd/kubelet|TEST_ASSET_KUBELET"
  "kube-proxy|k8s.io/kubernetes/cmd/kube-proxy|TEST_ASSET_KUBE_PROXY"
)

supplied() {  # $1 name, $2 variable: true when the binary comes from the environment
  local path=${!2:-}
  if [[ -n $path ]]; then
    [[ -x $path ]] || { log "$2=$path is not an executable file"; exit 1; }
    return 0
  fi
  [[ -n ${KUBEBUILDER_ASSETS:-} && -x ${KUBEBUILDER_ASSETS}/$1 ]]
}

names=() pkgs=()
for t in "${targets[@]}"; do
  IFS='|' read -r name pkg var <<<"$t"
  if supplied "$name" "$var"; then
    log "$name: supplied by the environment, not built"
  elif [[ -x $bin/$name ]]; then
    log "$name: cached in $bin"
  else
    names+=("$name") pkgs+=("$pkg")
  fi
done

if ((${#pkgs[@]} == 0)); then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { log "go not found (expected /usr/local/go/bin/go)"; exit 1; }
mkdir -p "$cache" "$bin" "$src"
exec 9>"$cache/build.lock"
flock 9  # one build at a time per cache

start=$(date +%s)
# The wrapper module: k8s.io/kubernetes resolves its staging modules through ./staging replace lines,
# which do not apply to a dependency, so each one becomes a replace to the published v0.X.Y.
if [[ ! -f $src/go.mod ]]; then
  log "generating wrapper module in $src"
  kmod=$(cd "$src" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [[ -f $kmod ]] || { log "could not download k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
  staging_version="v0.${K8S_VERSION#v1.}"
  {
    echo "module kubetrain.local/controlplane"
    echo
    echo "go $(sed -n 's/^go //p' "$kmod")"
    echo
    echo "require ("
    echo "	k8s.io/kubernetes $K8S_VERSION"
    echo "	go.etcd.io/etcd/server/v3 $ETCD_VERSION"
    echo "	sigs.k8s.io/kwok $KWOK_VERSION"
    echo "	helm.sh/helm/v3 $HELM_VERSION"
    echo ")"
    echo
    echo "replace ("
    # staging modules: replaced to ./staging/... AND required at v0.0.0 by k8s.io/kubernetes
    awk '/^replace \(/{r=1;next} r&&/^\)/{r=0} r&&/=> \.\/staging\//{print $1}' "$kmod" | sort |
      comm -12 - <(awk '/^require \(/{q=1;next} q&&/^\)/{q=0} q&&$2=="v0.0.0"{print $1}' "$kmod" | sort) |
      while read -r m; do echo "	$m => $m $staging_version"; done
    echo ")"
  } >"$src/go.mod.tmp"
  mv "$src/go.mod.tmp" "$src/go.mod"
fi

k8s_minor=${K8S_VERSION#v1.}
k8s_minor=${k8s_minor%%.*}
build_date=2000-01-01T00:00:00Z
ldflags=(-s -w)
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=(-X "$p.gitVersion=$K8S_VERSION" -X "$p.gitMajor=1" -X "$p.gitMinor=$k8s_minor"
    -X "$p.gitTreeState=clean" -X "$p.buildDate=$build_date")
done
ldflags+=(-X "go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"
  -X "sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}"
  -X "sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION#v}"
  -X "helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  -X "helm.sh/helm/v3/internal/version.gitTreeState=clean"
  -X "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1"
  -X "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor"
  -X "helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1"
  -X "helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor")

out="$src/out"
rm -rf "$out" && mkdir -p "$out"
log "building ${names[*]} (GOCACHE=$GOCACHE)"
(cd "$src" && go build -p "${KUBETRAIN_BUILD_JOBS:-2}" -trimpath -ldflags "${ldflags[*]}" -o "$out/" "${pkgs[@]}")
# go names a binary after its package path (go.etcd.io/etcd/server/v3 -> "server")
[[ -e $out/server ]] && mv "$out/server" "$out/etcd"
for name in "${names[@]}"; do
  [[ -x $out/$name ]] || { log "expected $out/$name after the build"; exit 1; }
  mv -f "$out/$name" "$bin/$name"
done
log "built ${names[*]} in $(( ($(date +%s) - start) / 60 ))m$(( ($(date +%s) - start) % 60 ))s"
echo "$bin"
