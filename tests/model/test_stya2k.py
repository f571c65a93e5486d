import pytest
import torch

from model import ModelConfig, StyA2K, StyleFeatures
from model.a2k import A2K, AllToAll


def test_parameter_count_matches_the_paper(net):
    assert abs(sum(p.numel() for p in net.trainable_parameters()) - 11.2e6) < 0.1e6


@torch.inference_mode()
def test_odd_sizes_and_different_style_size(net):
    content, style = torch.rand(1, 3, 300, 517), torch.rand(1, 3, 640, 480)
    out = net.stylize(content, style)
    assert out.shape == (1, 3, 300, 517)
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@torch.inference_mode()
@pytest.mark.parametrize("size", [(16, 16), (33, 70), (96, 40)])
def test_small_and_skinny_images(net, size):
    out = net.stylize(torch.rand(2, 3, *size), torch.rand(2, 3, 20, 90))
    assert out.shape == (2, 3, *size) and torch.isfinite(out).all()


def test_gradient_reaches_every_trainable_parameter(net):
    from training.losses import StyleTransferLoss

    net.zero_grad()
    out, c, s = net.forward_with_features(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 48, 80))
    StyleTransferLoss(net.encoder)(out, c, s).total.backward()
    for name, p in net.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    net.zero_grad()


def test_training_sizes_are_checked(net):
    with pytest.raises(ValueError, match="multiple of 16"):
        net.forward_with_features(torch.rand(1, 3, 50, 64), torch.rand(1, 3, 64, 64))


@torch.inference_mode()
def test_cached_style_features_give_the_same_result(net):
    content, style = torch.rand(1, 3, 64, 80), torch.rand(1, 3, 64, 64)
    feats = net.encode_style(style)
    torch.testing.assert_close(net.stylize_from_features(content, [feats]), net.stylize(content, style))
    batch = StyleFeatures.cat([feats, feats])
    assert len(batch) == 2 and batch.nbytes == 2 * feats.nbytes
    out = net.stylize_from_features(content.expand(2, -1, -1, -1), [batch])
    torch.testing.assert_close(out[1], out[0])
    with pytest.raises(ValueError, match="different sizes"):
        StyleFeatures.cat([feats, net.encode_style(torch.rand(1, 3, 128, 64))])


@torch.inference_mode()
def test_interpolation_and_masks_share_one_path(net):
    content = torch.rand(1, 3, 64, 64)
    s1, s2 = net.encode_style(torch.rand(1, 3, 64, 64)), net.encode_style(torch.rand(1, 3, 64, 64))
    only_first = net.stylize_from_features(content, [s1, s2], torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(only_first, net.stylize_from_features(content, [s1]))
    # Unnormalised weights are normalised; constant masks equal the same interpolation weights.
    w = torch.tensor([[3.0, 1.0]])
    mixed = net.stylize_from_features(content, [s1, s2], w)
    masks = w[:, :, None, None].expand(1, 2, 64, 64)
    torch.testing.assert_close(net.stylize_from_features(content, [s1, s2], masks), mixed, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(mixed, only_first)
    # A left/right mask: each half follows its style far from the border.
    lr = torch.zeros(1, 2, 64, 64)
    lr[:, 0, :, :32] = 1
    lr[:, 1, :, 32:] = 1
    split = net.stylize_from_features(content, [s1, s2], lr)
    second = net.stylize_from_features(content, [s2])
    left_err = (split[..., :, :8] - only_first[..., :, :8]).abs().mean()
    right_err = (split[..., :, -8:] - second[..., :, -8:]).abs().mean()
    cross_err = (split[..., :, :8] - second[..., :, :8]).abs().mean()
    assert left_err < cross_err and right_err < cross_err
    with pytest.raises(ValueError, match="need weights"):
        net.stylize_from_features(content, [s1, s2])


@torch.inference_mode()
def test_alpha_zero_ignores_the_style(net):
    content = torch.rand(1, 3, 64, 64)
    a = net.stylize(content, torch.rand(1, 3, 64, 64), alpha=0.0)
    b = net.stylize(content, torch.rand(1, 3, 80, 48), alpha=0.0)
    torch.testing.assert_close(a, b)
    per_item = net.stylize(content.expand(2, -1, -1, -1), torch.rand(2, 3, 64, 64), alpha=torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(per_item[0], a[0])


@torch.inference_mode()
@pytest.mark.parametrize("arch", ["all_to_all", "adain"])
def test_variants_have_the_same_output_shapes(arch):
    variant = StyA2K(ModelConfig(arch=arch)).eval()
    out = variant.stylize(torch.rand(2, 3, 40, 72), torch.rand(2, 3, 64, 48))
    assert out.shape == (2, 3, 40, 72) and torch.isfinite(out).all()


def test_attention_modules_keep_the_content_shape():
    a2k, a2a = A2K(64, 4, heads=8), AllToAll(64, heads=8)
    c, s = torch.randn(2, 64, 12, 20), torch.randn(2, 64, 7, 9)
    assert a2k(c, s).shape == c.shape and a2a(c, s).shape == c.shape
    with pytest.raises(ValueError, match="divisible"):
        A2K(60, 4, heads=8)


def test_config_rejects_unknown_arch():
    with pytest.raises(ValueError, match="unknown arch"):
        ModelConfig(arch="transformer")


@torch.inference_mode()
@pytest.mark.parametrize("size", [(256, 256), (64, 256), (20, 90), (100, 257)])
def test_padded_size_is_what_the_style_features_come_from(net, size):
    from model.stya2k import padded_size

    features = net.encode_style(torch.rand(1, 3, *size))
    assert features.padded_size == padded_size(*size)  # the service batches styles by it
    assert padded_size(*size)[0] % 16 == 0 and min(padded_size(*size)) >= 32
