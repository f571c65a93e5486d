import pytest
import torch

from model import CheckpointError, ModelConfig, StyA2K
from model import checkpoint as ckpt


def test_round_trip_carries_config_and_meta(tmp_path, net):
    path = tmp_path / "w.pt"
    digest = net.save_checkpoint(path, meta={"iterations": 7})
    assert digest == ckpt.sha256_file(path)
    loaded = StyA2K.from_checkpoint(path)
    assert loaded.config == net.config and loaded.meta["iterations"] == 7 and loaded.meta["sha256"] == digest
    x, s = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        # fp16 storage: outputs agree to fp16 precision of the weights.
        torch.testing.assert_close(loaded.stylize(x, s), net.stylize(x, s), atol=2e-2, rtol=0)
    assert not any(k.startswith("encoder.") for k in torch.load(path, weights_only=True)["state_dict"])


def test_manifest_mismatch_and_corruption_are_clear_errors(tmp_path, net):
    path = tmp_path / "w.pt"
    digest = net.save_checkpoint(path)
    ckpt.write_manifest_entry(path, digest)
    assert ckpt.read_manifest(tmp_path) == {"w.pt": digest}
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or was replaced"):
        StyA2K.from_checkpoint(path)
    with pytest.raises(CheckpointError, match="corrupt"):
        StyA2K.from_checkpoint(path, verify_manifest=False)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        StyA2K.from_checkpoint(path, verify_manifest=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        StyA2K.from_checkpoint(tmp_path / "missing.pt")


def test_wrong_architecture_is_rejected(tmp_path):
    path = tmp_path / "adain.pt"
    StyA2K(ModelConfig(arch="adain")).save_checkpoint(path)
    payload = torch.load(path, weights_only=True)
    payload["config"]["arch"] = "a2k"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="does not match its config"):
        StyA2K.from_checkpoint(path)


def test_default_weights_follow_the_manifest(tmp_path, net):
    with pytest.raises(CheckpointError, match="no shipped weights"):
        ckpt.default_weights_path(tmp_path)
    path = tmp_path / "stya2k-v0-cpu.pt"
    ckpt.write_manifest_entry(path, net.save_checkpoint(path))
    assert ckpt.default_weights_path(tmp_path) == path


def test_shipped_default_weights_load_on_cpu():
    try:
        path = ckpt.default_weights_path()
    except CheckpointError:
        pytest.skip("no weights shipped in weights/ yet")
    model = ckpt.load_model(path)
    assert model.meta["sha256"] == ckpt.read_manifest(path.parent)[path.name]
