#!/usr/bin/env bash
# Makes the Dockerfile's runtime base image (docker.io/library/debian:bookworm-slim) without a
# registry, for tests/it/container.rs on machines that cannot pull: a minimal Debian root file
# system from debootstrap (trimmed like the slim image: no docs, man pages or locales),
# imported with `podman import`. Idempotent: an image already there is kept, and the root file
# system tarball is cached under target/container/ so a rerun only imports it.
#   usage: deploy/container/base-image.sh [CACHE_DIR]   (default target/container)
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=docker.io/library/debian:bookworm-slim
CACHE="${1:-target/container}"
if podman image exists "$IMAGE"; then
    echo "base image $IMAGE: present"
    exit 0
fi
mkdir -p "$CACHE"
TAR="$CACHE/bookworm-minbase.tar"
if [ ! -s "$TAR" ]; then
    # The mirror apt already uses on this machine (deb822 or one-line sources).
    MIRROR=$(grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')
    [ -n "$MIRROR" ] || MIRROR=$(grep -hoE '^deb +\S+' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
    ROOT="$CACHE/rootfs.tmp"
    rm -rf "$ROOT"
    echo "debootstrap --variant=minbase bookworm from $MIRROR"
    timeout 900 debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
    rm -rf "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
        "$ROOT"/usr/share/locale/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/lib/apt/lists/* \
        "$ROOT"/var/cache/debconf/*-old "$ROOT"/var/log/*.log
    tar -C "$ROOT" -cf "$TAR.tmp" .
    mv "$TAR.tmp" "$TAR"
    rm -rf "$ROOT"
fi
timeout 300 podman import "$TAR" "$IMAGE" >/dev/null
echo "base image $IMAGE: imported from $TAR"
