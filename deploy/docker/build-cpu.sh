#!/usr/bin/env bash
# build-cpu.sh [TAG]: build the CPU image with podman from the unchanged Dockerfile (build arguments only), on
# hosts with or without a container registry and with or without download.pytorch.org (docs/DEPLOY.md).
#
#   base image   python:3.11-slim-bookworm when it is present or can be pulled; otherwise made locally from
#                Debian packages by deploy/docker/local-base.sh (cached in podman's image store).
#   torch        from a local wheel directory when one holds the pinned CPU wheel (STYA2K_TORCH_WHEELS, else
#                pip's configured find-links), served to the build as a one-package index on 127.0.0.1;
#                otherwise from the Dockerfile's default index (download.pytorch.org/whl/cpu).
#
# Builds in the docker format (the OCI format has no HEALTHCHECK), with the host's network (the loopback
# index) and explicit ulimits (runc refuses podman's defaults where they exceed the host's hard limits).
# Prints timing lines on stderr and the image tag on stdout. Exits 77 when a prerequisite is missing (no podman,
# no way to get a base image, no torch source), so callers such as tests/deploy/test_containers.py can skip.
#
#   STYA2K_CPU_BASE_IMAGE   use this base image as it is (skips the pull / local base)
#   STYA2K_TORCH_WHEELS     directory holding torch-<pin>+cpu-*.whl
#   STYA2K_TORCH_INDEX_PORT port of the local index on 127.0.0.1 (default 47819)
#   STYA2K_REGISTRY_TIMEOUT seconds to wait for a registry pull (default 60)
set -euo pipefail
cd "$(dirname "$0")/../.."

tag=${1:-localhost/stya2k-serve:cpu}
registry_base=docker.io/library/python:3.11-slim-bookworm
log() { echo "build-cpu: $*" >&2; }

missing() { log "$*"; exit 77; }
command -v podman >/dev/null || missing "podman is not installed (apt-get install podman buildah runc)"
# The host's own open-files hard limit (podman's default, 1048576, is refused where it is higher) and a process
# limit far above what a build or a replica runs.
nofile=$(ulimit -Hn)
[ "$nofile" != unlimited ] || nofile=1048576
ulimits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=4096:4096")

pick_base() {
    if [ -n "${STYA2K_CPU_BASE_IMAGE:-}" ]; then
        echo "$STYA2K_CPU_BASE_IMAGE"
    elif podman image exists "$registry_base" \
        || timeout "${STYA2K_REGISTRY_TIMEOUT:-60}" podman pull -q "$registry_base" >/dev/null 2>&1; then
        echo "$registry_base"
    else
        log "$registry_base cannot be pulled: making the base from Debian packages"
        if [ "$(id -u)" != 0 ] || ! command -v debootstrap >/dev/null; then
            missing "no registry and no way to make a local base (needs root and debootstrap)"
        fi
        bash deploy/docker/local-base.sh
    fi
}

torch_pin() { python3 -c "import tomllib; print(next(d for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'] if d.startswith('torch==')).split('==')[1])"; }

find_torch_wheel() {
    local version dirs dir wheel
    version=$(torch_pin)
    dirs=${STYA2K_TORCH_WHEELS:-${PIP_FIND_LINKS:-$(pip config get global.find-links 2>/dev/null || true)}}
    for dir in $dirs; do
        dir=${dir#file://}
        for wheel in "$dir"/torch-"$version"+cpu-*.whl; do
            [ -f "$wheel" ] && { echo "$wheel"; return 0; }
        done
    done
    return 0
}

base=$(pick_base)
build_args=(--build-arg VARIANT=cpu --build-arg "CPU_BASE_IMAGE=$base")

server_pid=
cleanup() { if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi; rm -rf "${index_dir:-}"; }
trap cleanup EXIT
wheel=$(find_torch_wheel)
if [ -n "$wheel" ]; then
    # A PEP 503 index of one project: http.server's directory listing of simple/torch/ is the project page.
    index_dir=$(mktemp -d)
    mkdir -p "$index_dir/simple/torch"
    ln -s "$wheel" "$index_dir/simple/torch/"
    # A fixed port, so the TORCH_INDEX_URL build argument (and with it every layer's cache key) is the same on
    # every build; a free random one only when that port is taken.
    port=${STYA2K_TORCH_INDEX_PORT:-47819}
    # (SO_REUSEADDR as http.server sets it: a port in TIME_WAIT from the previous build is free for it.)
    if ! python3 -c "import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', $port))" 2>/dev/null; then
        port=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
        log "port ${STYA2K_TORCH_INDEX_PORT:-47819} is taken: local index on $port (the dependency layers may rebuild)"
    fi
    python3 -m http.server --bind 127.0.0.1 --directory "$index_dir" "$port" >/dev/null 2>&1 &
    server_pid=$!
    for attempt in $(seq 50); do
        python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/simple/torch/')" 2>/dev/null && break
        [ "$attempt" != 50 ] || { log "the local torch index on 127.0.0.1:$port did not come up"; exit 1; }
        sleep 0.1
    done
    build_args+=(--build-arg "TORCH_INDEX_URL=http://127.0.0.1:$port/simple")
    log "torch from $wheel (local index on 127.0.0.1:$port)"
elif ! python3 -c "import socket; socket.getaddrinfo('download.pytorch.org', 443)" 2>/dev/null; then
    missing "no local torch-$(torch_pin)+cpu wheel (STYA2K_TORCH_WHEELS or pip's find-links) and download.pytorch.org does not resolve"
fi

log "building $tag on $base"
started=$(date +%s)
podman build --format docker --network host "${ulimits[@]}" "${build_args[@]}" -t "$tag" . >&2
log "built $tag in $(($(date +%s) - started)) s ($(podman image inspect --format '{{.Size}}' "$tag") bytes)"
echo "$tag"
