"""Pure tensor math of StyA2K (paper sections 3.2-3.3, Algorithms 1-2). No parameters live here.

Notation used in shape comments:
    B batch, C channels, h heads, d = C / h channels per head,
    n number of blocks (p x p spatial patches), r = p * p positions per block.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MVN_EPS = 1e-5


def calc_mean_std(feat: Tensor, eps: float = MVN_EPS) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std over space (unbiased variance + eps), each (B, C, 1, 1)."""
    # Under autograd the two-pass form would keep a centred copy alive until backward (the style loss's output
    # maps: ~250 MB at 256 px, batch 8); var_mean keeps only its input, and fwd+bwd cost the same there.
    two_pass = not (feat.requires_grad and torch.is_grad_enabled())
    mean, std, _ = _mean_std_centred(feat, eps, two_pass)
    return mean, std


def _mean_std_centred(feat: Tensor, eps: float, two_pass: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """(mean, std) as `calc_mean_std` defines them, plus ``feat - mean`` where it was computed on the way.

    On CPU in float32/64 (and ``two_pass``): the mean, then the centred squares, 3-5x faster than torch.var_mean
    for maps of 0.5-4 M values (its Welford loop does not vectorise), within ~2e-7 relative of float64 (tested
    with a mean 30x the spread). Otherwise var_mean: lower precision would round ``feat - mean`` before squaring,
    and on CUDA var_mean is one fused kernel (the two-pass form is not measured there).
    Reduced in place over the spatial dims: a reshape to (B, C, H*W) would copy a channels_last map first.
    Unbiased variance is undefined for a single position; there it falls back to 0 (std = sqrt(eps)).
    """
    b, c = feat.shape[:2]
    space = tuple(range(2, feat.dim()))
    positions = math.prod(feat.shape[2:])
    correction = 1 if positions > 1 else 0
    if not two_pass or feat.device.type != "cpu" or feat.dtype not in (torch.float32, torch.float64):
        var, mean = torch.var_mean(feat, dim=space, correction=correction)
        return mean.view(b, c, 1, 1), (var + eps).sqrt().view(b, c, 1, 1), None
    mean = feat.mean(dim=space, keepdim=True)
    centred = feat - mean
    var = centred.square().sum(dim=space, keepdim=True) / (positions - correction)
    return mean.view(b, c, 1, 1), (var + eps).sqrt().view(b, c, 1, 1), centred


Stats = tuple[Tensor, Tensor]  # per-channel (mean, std), each (B, C, 1, 1)


def mean_variance_norm(feat: Tensor, stats: Stats | None = None) -> Tensor:
    """Instance normalisation without affine parameters: (x - mean) / std per channel.

    ``stats``: the (mean, std) to normalise with, when ``feat`` is a tile of a larger map whose statistics were
    accumulated over the whole (tiled inference); default: those of ``feat`` itself.
    """
    if stats is not None:
        mean, std = stats
        return (feat - mean) / std
    mean, std, centred = _mean_std_centred(feat, MVN_EPS)
    return (feat - mean if centred is None else centred) / std


def adain(content: Tensor, style: Tensor) -> Tensor:
    """Adaptive instance normalisation (Huang & Belongie 2017): content statistics replaced by the style's."""
    s_mean, s_std = calc_mean_std(style)
    return mean_variance_norm(content) * s_std + s_mean


def gram_matrix(feat: Tensor) -> Tensor:
    """Gram matrix of a feature map, Johnson et al. (2016)'s normalisation: G = F F^T / (C * H * W).

    feat: (B, C, H, W) -> (B, C, C), with F the (B, C, H*W) map. Dividing by H*W makes it a mean over positions
    (comparable between images of different sizes); the extra 1/C keeps ``gram_distance`` at the scale of one
    channel pair whatever the layer's width (see there). Computed in float32 at least: a bf16 sum over 10^5
    positions would round away the differences the texture metric measures.
    """
    b, c = feat.shape[:2]
    flat = feat.reshape(b, c, -1)  # (B, C, N), N = H*W
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * flat.shape[2])  # (B, C, C)


def gram_distance(gram_a: Tensor, gram_b: Tensor) -> Tensor:
    """Squared Frobenius norm of the difference of two Gram matrices per batch item: (B, C, C) x2 -> (B,).

    With ``gram_matrix``'s 1/(C*H*W) this is Johnson et al.'s style reconstruction loss at one layer, and equals
    the mean squared difference of the position-averaged (1/(H*W)) Grams over the C*C channel pairs: the same
    order of magnitude at every layer, so layers can be averaged without weights.
    """
    return (gram_a - gram_b).square().sum(dim=(1, 2))


