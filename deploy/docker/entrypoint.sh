#!/bin/sh
# Container entry point: refuse to start on weights that do not match their sha256 manifest, then hand
# over to the service (exec, so the service is the process that receives SIGTERM and drains).
#
#   STYA2K_WEIGHTS unset     the image's weights directory (baked in, or a volume mounted over it): its
#                            MANIFEST (sha256sum format) must verify, with at least one listed file present.
#   STYA2K_WEIGHTS=<path>    a weights file (e.g. on a mounted volume): the MANIFEST beside it must list it
#                            with the file's sha256.
#   STYA2K_WEIGHTS=random    untrained model for smoke tests; nothing to verify.
#
# Threads: with STYA2K_THREADS unset (or 0), each replica gets its share of the CPUs this container may use
# (affinity, and the cgroup CPU quota where one is set) divided by REPLICAS_PER_HOST (default 1), at least 1.
# Replicas on one host that each take every core slow each other down (measured in docs/DEPLOY.md);
# docker-compose.yml passes its replica count here. REPLICAS_PER_HOST is not a service setting and is
# removed from the environment before the service starts.
set -eu

# The service reads every STYA2K_* variable and refuses unknown ones, so this path is not configurable here.
weights_dir=/app/weights

fail() {
    echo "entrypoint: $*" >&2
    exit 1
}

verify_directory() {
    [ -f "$1/MANIFEST" ] || fail "no $1/MANIFEST: bake weights into the image or mount a directory with weights and MANIFEST over $1"
    (cd "$1" && sha256sum --check --strict --ignore-missing --quiet MANIFEST) \
        || fail "weights in $1 do not match $1/MANIFEST (corrupt or replaced file, or none of the listed files present)"
}

verify_file() {
    [ -f "$1" ] || fail "STYA2K_WEIGHTS=$1 does not exist (is the volume mounted?)"
    dir=$(dirname "$1")
    name=$(basename "$1")
    [ -f "$dir/MANIFEST" ] || fail "no MANIFEST beside $1: add '<sha256>  $name' to $dir/MANIFEST"
    expected=$(awk -v n="$name" '$2 == n || $2 == "*" n { print $1 }' "$dir/MANIFEST")
    [ -n "$expected" ] || fail "$dir/MANIFEST does not list $name"
    actual=$(sha256sum "$1" | cut -d' ' -f1)
    [ "$expected" = "$actual" ] || fail "$1 has sha256 $actual but $dir/MANIFEST expects $expected"
}

# CPUs this process may run on, lowered to the cgroup's CPU quota (v2 cpu.max, v1 cfs_quota_us), rounded up.
available_cpus() {
    cpus=$(nproc)
    quota=
    period=
    if [ -r /sys/fs/cgroup/cpu.max ]; then
        read -r quota period </sys/fs/cgroup/cpu.max
    elif [ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ] && [ -r /sys/fs/cgroup/cpu/cpu.cfs_period_us ]; then
        quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)
        period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)
    fi
    case "$quota" in
        "" | max | -1) ;;
        *) limit=$(((quota + period - 1) / period)); [ "$limit" -ge "$cpus" ] || cpus=$limit ;;
    esac
    echo "$cpus"
}

replicas=${REPLICAS_PER_HOST:-1}
unset REPLICAS_PER_HOST
case "$replicas" in
    "" | *[!0-9]* | 0) fail "REPLICAS_PER_HOST=$replicas is not a positive whole number" ;;
esac
if [ "${STYA2K_THREADS:-0}" = 0 ]; then
    cpus=$(available_cpus)
    threads=$((cpus / replicas))
    [ "$threads" -ge 1 ] || threads=1
    export STYA2K_THREADS="$threads"
    echo "entrypoint: STYA2K_THREADS=$threads ($cpus CPUs / $replicas replicas per host)" >&2
fi

case "${STYA2K_WEIGHTS:-}" in
    "") verify_directory "$weights_dir" ;;
    random) echo "entrypoint: STYA2K_WEIGHTS=random: untrained model, for tests only" >&2 ;;
    *) verify_file "$STYA2K_WEIGHTS" ;;
esac

exec "$@"
