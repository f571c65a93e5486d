#!/usr/bin/env bash
# Installs Debian's podman, buildah and runc (+ debootstrap, which makes the local base image where no container
# registry is reachable) for the container tests (tests/deploy/test_containers.py) when podman is not there yet.
# runc, not crun: crun refused to start containers on the hybrid-cgroup CI hosts (docs/DEPLOY.md). Idempotent;
# without root or apt-get it installs nothing and the container tests skip with their reason.
set -euo pipefail

if command -v podman >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-containers: not root or no apt-get; podman not installed, the container tests will skip" >&2
    exit 0
fi
bash "$(dirname "$0")/apt-install.sh" podman buildah runc debootstrap
echo "install-containers: $(podman --version), $(buildah --version | cut -d' ' -f1-3), $(runc --version | head -n 1)"
