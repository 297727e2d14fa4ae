#!/usr/bin/env bash
# Build the two programs the real-node tier (tests/node) runs besides the product's images, from
# the Go module proxy, into ${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}/bin/node-<versions>/:
#   coredns  CoreDNS (COREDNS_VERSION) with only the plugins cluster DNS needs (errors, health,
#            ready, kubernetes, cache, loadbalance): a smaller build than the full server
#   pause    the sandbox container's process (pause/main.go, this repository's own)
# tests/node/images.py wraps each into a one-layer OCI image for containerd. Idempotent.
# The last line printed is the bin directory.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/cluster/versions.env
source "$here/../cluster/versions.env"
# shellcheck source=tests/cluster/goenv.sh
source "$here/../cluster/goenv.sh"

bin="$cache/bin/node-coredns-${COREDNS_VERSION}"
src="$cache/src/node-coredns-${COREDNS_VERSION}"

if [[ -x $bin/coredns && -x $bin/pause && $bin/pause -nt $here/pause/main.go ]]; then
  log "cached in $bin"
  echo "$bin"
  exit 0
fi
go_lock
start=$(date +%s)
mkdir -p "$bin" "$src/coredns"
cat >"$src/coredns/main.go" <<'GO'
// CoreDNS with the plugins cluster DNS needs, in the order CoreDNS's own plugin.cfg runs them.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{"errors", "health", "ready", "cache", "loadbalance", "kubernetes"}
}

func main() { coremain.Run() }
GO
if [[ ! -f $src/go.mod ]]; then
  (cd "$src" && go mod init kubetrain.local/nodeimages >/dev/null 2>&1 &&
    go get "github.com/coredns/coredns@$COREDNS_VERSION" >/dev/null)
fi
(cd "$src" && go mod tidy >/dev/null)
log "building coredns $COREDNS_VERSION and pause"
(cd "$src" && go build -p "${KUBETRAIN_BUILD_JOBS:-2}" -trimpath -ldflags "-s -w" -o "$bin/coredns.tmp" ./coredns)
mv -f "$bin/coredns.tmp" "$bin/coredns"
(cd "$here/pause" && GOFLAGS='' go build -trimpath -ldflags "-s -w" -o "$bin/pause" .)
log "built in $(($(date +%s) - start)) s"
echo "$bin"
