import pytest
import torch

from model import functional as fn
from training.losses import (
    TERMS,
    LossConfig,
    StyleTransferLoss,
    a2k_target,
    global_style_loss,
    shallow_key,
    weigh,
)


def feats_of(net, x):
    with torch.no_grad():
        return net.encoder(x)


def test_global_style_loss_is_zero_for_identical_statistics():
    f = {"relu1_1": torch.rand(2, 4, 8, 8)}
    assert global_style_loss(f, f, ("relu1_1",)).item() == 0
    g = {"relu1_1": f["relu1_1"] * 2}
    assert global_style_loss(g, f, ("relu1_1",)).item() > 0


def test_shallow_keys_concatenate_every_shallower_tap(net):
    feats = feats_of(net, torch.rand(1, 3, 64, 64))
    assert shallow_key(feats, "relu2_1").shape == (1, 64 + 128, 32, 32)
    assert shallow_key(feats, "relu5_1").shape == (1, 64 + 128 + 256 + 512 + 512, 4, 4)


def test_a2k_target_is_da_plus_pa_plus_content(net):
    c = feats_of(net, torch.rand(1, 3, 64, 64))
    s = feats_of(net, torch.rand(1, 3, 64, 96))
    target = a2k_target(c, s, "relu4_1", 8, 8, shallow_keys=False)
    q, k, v = fn.mean_variance_norm(c["relu4_1"]), fn.mean_variance_norm(s["relu4_1"]), s["relu4_1"]
    expected = fn.distributed_branch(q, k, v, 8, 8) + fn.progressive_branch(q, k, v, 8, 8) + c["relu4_1"]
    torch.testing.assert_close(target, expected)


def test_loss_terms_are_weighted_and_finite(net):
    out, c, s = net.forward_with_features(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64))
    terms = StyleTransferLoss(net.encoder, LossConfig())(out, c, s)
    torch.testing.assert_close(terms.total, 10 * terms.global_style + 1.25 * terms.a2k)
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.as_dict().values())
    adain = StyleTransferLoss(net.encoder, LossConfig(kind="adain"))(out, c, s)
    assert adain.content.item() > 0 and adain.a2k.item() == 0


def test_weigh_sums_the_weighted_terms_it_gets_and_logs_the_others_as_zero():
    terms = {"global_style": torch.tensor(2.0), "a2k": torch.tensor(4.0)}
    weighted = weigh(terms, LossConfig(style_weight=1.5, a2k_weight=0.5).weights())
    assert weighted.total.item() == 5.0 and weighted.content.item() == 0.0
    assert list(weighted.as_dict()) == ["total", *TERMS]  # log.csv's loss columns
    with pytest.raises(KeyError, match="without a weight"):  # a new term needs its LossWeights field
        weigh({"tv": torch.tensor(1.0)}, LossConfig().weights())