def pad_to(x: Tensor, height: int, width: int) -> Tensor:
    """Pad (..., C, h, w) at the bottom/right to (..., C, height, width).

    Reflection keeps padded regions statistically like their surroundings, so no block or conv sees artificial
    zeros; when a side is too small to reflect (its pad >= its size) both sides replicate instead.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = height - h, width - w
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"pad_to cannot shrink {h}x{w} to {height}x{width}")
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad the bottom/right of (B, C, H, W) so H and W are multiples of `multiple` (`pad_to`'s rule).

    Returns the padded tensor and the original (H, W) so callers can crop back.
    """
    h, w = x.shape[-2:]
    return pad_to(x, h + (-h) % multiple, w + (-w) % multiple), (h, w)


def block_heads(x: Tensor, p: int, heads: int) -> Tensor:
    """Algorithm 2 `block`, then channel groups as heads: (B, C, H, W) -> (B, h, n, r, d), contiguous.

    n = (H/p)(W/p) row-major blocks, r = p*p positions in a block (row-major), d = C/h: the element order of
    `F.unfold(x, p, stride=p)`. One copy from either memory format; d is innermost so every attention kernel
    reads it with stride 1 (the fused SDPA kernels need that; a strided d falls back to the unfused math path).
    """
    b, c, hh, ww = x.shape
    x = x.reshape(b, heads, c // heads, hh // p, p, ww // p, p)  # (B, h, d, H/p, p, W/p, p): a view
    x = x.permute(0, 1, 3, 5, 4, 6, 2)  # (B, h, H/p, W/p, p, p, d)
    # contiguous(): with a single block the reshape can stay a view with d strided
    return x.reshape(b, heads, (hh // p) * (ww // p), p * p, c // heads).contiguous()


def unblock_heads(x: Tensor, p: int, size: tuple[int, int], channels_last: bool = False) -> Tensor:
    """Inverse of `block_heads`: (B, h, n, r, d) -> (B, h*d, H, W) for the given (H, W), in one copy.

    ``channels_last``: lay the result out as NHWC (what the following 1x1 convolutions read best when the
    network runs channels_last); the values are the same either way.
    """
    b, heads, _, _, d = x.shape
    hh, ww = size
    x = x.reshape(b, heads, hh // p, ww // p, p, p, d)  # (B, h, H/p, W/p, p, p, d)
    if channels_last:
        nhwc = x.permute(0, 2, 4, 3, 5, 1, 6).reshape(b, hh, ww, heads * d)  # (B, H, W, C)
        return nhwc.permute(0, 3, 1, 2)
    return x.permute(0, 1, 6, 2, 4, 3, 5).reshape(b, heads * d, hh, ww)


def raw_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T) v with raw dot products (the paper has no 1/sqrt(d)): (..., L, d), (..., S, d), (..., S, dv).

    The fused SDPA kernels take a single head dim for q, k and v; where dv != d (the loss's shallow-key targets:
    e.g. 24 vs 16 at relu2_1) all three are zero-padded to the wider one, which changes neither q.k nor the kept
    output columns. Without it PyTorch falls back to the unfused math path, which materialises the whole score
    matrix (268 MB in float32 for relu2_1's 16x16 blocks at 128 px, batch 8) and took ~0.45 s of a 3 s CPU step.
    """
    d, dv = q.shape[-1], v.shape[-1]
    if d == dv:
        return F.scaled_dot_product_attention(q, k, v, scale=1.0)
    width = max(d, dv)
    q, k, v = F.pad(q, (0, width - d)), F.pad(k, (0, width - d)), F.pad(v, (0, width - dv))
    return F.scaled_dot_product_attention(q, k, v, scale=1.0)[..., :dv]


def aggregate_blocks(k: Tensor, v: Tensor, sim_alpha: Tensor | float,
                     sim_beta: Tensor | float) -> tuple[Tensor, Tensor]:
    """Distributed attention step 1 (eq. 7-8): one representative key and value per style block.

    k: (B, h, n, r, d), v: (B, h, n, r, dv) -> (B, h, n, d), (B, h, n, dv).
    Each position is weighted by sigmoid(beta + alpha * <centre, k_i>); the centre itself joins with weight 1 and
    the sum is divided by r + 1 (as the authors' reference code does).
    """
    r = k.shape[3]
    k_centre = k.mean(dim=3)  # (B, h, n, d)
    v_centre = v.mean(dim=3)  # (B, h, n, dv)
    dist = torch.einsum("bhnd,bhnrd->bhnr", k_centre, k)
    sim = torch.sigmoid(sim_beta + sim_alpha * dist)  # (B, h, n, r)
    k_agg = (torch.einsum("bhnr,bhnrd->bhnd", sim, k) + k_centre) / (r + 1)
    v_agg = (torch.einsum("bhnr,bhnrd->bhnd", sim, v) + v_centre) / (r + 1)
    return k_agg, v_agg


def distributed_attention(q: Tensor, k: Tensor, v: Tensor, sim_alpha: Tensor | float,
                          sim_beta: Tensor | float) -> Tensor:
    """Distributed attention (eq. 6-9, 13): every content position attends over all aggregated style keys.

    q: (B, h, n_c, r, d), k: (B, h, n_s, r, d), v: (B, h, n_s, r, dv) -> (B, h, n_c, r, dv).
    """
    b, h, n_c, r, d = q.shape
    k_agg, v_agg = aggregate_blocks(k, v, sim_alpha, sim_beta)
    out = raw_attention(q.reshape(b, h, n_c * r, d), k_agg, v_agg)  # (B, h, n_c * r, dv)
    return out.reshape(b, h, n_c, r, v.shape[-1])


def match_blocks(q: Tensor, k: Tensor, chunk_elems: int = 1 << 24) -> Tensor:
    """Progressive attention step 1 (eq. 10): index of the best style block for every content block, per head.

    Block similarity is the position-aligned dot product sum_{y,c} q[x, y, c] * k[z, y, c].
    q: (B, h, n_c, r, d), k: (B, h, n_s, r, d) -> (B, h, n_c) int64.
    Content blocks are processed in chunks so the (n_c, n_s) score matrix never exceeds ~chunk_elems per batch*head.
    """
    b, h, n_c, r, d = q.shape
    n_s = k.shape[2]
    q_flat = q.reshape(b, h, n_c, r * d)
    k_flat = k.reshape(b, h, n_s, r * d).transpose(-1, -2)  # (B, h, r*d, n_s)
    if torch.onnx.is_in_onnx_export():  # a traced loop would freeze its chunk count: one product, same argmax
        return torch.matmul(q_flat, k_flat).argmax(dim=-1)
    step = max(1, chunk_elems // max(1, b * h * n_s))
    parts = [torch.matmul(q_flat[:, :, i:i + step], k_flat).argmax(dim=-1) for i in range(0, n_c, step)]
    return torch.cat(parts, dim=2)


def gather_blocks(x: Tensor, index: Tensor) -> Tensor:
    """Reshuffle style blocks (eq. 11): x (B, h, n_s, r, d), index (B, h, n_c) -> (B, h, n_c, r, d).

    One row copy per selected block (index_select over (B*h*n_s, r*d) rows) rather than an element-wise gather.
    """
    b, h, n_s, r, d = x.shape
    n_c = index.shape[2]
    first_row = torch.arange(b * h, device=index.device).view(b, h, 1) * n_s  # row of block 0 per (batch, head)
    rows = (index + first_row).reshape(-1)  # (B*h*n_c,)
    return x.reshape(b * h * n_s, r * d).index_select(0, rows).view(b, h, n_c, r, d)


def progressive_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Progressive attention (eq. 10-13): coarse block matching (argmax), then fine softmax inside the block.

    q: (B, h, n_c, r, d), k: (B, h, n_s, r, d), v: (B, h, n_s, r, dv) -> (B, h, n_c, r, dv).
    """
    b, h, n_c, r, d = q.shape
    index = match_blocks(q, k)
    k_sel = gather_blocks(k, index)  # (B, h, n_c, r, d)
    v_sel = gather_blocks(v, index)  # (B, h, n_c, r, dv)
    dv = v.shape[-1]
    out = raw_attention(q.reshape(b, h * n_c, r, d), k_sel.reshape(b, h * n_c, r, d), v_sel.reshape(b, h * n_c, r, dv))
    return out.reshape(b, h, n_c, r, dv)


def _blocked_branch(attention, q: Tensor, k: Tensor, v: Tensor, block_size: int, heads: int) -> Tensor:
    """Pad maps to the block grid, block them into heads, run `attention`, unblock and crop back.

    q: (B, Cq, H, W), k: (B, Cq, Hs, Ws), v: (B, Cv, Hs, Ws) -> (B, Cv, H, W). Any sizes: reflect-padding to the
    block grid means no region is left unattended; the padded rows/columns are cropped from the output.
    """
    q, (h, w) = pad_to_multiple(q, block_size)
    k, _ = pad_to_multiple(k, block_size)
    v, _ = pad_to_multiple(v, block_size)
    out = attention(
        block_heads(q, block_size, heads),  # (B, h, n_c, r, d)
        block_heads(k, block_size, heads),  # (B, h, n_s, r, d)
        block_heads(v, block_size, heads),  # (B, h, n_s, r, dv)
    )
    return unblock_heads(out, block_size, q.shape[-2:], _is_channels_last(q))[..., :h, :w]


def _is_channels_last(x: Tensor) -> bool:
    """Whether a (B, C, H, W) map is laid out NHWC (a map that is both, e.g. 1x1, counts as NCHW)."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def distributed_branch(q: Tensor, k: Tensor, v: Tensor, block_size: int, heads: int,
                       sim_alpha: Tensor | float = 1.0, sim_beta: Tensor | float = 0.0) -> Tensor:
    """Distributed attention on projected feature maps (see `_blocked_branch` for shapes)."""
    return _blocked_branch(lambda qb, kb, vb: distributed_attention(qb, kb, vb, sim_alpha, sim_beta),
                           q, k, v, block_size, heads)


def progressive_branch(q: Tensor, k: Tensor, v: Tensor, block_size: int, heads: int) -> Tensor:
    """Progressive attention on projected feature maps (see `_blocked_branch` for shapes)."""
    return _blocked_branch(progressive_attention, q, k, v, block_size, heads)


def both_branches(q: Tensor, k: Tensor, v: Tensor, block_size: int, heads: int,
                  sim_alpha: Tensor | float = 1.0, sim_beta: Tensor | float = 0.0) -> Tensor:
    """DA + PA on the same projected maps (the loss's non-parametric A2K*), blocked and unblocked once.

    Same values as ``distributed_branch(...) + progressive_branch(...)`` (see `_blocked_branch` for shapes); the
    two branches share one padding, one `block_heads` copy of q, k and v, and one `unblock_heads`.
    """
    return _blocked_branch(lambda qb, kb, vb: distributed_attention(qb, kb, vb, sim_alpha, sim_beta)
                           + progressive_attention(qb, kb, vb), q, k, v, block_size, heads)


def all_to_all(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Full softmax attention of every content position over every style position (AdaAttN/SANet style).

    q: (B, Cq, H, W), k: (B, Cq, Hs, Ws), v: (B, Cv, Hs, Ws) -> (B, Cv, H, W). Same raw dot product as A2K.
    Positions are 1x1 blocks, so the tokens reach SDPA with the head dim innermost (its fused kernel) and the
    output keeps a channels_last input's layout, as the A2K branches do.
    """
    out = raw_attention(
        block_heads(q, 1, heads).squeeze(-2),  # (B, h, H*W, d)
        block_heads(k, 1, heads).squeeze(-2),  # (B, h, Hs*Ws, d)
        block_heads(v, 1, heads).squeeze(-2),  # (B, h, Hs*Ws, dv)
    )
    return unblock_heads(out.unsqueeze(-2), 1, q.shape[-2:], _is_channels_last(q))


# BT.601 full-range RGB <-> YCbCr (what JPEG uses); the chroma offset 0.5 is irrelevant here. A nested tuple, not
# a tensor: importing the package allocates nothing, so a program can still choose its allocator settings after
# the import (`model.hardware.request_huge_pages`).
_RGB_TO_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))  # (3, 3)


def preserve_color(stylized: Tensor, content: Tensor) -> Tensor:
    """Colour preservation by luminance transfer: the stylized image's luma with the content's chroma.

    stylized, content: (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1].
    """
    forward = torch.tensor(_RGB_TO_YCC, dtype=torch.float32, device=stylized.device)
    inverse = torch.linalg.inv(forward)
    stylized_ycc = torch.einsum("ij,bjhw->bihw", forward, stylized.float())  # (B, 3, H, W)
    content_ycc = torch.einsum("ij,bjhw->bihw", forward, content.float())
    mixed = torch.cat([stylized_ycc[:, :1], content_ycc[:, 1:]], dim=1)  # (B, 3, H, W)
    return torch.einsum("ij,bjhw->bihw", inverse, mixed).clamp_(0.0, 1.0).to(stylized.dtype)
