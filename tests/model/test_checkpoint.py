import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import CheckpointError, ModelConfig, StyA2K
from model import checkpoint as ckpt


def test_round_trip_carries_config_and_meta(tmp_path, net):
    path = tmp_path / "w.pt"
    digest = ckpt.save_checkpoint(net, path, meta={"iterations": 7})
    assert digest == ckpt.sha256_file(path)
    loaded = ckpt.load_checkpoint(path)
    assert loaded.config == net.config and loaded.meta["iterations"] == 7 and loaded.meta["sha256"] == digest
    x, s = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        # fp16 storage: outputs agree to fp16 precision of the weights.
        torch.testing.assert_close(loaded.stylize(x, s), net.stylize(x, s), atol=2e-2, rtol=0)
    assert not any(k.startswith("encoder.") for k in torch.load(path, weights_only=True)["state_dict"])


def test_manifest_mismatch_and_corruption_are_clear_errors(tmp_path, net):
    path = tmp_path / "w.pt"
    digest = ckpt.save_checkpoint(net, path)
    ckpt.write_manifest_entry(path, digest)
    assert ckpt.read_manifest(tmp_path) == {"w.pt": digest}
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or was replaced"):
        ckpt.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt.load_checkpoint(path, verify_manifest=False)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        ckpt.load_checkpoint(path, verify_manifest=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_wrong_architecture_is_rejected(tmp_path):
    path = tmp_path / "adain.pt"
    ckpt.save_checkpoint(StyA2K(ModelConfig(arch="adain")), path)
    payload = torch.load(path, weights_only=True)
    payload["config"]["arch"] = "a2k"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="does not match its config"):
        ckpt.load_checkpoint(path)


def test_default_weights_follow_the_manifest(tmp_path, net):
    with pytest.raises(CheckpointError, match="no shipped weights"):
        ckpt.default_weights_path(tmp_path)
    path = tmp_path / "stya2k-v0-cpu.pt"
    ckpt.write_manifest_entry(path, ckpt.save_checkpoint(net, path))
    assert ckpt.default_weights_path(tmp_path) == path


def test_shipped_default_weights_load_on_cpu():
    try:
        path = ckpt.default_weights_path()
    except CheckpointError:
        pytest.skip("no weights shipped in weights/ yet")
    model = ckpt.load_model(path)
    assert model.meta["sha256"] == ckpt.read_manifest(path.parent)[path.name]


def test_the_network_knows_no_files_and_checkpoint_io_needs_no_trainer():
    assert not any(hasattr(StyA2K, name) for name in ("save_checkpoint", "from_checkpoint", "trainable_state_dict"))
    probe = ("import sys, model.checkpoint, training.export, training.evaluate, training.report; "
             "print(sorted(m for m in sys.modules if m in ('training.train', 'training.campaign')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "[]"  # checkpoints, export, evaluation and reports do not pull in the trainer


def test_trainable_state_skips_the_frozen_encoder_and_loads_back(net):
    state = ckpt.trainable_state_dict(net)
    assert state and not any(k.startswith(ckpt.FROZEN_PREFIX) for k in state)
    assert set(state) | {k for k in net.state_dict() if k.startswith("encoder.")} == set(net.state_dict())
    other = StyA2K(ModelConfig())
    ckpt.load_trainable_state(other, state)
    for name, tensor in ckpt.trainable_state_dict(other).items():
        assert torch.equal(tensor, state[name]), name
    partial = {k: v for k, v in state.items() if not k.startswith("attn3.")}
    with pytest.raises(CheckpointError, match=r"does not fit the network: missing \['attn3\."):
        ckpt.load_trainable_state(other, partial)


def test_atomic_save_replaces_whole_files(tmp_path):
    path = tmp_path / "state.pt"
    ckpt.atomic_save({"a": 1}, path)
    ckpt.atomic_save({"a": 2}, path)
    assert torch.load(path, weights_only=True) == {"a": 2} and [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_train_state_is_told_from_release_weights(tmp_path, net):
    assert ckpt.is_train_state({"format": ckpt.TRAIN_STATE_FORMAT, "version": ckpt.TRAIN_STATE_VERSION})
    assert not ckpt.is_train_state({"format": ckpt.TRAIN_STATE_FORMAT, "version": 99})
    path = tmp_path / "release.pt"
    ckpt.save_checkpoint(net, path)
    assert not ckpt.is_train_state(torch.load(path, weights_only=True))


def test_manifest_keeps_comments_and_refuses_a_malformed_line(tmp_path, net):
    path = tmp_path / "w.pt"
    manifest = tmp_path / ckpt.MANIFEST_NAME
    manifest.write_text(f"# shipped weights\n{'a' * 64}  *z.pt\n")
    ckpt.write_manifest_entry(path, "b" * 64)
    assert manifest.read_text() == f"# shipped weights\n{'b' * 64}  w.pt\n{'a' * 64}  z.pt\n"
    assert ckpt.read_manifest(tmp_path) == {"w.pt": "b" * 64, "z.pt": "a" * 64}
    manifest.write_text("abc  w.pt\n")
    with pytest.raises(CheckpointError, match=r"MANIFEST:1: expected '<sha256>  <file name>'"):
        ckpt.write_manifest_entry(path, "b" * 64)
