"""The fast attention path (SDPA, chunked matching, any size) against a plain einsum transcription of the paper."""

import pytest
import torch
import torch.nn.functional as F

from model import functional as fn

# Fast path and reference differ only by float32 summation order.
ATOL = 1e-4
RTOL = 1e-4


def ref_block(x: torch.Tensor, p: int) -> torch.Tensor:
    """Algorithm 2 via F.unfold: (B, C, H, W) -> (B, C, n, r)."""
    b, c = x.shape[:2]
    y = F.unfold(x, kernel_size=p, stride=p)  # (B, C*r, n)
    return y.permute(0, 2, 1).reshape(b, -1, c, p * p).permute(0, 2, 1, 3)


def ref_unblock(x: torch.Tensor, p: int, size: tuple[int, int]) -> torch.Tensor:
    b, c, n, r = x.shape
    return F.fold(x.permute(0, 2, 1, 3).reshape(b, n, c * r).permute(0, 2, 1), size, kernel_size=p, stride=p)


def ref_distributed(q, k, v, p, heads, alpha, beta):
    """Eq. 6-9 and 13 with einsum, as in Algorithm 1 (generalised to n_content != n_style)."""
    b, c, h, w = q.shape
    qb = ref_block(q, p).reshape(b, heads, c // heads, -1, p * p)  # (B, h, d, n_c, r)
    kb = ref_block(k, p).reshape(b, heads, c // heads, -1, p * p)  # (B, h, d, n_s, r)
    vb = ref_block(v, p).reshape(b, heads, v.shape[1] // heads, -1, p * p)
    r = p * p
    k_m, v_m = kb.mean(-1), vb.mean(-1)  # (B, h, d, n_s)
    sim = torch.sigmoid(beta + alpha * torch.einsum("bhcx,bhcxy->bhxy", k_m, kb))
    k_a = (torch.einsum("bhxy,bhcxy->bhcx", sim, kb) + k_m) / (r + 1)
    v_a = (torch.einsum("bhxy,bhcxy->bhcx", sim, vb) + v_m) / (r + 1)
    scores = torch.softmax(torch.einsum("bhcxy,bhcz->bhyxz", qb, k_a), dim=-1)
    out = torch.einsum("bhyxz,bhcz->bhcxy", scores, v_a)
    return ref_unblock(out.reshape(b, v.shape[1], -1, r), p, (h, w))


def ref_progressive(q, k, v, p, heads):
    """Eq. 10-13 with einsum, as in Algorithm 1."""
    b, c, h, w = q.shape
    qb = ref_block(q, p).reshape(b, heads, c // heads, -1, p * p)
    kb = ref_block(k, p).reshape(b, heads, c // heads, -1, p * p)
    vb = ref_block(v, p).reshape(b, heads, v.shape[1] // heads, -1, p * p)
    n_c = qb.shape[3]
    idx = torch.einsum("bhcxy,bhczy->bhxz", qb, kb).argmax(-1)  # (B, h, n_c)
    k_sel = torch.gather(kb, 3, idx.view(b, heads, 1, n_c, 1).expand(-1, -1, kb.shape[2], -1, kb.shape[4]))
    v_sel = torch.gather(vb, 3, idx.view(b, heads, 1, n_c, 1).expand(-1, -1, vb.shape[2], -1, vb.shape[4]))
    scores = torch.softmax(torch.einsum("bhcxy,bhcxz->bhxyz", qb, k_sel), dim=-1)
    out = torch.einsum("bhxyz,bhcxz->bhcxy", scores, v_sel)
    return ref_unblock(out.reshape(b, v.shape[1], -1, p * p), p, (h, w))


def random_maps(b=2, c=32, hw=(16, 24), hw_s=(24, 16), cv=None):
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))  # fresh inputs each run
    q = torch.randn(b, c, *hw, generator=g)
    k = torch.randn(b, c, *hw_s, generator=g)
    v = torch.randn(b, cv or c, *hw_s, generator=g)
    return q, k, v


@pytest.mark.parametrize("p", [4, 8])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_block_heads_matches_unfold_and_round_trips(p, memory_format):
    x = torch.randn(2, 6, 2 * p, 3 * p).contiguous(memory_format=memory_format)
    heads = fn.block_heads(x, p, 2)
    assert heads.shape == (2, 2, 6, p * p, 3) and heads.is_contiguous()  # d innermost, as fused SDPA needs
    expected = ref_block(x, p).reshape(2, 2, 3, 6, p * p).permute(0, 1, 3, 4, 2)  # (B, h, n, r, d)
    torch.testing.assert_close(heads, expected)
    channels_last = memory_format == torch.channels_last
    back = fn.unblock_heads(heads, p, x.shape[-2:], channels_last)
    torch.testing.assert_close(back, x)
    assert back.is_contiguous(memory_format=memory_format)


def as_format(maps, memory_format):
    return [x.contiguous(memory_format=memory_format) for x in maps]


FORMATS = pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])


@FORMATS
@pytest.mark.parametrize("p", [4, 8])
def test_distributed_fast_path_matches_einsum_reference(p, memory_format):
    q, k, v = random_maps(hw=(2 * p, 3 * p), hw_s=(3 * p, p))
    alpha, beta = 0.7, 0.2
    fast = fn.distributed_branch(*as_format((q, k, v), memory_format), p, heads=4, sim_alpha=alpha, sim_beta=beta)
    assert fast.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(fast, ref_distributed(q, k, v, p, 4, alpha, beta), atol=ATOL, rtol=RTOL)


@FORMATS
@pytest.mark.parametrize("p", [4, 8])
def test_progressive_fast_path_matches_einsum_reference(p, memory_format):
    # Small-magnitude inputs keep block scores apart so argmax has no near-ties between the two paths.
    q, k, v = random_maps(hw=(2 * p, 2 * p), hw_s=(3 * p, 2 * p))
    fast = fn.progressive_branch(*as_format((q, k, v), memory_format), p, heads=4)
    torch.testing.assert_close(fast, ref_progressive(q, k, v, p, 4), atol=ATOL, rtol=RTOL)


@FORMATS
def test_both_branches_equal_the_sum_of_the_two(memory_format):
    q, k, v = as_format(random_maps(c=16, cv=8, hw=(13, 10), hw_s=(9, 11)), memory_format)  # off the 4x4 grid
    both = fn.both_branches(q, k, v, 4, 4, 0.7, 0.2)
    separate = fn.distributed_branch(q, k, v, 4, 4, 0.7, 0.2) + fn.progressive_branch(q, k, v, 4, 4)
    torch.testing.assert_close(both, separate, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("d", "dv"), [(24, 16), (8, 20), (16, 16)])
def test_raw_attention_pads_unequal_head_dims(d, dv):
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 3, 10, d, generator=g), torch.randn(2, 3, 7, d, generator=g)
    v = torch.randn(2, 3, 7, dv, generator=g)
    expected = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v  # raw dot products, no 1/sqrt(d)
    torch.testing.assert_close(fn.raw_attention(q, k, v), expected, atol=ATOL, rtol=RTOL)


def test_chunked_block_matching_equals_unchunked():
    q, k, _ = random_maps(b=1, c=16, hw=(32, 32), hw_s=(32, 32))
    qb = fn.block_heads(q, 4, 4)
    kb = fn.block_heads(k, 4, 4)
    full = fn.match_blocks(qb, kb)
    tiny = fn.match_blocks(qb, kb, chunk_elems=64)  # forces one content block per chunk
    assert torch.equal(full, tiny)


def test_value_channels_may_differ_from_key_channels():
    q, k, v = random_maps(c=16, cv=8, hw=(8, 8), hw_s=(8, 16))
    assert fn.distributed_branch(q, k, v, 4, 4).shape == (2, 8, 8, 8)
    torch.testing.assert_close(fn.distributed_branch(q, k, v, 4, 4, 0.7, 0.2), ref_distributed(q, k, v, 4, 4, 0.7, 0.2),
                               atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(fn.progressive_branch(q, k, v, 4, 4), ref_progressive(q, k, v, 4, 4),
                               atol=ATOL, rtol=RTOL)


def test_any_size_pads_to_block_grid_and_crops_back():
    q, k, v = random_maps(hw=(13, 22), hw_s=(9, 30))
    out = fn.progressive_branch(q, k, v, 8, 4)
    assert out.shape == (2, 32, 13, 22)
    # Equivalent to the reference on the reflect-padded maps, cropped.
    qp, _ = fn.pad_to_multiple(q, 8)
    kp, _ = fn.pad_to_multiple(k, 8)
    vp, _ = fn.pad_to_multiple(v, 8)
    torch.testing.assert_close(out, ref_progressive(qp, kp, vp, 8, 4)[..., :13, :22], atol=ATOL, rtol=RTOL)
    da = fn.distributed_branch(q, k, v, 8, 4)
    torch.testing.assert_close(da, ref_distributed(qp, kp, vp, 8, 4, 1.0, 0.0)[..., :13, :22], atol=ATOL, rtol=RTOL)


def test_pad_to_multiple_replicates_when_too_small_to_reflect():
    x = torch.randn(1, 2, 3, 5)
    padded, size = fn.pad_to_multiple(x, 8)
    assert padded.shape == (1, 2, 8, 8) and size == (3, 5)
    torch.testing.assert_close(padded[..., :3, :5], x)


def test_pad_to_reflects_when_every_pad_is_smaller_than_its_side():
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)
    padded = fn.pad_to(x, 7, 9)  # pads 3 < 4 and 3 < 6
    assert padded.shape == (1, 2, 7, 9)
    torch.testing.assert_close(padded, F.pad(x, (0, 3, 0, 3), mode="reflect"))
    assert fn.pad_to(x, 4, 6) is x  # nothing to pad: the same tensor


def test_pad_to_replicates_both_sides_when_one_pad_is_too_big():
    x = torch.randn(1, 3, 4, 10)
    # width pad 2 could reflect, height pad 4 (== its side) cannot: the rule replicates both, not a mix.
    torch.testing.assert_close(fn.pad_to(x, 8, 12), F.pad(x, (0, 2, 0, 4), mode="replicate"))
    maps = torch.rand(2, 3, 5)  # (N, h, w) weight maps without a batch dimension pad the same way
    torch.testing.assert_close(fn.pad_to(maps, 5, 6), F.pad(maps[None], (0, 1, 0, 2), mode="reflect")[0])


def test_pad_to_refuses_to_shrink():
    with pytest.raises(ValueError, match="cannot shrink 4x6 to 3x8"):
        fn.pad_to(torch.zeros(1, 1, 4, 6), 3, 8)


def test_pad_to_multiple_is_pad_to_the_next_multiple():
    for hw in ((13, 22), (3, 5), (16, 32), (17, 1)):
        x = torch.randn(1, 2, *hw)
        padded, size = fn.pad_to_multiple(x, 8)
        want = (-(-hw[0] // 8) * 8, -(-hw[1] // 8) * 8)
        assert size == hw and padded.shape[-2:] == want
        torch.testing.assert_close(padded, fn.pad_to(x, *want))


@FORMATS
@pytest.mark.parametrize("cv", [16, 8])
def test_all_to_all_matches_softmax_reference(memory_format, cv):
    q, k, v = random_maps(c=16, cv=cv, hw=(6, 5), hw_s=(4, 7))
    out = fn.all_to_all(*as_format((q, k, v), memory_format), heads=4)
    assert out.is_contiguous(memory_format=memory_format)
    b, heads = 2, 4
    qt = q.reshape(b, heads, 4, -1)
    kt = k.reshape(b, heads, 4, -1)
    vt = v.reshape(b, heads, cv // heads, -1)
    ref = torch.einsum("bhqk,bhck->bhcq", torch.softmax(torch.einsum("bhcq,bhck->bhqk", qt, kt), -1), vt)
    torch.testing.assert_close(out, ref.reshape(2, cv, 6, 5), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("branch", ["distributed", "progressive"])
def test_branches_keep_channels_last_off_the_block_grid(branch):
    # 13x10 content, 9x11 style with 4x4 blocks: both are padded. The crop back to 13x10 is a view (contiguous in
    # neither format), so what must hold is the stride order: channels innermost for NHWC, width for NCHW; a
    # following channels_last 1x1 convolution then writes NHWC without a layout change.
    q, k, v = random_maps(c=16, hw=(13, 10), hw_s=(9, 11))
    run = fn.distributed_branch if branch == "distributed" else fn.progressive_branch
    nchw = run(q, k, v, 4, 4)
    nhwc = run(*as_format((q, k, v), torch.channels_last), 4, 4)
    assert nchw.shape == nhwc.shape == (2, 16, 13, 10)
    assert nhwc.stride(1) == 1 and nchw.stride(-1) == 1
    conv = torch.nn.Conv2d(16, 16, 1).to(memory_format=torch.channels_last)
    assert conv(nhwc).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc, nchw, atol=ATOL, rtol=RTOL)


@FORMATS
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mean_std_match_float64_even_far_from_zero(memory_format, dtype):
    # ReLU-like maps with a large offset: a one-pass E[x^2] - E[x]^2 would cancel; both paths must not. The
    # reference is float64 of the very values the function sees (bf16 rounds 100 + x to steps of 0.5).
    x = (torch.randn(2, 6, 9, 7).relu() * 3 + 100).to(dtype).contiguous(memory_format=memory_format)
    var, mean = torch.var_mean(x.double(), dim=(2, 3), keepdim=True)
    got_mean, got_std = fn.calc_mean_std(x)
    assert got_mean.shape == got_std.shape == (2, 6, 1, 1)
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # bf16 results are themselves rounded to 8 bits
    torch.testing.assert_close(got_mean.double(), mean, rtol=tol, atol=0)
    torch.testing.assert_close(got_std.double(), (var + fn.MVN_EPS).sqrt(), rtol=tol * 10, atol=0)
    norm = fn.mean_variance_norm(x).double()
    # bf16: x - mean is rounded at ~100 (a step of 0.5, /std ~1.7), so ~0.3; float32 ~1e-5.
    torch.testing.assert_close(norm, (x.double() - mean) / (var + fn.MVN_EPS).sqrt(), rtol=0,
                               atol=1e-4 if dtype == torch.float32 else 0.35)


def test_mean_std_gradients_are_exact():
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fn.calc_mean_std(t), (x,))  # var_mean under autograd
    assert torch.autograd.gradcheck(fn.mean_variance_norm, (x,))  # the two-pass form
    assert torch.autograd.gradcheck(lambda t: fn._mean_std_centred(t, fn.MVN_EPS)[1], (x,))


def test_mean_variance_norm_and_adain_statistics():
    x = torch.randn(2, 3, 8, 8) * 5 + 2
    s = torch.randn(2, 3, 6, 6) * 0.5 - 1
    m, sd = fn.calc_mean_std(fn.adain(x, s))
    sm, ssd = fn.calc_mean_std(s)
    torch.testing.assert_close(m, sm, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sd, ssd, atol=1e-3, rtol=1e-3)
    # A single position has no variance: must stay finite.
    assert torch.isfinite(fn.mean_variance_norm(torch.randn(1, 2, 1, 1))).all()


def test_preserve_color_takes_luma_from_stylized_and_chroma_from_content() -> None:
    generator = torch.Generator().manual_seed(0)
    content = 0.25 + 0.5 * torch.rand(1, 3, 8, 8, generator=generator)  # mid-tones: no clamping
    stylized = 0.25 + 0.5 * torch.rand(1, 3, 8, 8, generator=generator)
    mixed = fn.preserve_color(stylized, content)
    ycc = torch.tensor(fn._RGB_TO_YCC)

    def to_ycc(x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,bjhw->bihw", ycc, x)

    assert torch.allclose(to_ycc(mixed)[:, 0], to_ycc(stylized)[:, 0], atol=1e-4)
    in_gamut = ((to_ycc(mixed) - to_ycc(content))[:, 1:].abs() < 1e-4).float().mean()
    assert in_gamut > 0.9  # chroma equals the content's wherever the result is not clamped
    assert torch.allclose(fn.preserve_color(content, content), content, atol=1e-5)


def test_gram_matrix_known_answer_and_normalisation() -> None:
    # Two channels over two positions: F = [[1, 2], [3, 4]]; F F^T = [[5, 11], [11, 25]]; C*H*W = 2*1*2 = 4.
    feat = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # (1, 2, 1, 2)
    expected = torch.tensor([[[1.25, 2.75], [2.75, 6.25]]])  # (1, 2, 2)
    torch.testing.assert_close(fn.gram_matrix(feat), expected)
    # Johnson's normalisation: the same map tiled to 4x the positions gives the same Gram.
    torch.testing.assert_close(fn.gram_matrix(feat.repeat(1, 1, 2, 2)), expected)
    # Squared Frobenius distance: 1.25^2 + 2 * 2.75^2 + 6.25^2.
    assert float(fn.gram_distance(expected, torch.zeros_like(expected))) == pytest.approx(55.75)


def test_gram_matrix_is_per_item_symmetric_and_ignores_where_features_are() -> None:
    generator = torch.Generator().manual_seed(3)
    feat = torch.rand(2, 5, 6, 7, generator=generator)  # (B, C, H, W)
    gram = fn.gram_matrix(feat)
    assert gram.shape == (2, 5, 5)
    torch.testing.assert_close(gram, gram.transpose(1, 2))
    torch.testing.assert_close(gram[1:], fn.gram_matrix(feat[1:]))  # batch items do not mix
    # A texture statistic: any rearrangement of the positions leaves it unchanged ...
    order = torch.randperm(42, generator=generator)
    shuffled = feat.flatten(2)[..., order].view_as(feat)
    torch.testing.assert_close(fn.gram_matrix(shuffled), gram)
    assert fn.gram_distance(gram, fn.gram_matrix(shuffled)).abs().max() < 1e-10
    # ... while changing which channels fire together changes it.
    mixed = feat.clone()
    mixed[:, 0] = feat[:, 0].flip(-1)
    assert (fn.gram_distance(gram, fn.gram_matrix(mixed)) > 1e-4).all()


def test_gram_matrix_of_reduced_precision_is_float32() -> None:
    feat = torch.rand(1, 4, 64, 64, dtype=torch.bfloat16)
    gram = fn.gram_matrix(feat)
    assert gram.dtype == torch.float32
    torch.testing.assert_close(gram, fn.gram_matrix(feat.float()))


def test_gram_distance_gradients_are_exact_and_finite() -> None:
    generator = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    target = fn.gram_matrix(torch.rand(2, 3, 6, 2, dtype=torch.float64, generator=generator))
    assert torch.autograd.gradcheck(lambda t: fn.gram_distance(fn.gram_matrix(t), target), (x,))
    # Zero maps (a black image after ReLU) and large activations stay finite.
    zero = fn.gram_matrix(torch.zeros(1, 8, 3, 3))
    assert torch.equal(zero, torch.zeros(1, 8, 8))
    big = fn.gram_distance(fn.gram_matrix(torch.full((1, 8, 16, 16), 1e4)), zero)
    assert torch.isfinite(big).all() and float(big) > 0
