#!/usr/bin/env bash
# local-base.sh [TAG]: make the CPU image's base (Debian 12 + Python 3.11 + venv) from Debian packages alone,
# for hosts that reach Debian's mirror but no container registry. Prints the image name on stdout.
#
#   podman build --format docker --network host --build-arg VARIANT=cpu \
#       --build-arg CPU_BASE_IMAGE="$(bash deploy/docker/local-base.sh)" -t stya2k-serve:cpu .
#
# The image is what python:3.11-slim-bookworm gives the Dockerfile (python3 with venv, useradd, sha256sum),
# made by debootstrap (minbase) and `podman import`. The host's CA bundle is trusted inside it, so pip and apt
# in the build work behind a TLS-intercepting proxy too. Cached: an image already present under TAG is
# reused (delete it with `podman rmi TAG` to remake it). Needs root, debootstrap and podman.
#
#   STYA2K_DEBIAN_MIRROR   Debian mirror (default: http://deb.debian.org/debian)
#   STYA2K_BASE_PACKAGES   extra packages, comma-separated (default: none)
set -euo pipefail

# Bump the suffix when the recipe below changes, so hosts with the old image cached make the new one.
tag=${1:-localhost/stya2k-base:bookworm-py311-1}
mirror=${STYA2K_DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=python3,python3-venv,ca-certificates${STYA2K_BASE_PACKAGES:+,$STYA2K_BASE_PACKAGES}

log() { echo "local-base: $*" >&2; }

if podman image exists "$tag"; then
    log "$tag is cached"
    echo "$tag"
    exit 0
fi
[ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }
command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }

work=$(mktemp -d /var/tmp/stya2k-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs

log "debootstrap bookworm ($packages) from $mirror"
started=$(date +%s)
debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }

# The host's CA bundle, one certificate per file, added to the image's trust store (duplicates of Debian's own
# certificates are harmless). A later update-ca-certificates in a derived image keeps them.
host_bundle=/etc/ssl/certs/ca-certificates.crt
if [ -f "$host_bundle" ]; then
    mkdir -p "$rootfs/usr/local/share/ca-certificates/host"
    awk -v dir="$rootfs/usr/local/share/ca-certificates/host" '
        /-----BEGIN CERTIFICATE-----/ { n++; file = sprintf("%s/host-%04d.crt", dir, n) }
        file { print > file }
        /-----END CERTIFICATE-----/ { close(file); file = "" }' "$host_bundle"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1 || { log "update-ca-certificates failed"; exit 1; }
fi

# What a slim base leaves out: package caches and lists, documentation, man pages, locales other than C.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
# Debian's sources for apt-get in derived images (debootstrap writes only the main suite).
cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF

tar -C "$rootfs" --numeric-owner -cf "$work/rootfs.tar" .
podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap bookworm minbase + $packages" \
    "$work/rootfs.tar" "$tag" >/dev/null
log "made $tag in $(($(date +%s) - started)) s"
echo "$tag"
