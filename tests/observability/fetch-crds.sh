#!/usr/bin/env bash
# Fetch the Prometheus Operator's own CRDs (ServiceMonitor, PodMonitor, PrometheusRule, ...) as
# published in its Go module (example/prometheus-operator-crd/) through the Go module proxy into
#   ${KUBETRAIN_GOMODCACHE:-${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}/go/mod}
# The observability tests install them into the test API server to `kubectl apply --dry-run=server`
# the chart's monitoring objects. Idempotent; the last line printed is the CRD directory.
set -euo pipefail

PROMETHEUS_OPERATOR_VERSION=${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}
cache=${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}
export PATH="/usr/local/go/bin:$PATH"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
export GOMODCACHE="${KUBETRAIN_GOMODCACHE:-$cache/go/mod}"
export GOPROXY="${GOPROXY:-https://proxy.golang.org}"
export GOSUMDB="${GOSUMDB:-sum.golang.org}"

dir="$GOMODCACHE/github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION/example/prometheus-operator-crd"
if [[ ! -f $dir/monitoring.coreos.com_servicemonitors.yaml ]]; then
  command -v go >/dev/null || { echo "go not found (expected /usr/local/go/bin/go)" >&2; exit 1; }
  (cd "$(mktemp -d)" && go mod download "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")
fi
[[ -f $dir/monitoring.coreos.com_servicemonitors.yaml ]] || { echo "no CRDs in $dir" >&2; exit 1; }
echo "$dir"
