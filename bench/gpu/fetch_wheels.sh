#!/usr/bin/env bash
# Fill the git-ignored .whl/ with what bench/gpu/inference_lease.sh installs offline on the GPU lease box:
#   .whl/*.whl     wheels of bench/gpu/requirements-lease.txt for CPython 3.12 (the box's python3, 3.12.3 when
#                  last seen), x86-64 manylinux; PY_VERSIONS="3.12 3.13" adds another python's compiled wheels
#                  (2 MiB each) if the box's image moves on
#   .whl/lpips/    the two LPIPS weight files (from ../shared/weights/lpips) for the precision tests
# Run it here, on a machine with PyPI access, from anywhere:  bash bench/gpu/fetch_wheels.sh
# Environment: PYTHON (default .venv/bin/python), PY_VERSIONS (default "3.12"), LPIPS_SRC, NO_LPIPS=1.
# Then name `.whl` in the run's carry list (docs/BENCHMARKS.md, "GPU lease (issue 14)").
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
python="${PYTHON:-$repo/.venv/bin/python}"
dest="$repo/.whl"
requirements="$repo/bench/gpu/requirements-lease.txt"
lpips_src="${LPIPS_SRC:-$repo/../shared/weights/lpips}"
mkdir -p "$dest"
rm -f "$dest"/*.whl  # exactly the listed pins: a stale wheel would travel (and count) for nothing

# pip matches manylinux_2_N exactly, so name every N a current wheel may be tagged with.
platforms=()
for tag in manylinux_2_17 manylinux2014 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 \
           manylinux_2_34 manylinux_2_35 manylinux_2_39; do
    platforms+=(--platform "${tag}_x86_64")
done
for version in ${PY_VERSIONS:-3.12}; do
    # --no-deps: the list already is the closure minus what the box has (torch, pillow); one version each.
    "$python" -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version "$version" \
        "${platforms[@]}" -d "$dest" -r "$requirements"
done

if [[ -z "${NO_LPIPS:-}" ]]; then
    if [[ -f "$lpips_src/alexnet_features.pth" && -f "$lpips_src/alex_linear_v0.1.pth" ]]; then
        mkdir -p "$dest/lpips"
        cp "$lpips_src/alexnet_features.pth" "$lpips_src/alex_linear_v0.1.pth" "$dest/lpips/"
    else
        echo "fetch_wheels: no LPIPS weights in $lpips_src; the precision tests will report LPIPS as missing" >&2
    fi
fi

# Everything must resolve offline against the box's own packages, and the carried tree must fit the 64 MiB.
"$python" -m bench.gpu.lease_check wheels --wheel-dir "$dest" --requirements "$requirements"
"$python" -m bench.gpu.lease_check size --carry .whl
