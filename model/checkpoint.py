"""Every file of the network's weights: release checkpoints that carry their own config, the trainable state they
hold, the training-state format, atomic saves, and the sha256 manifest of shipped weights (`weights/MANIFEST`).
The network itself knows no files.

Release file format (a `torch.save` dict loadable with `weights_only=True`)::

    {"format_version": 1, "config": ModelConfig.to_dict(), "state_dict": {name: tensor} (trainable parts only),
     "state_sha256": digest of the tensors (see `state_digest`), "meta": {...}}

`meta` holds plain Python types only: version, iterations, data summary, ... A training state (written by
`training.train`, read by `training.export`) is a dict with ``"format": TRAIN_STATE_FORMAT`` and
``"version": TRAIN_STATE_VERSION``; its "model" entry is a `trainable_state_dict`.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.config import ATTENTION_TAPS, ModelConfig
from model.stya2k import StyA2K

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
TRAIN_STATE_FORMAT = "stya2k-train-state"
TRAIN_STATE_VERSION = 1
# The frozen VGG encoder is rebuilt from its own pinned weights (model.encoder), never stored in a checkpoint.
FROZEN_PREFIX = "encoder."
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
MANIFEST_NAME = "MANIFEST"
# Preference order of the shipped defaults: the GPU-trained release first, the CPU-trained stand-in after it.
DEFAULT_CANDIDATES = ("stya2k-v1.pt", "stya2k-v0.6-cpu.pt", "stya2k-v0.5-cpu.pt", "stya2k-v0.4-cpu.pt",
                      "stya2k-v0.3-cpu.pt", "stya2k-v0.2-cpu.pt", "stya2k-v0.1-cpu.pt",
                      "stya2k-v0-cpu.pt")  # newest first


class CheckpointError(RuntimeError):
    """A weights file is missing, corrupt, altered or not a StyA2K checkpoint."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` beside ``path``, then rename it over ``path``: a crash never leaves a half-written file
    under the real name."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def atomic_save(obj: object, path: Path) -> None:
    """`torch.save` through `atomic_write`."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _parse_manifest(path: Path) -> tuple[dict[str, str], list[str]]:
    """A `sha256sum`-format manifest file -> ({file name: sha256}, its comment lines); empty when there is none."""
    if not path.is_file():
        return {}, []
    entries, comments = {}, []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if line.startswith("#"):
            comments.append(line)
            continue
        if not line:
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise CheckpointError(f"{path}:{line_no}: expected '<sha256>  <file name>', got {line!r}")
        entries[parts[1].lstrip("*")] = parts[0].lower()
    return entries, comments


def read_manifest(directory: Path) -> dict[str, str]:
    """The MANIFEST of ``directory`` -> {file name: sha256}; {} when there is none."""
    return _parse_manifest(directory / MANIFEST_NAME)[0]


def write_manifest_entry(path: Path, digest: str, manifest: Path | None = None) -> None:
    """Add or replace `path`'s line in ``manifest`` (default: the MANIFEST beside it); other entries and comments
    stay, entries sorted by name."""
    manifest = manifest or path.parent / MANIFEST_NAME
    entries, comments = _parse_manifest(manifest)
    entries[path.name] = digest
    lines = [*comments, *(f"{sha}  {name}" for name, sha in sorted(entries.items()))]
    atomic_write(manifest, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))


def verify_against_manifest(path: Path) -> str:
    """sha256 of `path`; raises if the MANIFEST beside it lists the file with another digest."""
    digest = sha256_file(path)
    expected = read_manifest(path.parent).get(path.name)
    if expected is None:
        log.info("%s is not listed in a MANIFEST; sha256 %s", path, digest)
    elif expected != digest:
        raise CheckpointError(
            f"{path} has sha256 {digest} but {path.parent / MANIFEST_NAME} expects {expected}: "
            "the file is corrupt or was replaced; restore it (git checkout / re-download) or update the manifest"
        )
    return digest


def default_weights_path(directory: Path = WEIGHTS_DIR) -> Path:
    """The shipped default weights: the first of DEFAULT_CANDIDATES that is listed in the manifest and present."""
    listed = read_manifest(directory)
    for name in DEFAULT_CANDIDATES:
        if name in listed and (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"no shipped weights found in {directory} (looked for {', '.join(DEFAULT_CANDIDATES)})")


def default_cache_dir() -> Path:
    """$STYA2K_CACHE, else $XDG_CACHE_HOME/stya2k, else ~/.cache/stya2k: outside the work tree. Here, with the
    weights' location, because the service keeps its exported graphs there and training its packs and campaigns."""
    if os.environ.get("STYA2K_CACHE"):
        return Path(os.environ["STYA2K_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "stya2k"


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes of a state dict: detects corruption inside the file,
    which `torch.load` does not (it does not check the zip CRCs)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(ctypes.string_at(tensor.data_ptr(), tensor.numel() * tensor.element_size()))
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """Meta must load under weights_only=True: keep plain Python types, stringify the rest (e.g. TorchVersion)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or type(value) in (bool, int, float, str):
        return value
    return str(value)


def trainable_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint stores of a network: its state without the frozen encoder."""
    return {k: v for k, v in net.state_dict().items() if not k.startswith(FROZEN_PREFIX)}


def load_trainable_state(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a `trainable_state_dict` into ``net``; every key but the frozen encoder's must match."""
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(FROZEN_PREFIX)]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not fit the network: missing {missing}, unexpected {unexpected}")


def is_train_state(state: object) -> bool:
    """Whether a loaded file is a training state (written by training.train) rather than release weights."""
    return (isinstance(state, dict) and state.get("format") == TRAIN_STATE_FORMAT
            and state.get("version") == TRAIN_STATE_VERSION)


def save_checkpoint(model: StyA2K, path: str | Path, *, half: bool = True, meta: dict[str, Any] | None = None) -> str:
    """Write the trainable weights with config and meta; returns the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in trainable_state_dict(model).items()}
    payload = {"format_version": FORMAT_VERSION, "config": model.config.to_dict(), "state_dict": state,
               "state_sha256": state_digest(state), "meta": _plain(dict(meta or {}))}
    atomic_save(payload, path)
    return sha256_file(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", verify_manifest: bool = True) -> StyA2K:
    """Build the network a release file describes, with its weights and meta, on ``map_location`` in eval mode.

    Raises CheckpointError naming what is wrong: a missing or unreadable file, a manifest mismatch, corrupt
    tensors, a bad config, or weights that do not fit the config."""
    path = Path(path)
    _check_is_file(path)
    digest = verify_against_manifest(path) if verify_manifest else sha256_file(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, IndexError,
            KeyError, OSError, struct.error) as exc:
        # torch's own text suggests weights_only=False, which would execute code from the file: not repeated.
        with path.open("rb") as f:
            head = f.read(16)
        if not head.startswith(b"PK\x03\x04"):
            detail = f"it is not a PyTorch file (those are zip archives; this one starts with {head[:12]!r})"
        else:
            text = "" if isinstance(exc, pickle.UnpicklingError) else str(exc).strip()
            reason = f"{type(exc).__name__}: {text.splitlines()[0][:160]}" if text else type(exc).__name__
            detail = f"torch.load cannot read it ({reason})"
        raise CheckpointError(
            f"{path} is not a readable checkpoint: {detail}; "
            "expected a .pt file written by `stya2k train` (model.checkpoint.save_checkpoint)"
        ) from exc
    if not isinstance(payload, dict) or "state_dict" not in payload or "config" not in payload:
        raise CheckpointError(f"{path} is not a StyA2K checkpoint (expected keys 'config' and 'state_dict')")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {payload.get('format_version')}, expected {FORMAT_VERSION}")
    if not isinstance(payload["state_dict"], dict) or not all(
        isinstance(v, torch.Tensor) for v in payload["state_dict"].values()
    ):
        raise CheckpointError(f"{path} is not a StyA2K checkpoint: 'state_dict' is not a mapping of names to tensors")
    if payload.get("state_sha256") != state_digest(payload["state_dict"]):
        raise CheckpointError(f"{path} is corrupt: its tensors do not match the digest stored at save time")
    _check_config(path, payload["config"])
    try:
        model = StyA2K(ModelConfig.from_dict(payload["config"]))
    except Exception as exc:  # whatever the model's constructor trips over is a bad config in this file
        raise CheckpointError(f"{path} has an invalid config ({type(exc).__name__}: {exc})") from exc
    expected = trainable_state_dict(model)
    state = payload["state_dict"]
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        raise CheckpointError(f"{path} has tensors of the wrong shape: {bad[:5]}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    model.meta = {**payload.get("meta", {}), "sha256": digest, "path": str(path)}
    return model.to(map_location).eval()


def _check_is_file(path: Path) -> None:
    """A clear message for each way a weights path can be wrong (read before hashing: /dev/zero never ends)."""
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.pt"))[:5]
        hint = f"; it holds {', '.join(found)}" if found else ""
        raise CheckpointError(f"weights path {path} is a directory; give the checkpoint file (.pt){hint}")
    if path.exists() and not path.is_file():
        raise CheckpointError(f"weights path {path} is not a regular file (a device, pipe or socket); give a .pt file")
    if not path.exists():
        raise CheckpointError(f"weights file {path} does not exist")


def _check_config(path: Path, config: Any) -> None:
    """Check a checkpoint's config before building a model from it, naming the bad field."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} has an invalid config: expected a mapping, got {type(config).__name__}")
    attention = config.get("attention", {})
    if not isinstance(attention, dict):
        raise CheckpointError(f"{path} has an invalid config: 'attention' must be a mapping")
    heads = attention.get("heads", 8)
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise CheckpointError(f"{path} has an invalid config: attention.heads={heads!r}; it must be an integer >= 1")
    blocks = attention.get("block_sizes")
    if config.get("arch", "a2k") != "a2k" or blocks is None:
        return  # only all-to-key attention uses block sizes; absent = the defaults
    if not isinstance(blocks, dict):
        raise CheckpointError(
            f"{path} has an invalid config: attention.block_sizes must map {', '.join(ATTENTION_TAPS)} to sizes"
        )
    for tap in ATTENTION_TAPS:
        size = blocks.get(tap)
        if size is None:
            raise CheckpointError(
                f"{path} has an invalid config: attention.block_sizes has no size for {tap}; "
                f"it needs one for each of {', '.join(ATTENTION_TAPS)}"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise CheckpointError(
                f"{path} has an invalid config: attention.block_sizes[{tap!r}]={size!r}; it must be an integer >= 1"
            )


def load_model(weights: str | Path | None = None, device: str | torch.device = "cpu") -> StyA2K:
    """Load `weights` (default: the shipped weights) onto `device`, in eval mode."""
    path = Path(weights) if weights is not None else default_weights_path()
    return load_checkpoint(path, map_location=device)
