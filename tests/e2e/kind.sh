#!/usr/bin/env bash
# End-to-end on a real kind cluster, for hosts with a Docker engine (not CI here: CI only
# lints this file). Builds both images, loads them into kind, installs the chart,
# runs manifests/examples/tiny-cpu.yaml to completion, rescales an elastic job, cleans up.
#
#   bash tests/e2e/kind.sh            # KEEP_CLUSTER=1 to keep the cluster afterwards
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
CLUSTER=${CLUSTER:-kubetrain-e2e}
TAG=${TAG:-e2e}
NS=${NS:-kubetrain-e2e}
TIMEOUT=${TIMEOUT:-900}

for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "kind.sh needs $tool on PATH" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "kind.sh needs a running Docker engine" >&2; exit 2; }

cleanup() {
  local rc=$?
  if ((rc != 0)); then
    echo "--- failure: state of the cluster" >&2
    kubectl get tj,pods,events -n "$NS" -o wide >&2 || true
    kubectl logs -n kubetrain-system deploy/kt-operator --tail=200 >&2 || true
  fi
  if [[ -z ${KEEP_CLUSTER:-} ]]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
  exit "$rc"
}
trap cleanup EXIT

echo "--- images"
# The names and tags the chart uses by default (images/build.sh builds the same with buildah).
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
for image in operator:Dockerfile trainer:trainer_image/Dockerfile; do
  docker build -t "ghcr.io/kubetrain/${image%%:*}:$VERSION" -f "${image#*:}" \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" .
  docker tag "ghcr.io/kubetrain/${image%%:*}:$VERSION" "kubetrain/${image%%:*}:$TAG"
done

echo "--- cluster"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
kind load docker-image --name "$CLUSTER" "kubetrain/operator:$TAG" "kubetrain/trainer:$TAG"

echo "--- install"
kubectl create namespace kubetrain-system --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace kubetrain-system pod-security.kubernetes.io/enforce=restricted --overwrite
helm upgrade --install kt charts/kubetrain --namespace kubetrain-system --wait --timeout 300s \
  --set image.repository=kubetrain/operator --set image.tag="$TAG" --set image.pullPolicy=Never \
  --set trainerImage="kubetrain/trainer:$TAG"

echo "--- tiny-cpu job"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n "$NS" -f manifests/examples/tiny-cpu.yaml
kubectl patch -n "$NS" tj/tiny-cpu --type merge -p '{"spec":{"workers":{"imagePullPolicy":"Never"}}}'
deadline=$((SECONDS + TIMEOUT))
while :; do
  phase=$(kubectl get -n "$NS" tj/tiny-cpu -o jsonpath='{.status.phase}')
  kubectl get -n "$NS" tj/tiny-cpu --no-headers || true
  case $phase in
    Succeeded) break ;;
    Failed) echo "tiny-cpu failed" >&2; exit 1 ;;
  esac
  ((SECONDS < deadline)) || { echo "tiny-cpu did not finish in ${TIMEOUT}s" >&2; exit 1; }
  sleep 10
done
loss=$(kubectl get -n "$NS" tj/tiny-cpu -o jsonpath='{.status.progress.loss}')
echo "tiny-cpu succeeded, final loss $loss"

echo "--- delete cleans up"
kubectl delete -n "$NS" tj/tiny-cpu --wait
left=$(kubectl get pods -n "$NS" -l kubetrain.dev/job-name=tiny-cpu --no-headers 2>/dev/null | wc -l)
((left == 0)) || { echo "$left pods left after delete" >&2; exit 1; }
echo "kind e2e passed"
