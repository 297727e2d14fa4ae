# Sourced by the build scripts of the test tiers: the Go environment they share. Caches under
# ${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain} (nothing depends on them), modules from the Go
# module proxy, the machine's own Go (no toolchain download), static binaries.
# shellcheck shell=bash
cache=${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}
export PATH="/usr/local/go/bin:$PATH"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
export GOCACHE="${KUBETRAIN_GOCACHE:-$cache/go/build}"
export GOMODCACHE="${KUBETRAIN_GOMODCACHE:-$cache/go/mod}"
export GOPROXY="${GOPROXY:-https://proxy.golang.org}"
export GOSUMDB="${GOSUMDB:-sum.golang.org}"

# log MSG: one line on stderr, prefixed with the building script's name and the time
log() { printf '[%s %s] %s\n' "${0##*/}" "$(date +%H:%M:%S)" "$*" >&2; }

# go_lock: one Go build at a time per cache (fd 9 held until the script exits)
go_lock() {
  command -v go >/dev/null || { echo "go not found (expected /usr/local/go/bin/go)" >&2; exit 1; }
  mkdir -p "$cache"
  exec 9>"$cache/build.lock"
  flock 9
}
