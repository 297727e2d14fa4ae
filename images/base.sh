#!/usr/bin/env bash
# The images' base here: Debian bookworm's python3 (3.11) made with debootstrap, because the
# official python image cannot be pulled on these machines. Prints the image name.
#
#   bash images/base.sh      # reuses the image in buildah's store, else the cached root
#                            # filesystem tarball, else runs debootstrap (about 1-4 min)
# Cache: $KUBETRAIN_CACHE/images/ (default ~/.cache/kubetrain/images). DEBIAN_MIRROR overrides
# the mirror. Needs root, buildah and debootstrap.
set -euo pipefail
# The whole script is one compound command: bash reads it completely before running any of it,
# so editing this file while it runs (a long build) cannot change what runs.
{

CACHE="${KUBETRAIN_CACHE:-$HOME/.cache/kubetrain}/images"
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates
# The tag names what is in it; bump the suffix when PACKAGES or the clean-up change.
NAME="localhost/kubetrain/debian-python:${SUITE}-1"
TARBALL="$CACHE/debian-${SUITE}-python3-1.tar"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

log() { echo "[base] $*" >&2; }

if buildah inspect --type image "$NAME" >/dev/null 2>&1; then
  echo "$NAME"
  exit 0
fi

mkdir -p "$CACHE"
if [[ ! -s "$TARBALL" ]]; then
  command -v debootstrap >/dev/null || { log "needs debootstrap: apt-get install debootstrap"; exit 2; }
  root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  log "debootstrap $SUITE ($PACKAGES) from $MIRROR"
  start=$SECONDS
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 ||
    { tail -20 "$root.log" >&2; log "debootstrap failed (log: $root.log)"; exit 1; }
  rm -f "$root.log"
  # What a container never needs: downloaded packages, package lists, docs, manuals, translations.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/* "$root"/root/.cache
  # ...and packages installed later keep them out too (like the official slim images).
  cat >"$root/etc/dpkg/dpkg.cfg.d/01-container-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CFG
  tar -C "$root" --numeric-owner --xattrs -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  rm -rf "$root"
  trap - EXIT
  log "root filesystem $(du -sh "$TARBALL" | cut -f1) in $((SECONDS - start)) s: $TARBALL"
fi

ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
mnt=$(buildah mount "$ctr")
tar -C "$mnt" --numeric-owner --xattrs -xpf "$TARBALL"
buildah umount "$ctr" >/dev/null
buildah config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 \
  --cmd python3 \
  --label org.opencontainers.image.title="debian-python" \
  --label org.opencontainers.image.description="Debian $SUITE minbase with $PACKAGES (debootstrap)" \
  "$ctr"
buildah commit --quiet --rm "$ctr" "$NAME" >/dev/null
trap - EXIT
log "imported $NAME"
echo "$NAME"
exit
}
