"""MossFormer2 speech-enhancement network: log-mel features in, a real STFT mask out.

This is the mask estimator of ClearerVoice-Studio's MossFormer2_SE_48K (their ``TestNet`` around
``MossFormer_MaskNet``), written to be read top to bottom: the config, then small modules, then the
network. It computes exactly what theirs computes (checked against vectors generated with their code, see
tests/test_model.py); only module names differ, and :mod:`steadyvoice.models.clearervoice` maps their
checkpoint keys onto ours. Nothing here does I/O, losses or optimisation.

Data flow (B batch, T frames, D model_dim)::

    features (B, T, 3*n_mels) -> GroupNorm -> Linear -> + scaled sinusoidal position
      -> num_blocks x [gated attention unit (quadratic attention inside groups of frames + global linear
         attention, relu^2 scores, rotary positions) -> gated FSMN memory block]
      -> LayerNorm -> GroupNorm -> + skip -> PReLU -> speaker-0 projection -> tanh * sigmoid gate
      -> Linear to n_freqs -> ReLU -> mask (B, T, win_length//2+1)

Their network works on (B, C, T) with 1x1 convolutions; ours stays in (B, T, C) and uses Linear layers,
which are the same maps (weights (out, in, 1) become (out, in) on import).

The building blocks (position tables, gated attention unit, gated FSMN blocks) are shared with the
separation network :mod:`steadyvoice.models.mossformer2_ss`, which builds them with its own FSMN memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MossFormer2SEConfig", "MossFormer2SE", "check_mask_net_fields", "sinusoidal_inv_freq", "rotary_freqs",
           "textbook_ops"]


@dataclass(frozen=True)
class MossFormer2SEConfig:
    """Signal setup and network dimensions. Defaults are the official MossFormer2_SE_48K model."""

    # --- signal setup (front end and STFT) ---
    sample_rate: int = 48000
    win_length: int = 1920  # STFT size n_fft = window length (40 ms at 48 kHz); symmetric Hamming
    hop_length: int = 384  # 8 ms at 48 kHz
    n_mels: int = 60  # Kaldi log-mel bins; the network sees 3*n_mels (with deltas and delta-deltas)
    fmin: float = 20.0  # lowest mel frequency (Hz); the highest is Nyquist

    # --- network (names of ClearerVoice's MossFormer_MaskNet arguments in brackets) ---
    model_dim: int = 512  # [out_channels] width of the MossFormer blocks
    num_blocks: int = 24  # [num_blocks] attention + FSMN pairs
    num_spks: int = 2  # [num_spks] output heads; the mask is the first one (the others are trained weights only)
    norm: str = "ln"  # [norm] normalisation around the blocks: "ln" = GroupNorm(1, C) (the only one used)
    skip_around_intra: bool = True  # [skip_around_intra] residual around all blocks
    use_global_pos_enc: bool = True  # [use_global_pos_enc] scaled sinusoidal position added after the encoder
    max_length: int = 20000  # [max_length] accepted by their constructor but unused by their network; kept
    group_size: int = 256  # frames per group of the quadratic (local) attention
    query_key_dim: int = 128
    expansion_factor: float = 4.0  # hidden width of the attention unit = model_dim * expansion_factor
    attn_dropout: float = 0.1  # dropout on attention scores and inside the attention unit's projections
    causal: bool = False  # causal attention (their option; the convolutions stay non-causal, as theirs)
    norm_type: str = "scalenorm"  # pre-norm of the attention projections: "scalenorm" or "layernorm"
    shift_tokens: bool = True  # shift half of the channels by one frame before the projections
    rotary_dim: int = 32  # leading query/key dims rotated by the (shared) rotary position embedding
    conv_kernel: int = 17  # depthwise convolution inside every projection (with a residual)
    fsmn_inner_dim: int = 256  # width inside the gated FSMN block
    fsmn_lorder: int = 20  # FSMN memory reaches lorder-1 frames each way (kernel 2*lorder-1 = 39)
    fsmn_dropout: float = 0.1  # dropout inside the FSMN block's projections (fixed at 0.1 in theirs)

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        for name in ("sample_rate", "win_length", "hop_length", "n_mels", "model_dim", "num_blocks", "num_spks",
                     "max_length", "group_size", "query_key_dim", "rotary_dim", "conv_kernel", "fsmn_inner_dim",
                     "fsmn_lorder"):
            positive(name)
        if self.win_length < 2:
            raise ValueError(f"win_length must be at least 2 samples, got {self.win_length}")
        if self.hop_length > self.win_length:
            raise ValueError(f"hop_length ({self.hop_length}) must not exceed win_length ({self.win_length}): "
                             "frames would skip samples and the iSTFT could not rebuild the signal")
        if self.n_mels <= 3:
            raise ValueError(f"n_mels must be larger than 3 (Kaldi's minimum), got {self.n_mels}")
        if not 0.0 <= self.fmin < self.sample_rate / 2:
            raise ValueError(f"fmin must be in [0, sample_rate/2 = {self.sample_rate / 2:g}) Hz, got {self.fmin}")
        check_mask_net_fields(self)

    @property
    def n_freqs(self) -> int:
        """STFT bins = mask width."""
        return self.win_length // 2 + 1

    @property
    def in_channels(self) -> int:
        """Feature width: log-mel + delta + delta-delta."""
        return 3 * self.n_mels

    @property
    def hidden_dim(self) -> int:
        return int(self.model_dim * self.expansion_factor)


def check_mask_net_fields(cfg) -> None:
    """The checks on the MossFormer2 mask-net fields every MossFormer2 config shares (enhancement, separation)."""
    if cfg.model_dim % 2:
        raise ValueError(f"model_dim must be even (sine/cosine position halves, token shift), got {cfg.model_dim}")
    hidden = cfg.model_dim * cfg.expansion_factor
    if hidden != int(hidden) or int(hidden) % 2 or hidden <= 0:
        raise ValueError(f"model_dim * expansion_factor must be a positive even integer, got {hidden:g}")
    if cfg.rotary_dim % 2 or cfg.rotary_dim > cfg.query_key_dim:
        raise ValueError(f"rotary_dim must be even and at most query_key_dim ({cfg.query_key_dim}), "
                         f"got {cfg.rotary_dim}")
    if cfg.conv_kernel % 2 == 0:
        raise ValueError(f"conv_kernel must be odd (same-length padding), got {cfg.conv_kernel}")
    for name in ("attn_dropout", "fsmn_dropout"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.norm != "ln":
        raise ValueError(f"norm {cfg.norm!r} is not supported; use 'ln' (GroupNorm(1, C), the official choice)")
    if cfg.norm_type not in ("scalenorm", "layernorm"):
        raise ValueError(f"norm_type must be 'scalenorm' or 'layernorm', got {cfg.norm_type!r}")


# ----------------------------------------------------------------------------------------------------------
# Fixed position tables. Not learned and not saved: computed here, and checked against an official
# checkpoint's copies when one is imported.


def sinusoidal_inv_freq(dim: int) -> torch.Tensor:
    """Inverse frequencies of the absolute sinusoidal position encoding, (dim/2,)."""
    return 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))


def rotary_freqs(rot_dim: int) -> torch.Tensor:
    """Frequencies of the rotary embedding on ``rot_dim`` dims (rotary_embedding_torch's 'lang' table), (rot_dim/2,)."""
    return 1.0 / (10000 ** (torch.arange(0, rot_dim, 2)[: rot_dim // 2].float() / rot_dim))


class ScaledSinusoidalPosition(nn.Module):
    """[sin(t w), cos(t w)] * learned scalar, added once after the input projection."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.register_buffer("inv_freq", sinusoidal_inv_freq(dim), persistent=False)

    def forward(self, num_frames: int) -> torch.Tensor:
        t = torch.arange(num_frames, device=self.inv_freq.device, dtype=torch.float32)  # float32, as the rotary
        angles = t[:, None] * self.inv_freq.float()[None, :]  # (T, D/2)
        return torch.cat((angles.sin(), angles.cos()), dim=-1).to(self.scale.dtype) * self.scale  # (T, D)


class RotaryPosition(nn.Module):
    """Rotary position embedding on the first ``rot_dim`` channels, rotating interleaved pairs (x0, x1).

    One instance is shared by all blocks; the model computes (cos, sin) once per forward pass.
    """

    def __init__(self, rot_dim: int):
        super().__init__()
        self.rot_dim = rot_dim
        self.register_buffer("freqs", rotary_freqs(rot_dim), persistent=False)

    def forward(self, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        # float32 even in a half-precision model: positions above 256 (bfloat16) or 2048 (float16) would round.
        t = torch.arange(num_frames, device=self.freqs.device, dtype=torch.float32)
        angles = (t[:, None] * self.freqs.float()[None, :]).repeat_interleave(2, dim=-1)  # (T, R): each angle twice
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate the leading channels of x (B, T, C) by position; the remaining channels pass through."""
    cos, sin = (r.to(x.dtype) for r in rope)  # (T, R)
    rot_dim = cos.shape[-1]
    x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
    x1, x2 = x_rot.unflatten(-1, (rot_dim // 2, 2)).unbind(-1)  # (B, T, R/2) each
    x_turned = torch.stack((-x2, x1), dim=-1).flatten(-2)  # (B, T, R): pair (a, b) -> (-b, a)
    return torch.cat((x_rot * cos + x_turned * sin, x_pass), dim=-1)


# ----------------------------------------------------------------------------------------------------------
# Building blocks


class ScaleNorm(nn.Module):
    """x / (||x|| / sqrt(dim)) * g, with one learned gain."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.scale = dim**-0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


# Off (the default), autograd runs the fast formulations below; on (textbook_ops()), the textbook ones: a
# depthwise nn.Conv1d plus the residual, attention over zero-padded groups. Same values to float rounding,
# same dropout draws. The textbook forms are the baseline of bench/train.py and of the gradient tests.
_TEXTBOOK = False


@contextlib.contextmanager
def textbook_ops() -> Iterator[None]:
    """Within this context, training (autograd) runs the textbook formulations instead of the fast ones."""
    global _TEXTBOOK
    before, _TEXTBOOK = _TEXTBOOK, True
    try:
        yield
    finally:
        _TEXTBOOK = before


def plus_depthwise_over_time(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """x + a depthwise ``conv`` (no bias, same-length padding) along the time axis of x (B, T, C) -> (B, T, C).

    It runs as one 2-D convolution on a channels-last view of x whose kernel has 1 added to its centre tap
    (the residual): oneDNN's CPU kernel for that is 10-20x faster than its 1-D depthwise path, needs no
    transposed copies and no separate addition; same weights, same result to float32 rounding. With autograd
    the backward pass is the same kind of convolution (:class:`DepthwiseOverTime`).
    """
    if torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad):
        if _TEXTBOOK:
            return x + conv(x.transpose(1, 2)).transpose(1, 2)
        return DepthwiseOverTime.apply(x, conv.weight)
    return _plus_depthwise(x, conv.weight)


def _plus_depthwise(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x + depthwise conv of x (B, T, C) with weight (C, 1, K), K odd, as a channels-last conv2d -> (B, T, C),
    in the dtype of x.

    On the CPU, a half-precision x with 16 channels or fewer (a tiny network's query/key width) is convolved in
    float32: torch 2.13's bfloat16 depthwise conv2d there does not finish for 2 to 16 channels (measured with
    kernels 17 and 39). With more channels it runs in bfloat16, 8x faster than float32 at 2048 channels."""
    stalls = x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16) and x.shape[-1] <= 16
    compute = torch.float32 if stalls else x.dtype
    kernel = weight.clone()  # (C, 1, K)
    kernel[..., kernel.shape[-1] // 2] += 1.0  # the identity tap: x itself
    with torch.autocast(x.device.type, enabled=False):
        out = F.conv2d(x.to(compute).contiguous().transpose(1, 2).unsqueeze(2), kernel.to(compute).unsqueeze(2),
                       padding=(0, kernel.shape[-1] // 2), groups=kernel.shape[0])  # (B, C, 1, T), channels-last
    return out.squeeze(2).transpose(1, 2).to(x.dtype)


class DepthwiseOverTime(torch.autograd.Function):
    """x + depthwise conv over time on (B, T, C), forward and backward without leaving the (B, T, C) layout.

    Written by hand because autograd's own backward of the channels-last conv2d computes the weight gradient
    slower than the whole 1-D path. Backward: the input gradient is the same depthwise convolution (plus the
    identity) with the kernel flipped in time; the weight gradient, sum over batch and time of grad(t) *
    x(t + k - K//2), is K multiply-and-sums over shifted views into one reused buffer: measured faster than
    torch.nn.grad.conv2d_weight and than grouped-convolution or batched-matmul forms at these sizes.
    Runs without autocast, in the dtype of x.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out = _plus_depthwise(x, weight)
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        grad = grad.to(x.dtype).contiguous()  # (B, T, C)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _plus_depthwise(grad, weight.flip(-1))
        if ctx.needs_input_grad[1]:
            K = weight.shape[-1]
            T = x.shape[1]
            padded = F.pad(x, (0, 0, K // 2, K // 2))  # (B, T + K - 1, C)
            product, grad_w = torch.empty_like(grad), grad.new_empty(K, grad.shape[-1])  # (B, T, C), (K, C)
            for k in range(K):
                torch.mul(grad, padded[:, k:k + T], out=product)
                torch.sum(product, dim=(0, 1), out=grad_w[k])
            grad_w = grad_w.t().unsqueeze(1).to(weight.dtype)  # (C, 1, K)
        return grad_x, grad_w


class ConvFeedForward(nn.Module):
    """norm -> Linear -> SiLU -> depthwise conv over time (with residual) -> dropout. (Theirs: FFConvM.)"""

    def __init__(self, dim_in: int, dim_out: int, kernel: int, dropout: float, norm: str):
        super().__init__()
        self.norm = ScaleNorm(dim_in) if norm == "scalenorm" else nn.LayerNorm(dim_in)
        self.linear = nn.Linear(dim_in, dim_out)
        self.dwconv = nn.Conv1d(dim_out, dim_out, kernel, padding=kernel // 2, groups=dim_out, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.linear(self.norm(x)))  # (B, T, C_out)
        h = plus_depthwise_over_time(self.dwconv, h)  # (B, T, C_out): h + conv(h)
        return self.dropout(h)


class OffsetScale(nn.Module):
    """Four per-channel affine views of one shared query/key projection: quad_q, lin_q, quad_k, lin_k."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        # randn * 0.02 draws what nn.init.normal_(std=0.02) draws, but before the parameter exists: on the
        # meta device (load_pretrained) normal_ would import torch._dynamo, seconds per process.
        self.gamma = nn.Parameter(torch.randn(heads, dim) * 0.02)
        self.beta = nn.Parameter(torch.zeros(heads, dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = x.unsqueeze(-2) * self.gamma + self.beta  # (B, T, heads, C)
        return out.unbind(dim=-2)


class GatedAttentionUnit(nn.Module):
    """FLASH-style gated attention unit with shared queries/keys (theirs: FLASH_ShareA_FFConvM).

    Mixed-chunk attention: relu(q k^T / g)^2 inside groups of g frames plus a linear attention over the
    whole sequence, applied to two value streams v, u that then gate each other. Residual.
    """

    def __init__(self, cfg: MossFormer2SEConfig):
        super().__init__()
        self.group_size = cfg.group_size
        self.causal = cfg.causal
        self.shift_tokens = cfg.shift_tokens
        hidden = cfg.hidden_dim
        self.hidden_proj = ConvFeedForward(cfg.model_dim, hidden, cfg.conv_kernel, cfg.attn_dropout, cfg.norm_type)
        self.qk_proj = ConvFeedForward(cfg.model_dim, cfg.query_key_dim, cfg.conv_kernel, cfg.attn_dropout,
                                       cfg.norm_type)
        self.qk_offset_scale = OffsetScale(cfg.query_key_dim, heads=4)
        self.out_proj = ConvFeedForward(hidden // 2, cfg.model_dim, cfg.conv_kernel, cfg.attn_dropout, cfg.norm_type)
        self.attn_dropout = nn.Dropout(cfg.attn_dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        h = x  # (B, T, D)
        if self.shift_tokens:  # first half of the channels sees the previous frame
            shifted, kept = h.chunk(2, dim=-1)
            h = torch.cat((F.pad(shifted, (0, 0, 1, -1)), kept), dim=-1)  # (B, T, D)
        vu = self.hidden_proj(h)  # (B, T, H): v = first half, u = second half
        qk = self.qk_proj(h)  # (B, T, Q)
        quad_q, lin_q, quad_k, lin_k = (apply_rotary(t, rope) for t in self.qk_offset_scale(qk))  # (B, T, Q) each
        att_vu = self.attend(quad_q, lin_q, quad_k, lin_k, vu)  # (B, T, H)
        v, u = vu.chunk(2, dim=-1)  # (B, T, H/2) each
        att_v, att_u = att_vu.chunk(2, dim=-1)
        gated = (att_u * v) * torch.sigmoid(att_v * u)  # (B, T, H/2)
        return x + self.out_proj(gated)  # (B, T, D)

    def attend(self, quad_q, lin_q, quad_k, lin_k, values):
        """Quadratic attention within groups + linear attention across groups, for values (B, T, E)."""
        exporting = torch.compiler.is_exporting()
        if self.causal or (_TEXTBOOK and torch.is_grad_enabled() and not exporting):
            return self._attend_grouped(quad_q, lin_q, quad_k, lin_k, values)
        if exporting:  # one graph for every length (steadyvoice.onnx_export)
            return self._attend_padded(quad_q, lin_q, quad_k, lin_k, values)
        B, T, _ = values.shape
        g = self.group_size
        kv = lin_k.transpose(1, 2) @ values / T  # (B, Q, E): one summary of the whole sequence
        out = lin_q @ kv  # (B, T, E)
        # Groups of g frames; the last one may be shorter. Zero padding (as theirs) would give zero keys and
        # values, which add nothing: the short group is computed as it is, without padded copies. Dropout
        # draws what it draws in the padded form (_attend_grouped): one (B, G, g, g) mask, cut to the short
        # group, so that training takes the same random draws in either form.
        keep = None
        full = T - T % g
        for lo, hi, size in ((0, full, g), (full, T, T - full)):
            if hi > lo:
                q, k, v = (t[:, lo:hi].unflatten(1, (-1, size)) for t in (quad_q, quad_k, values))  # (B, G, size, C)
                attn = F.relu(q @ k.transpose(-1, -2) / g) ** 2  # (B, G', size, size)
                if self.attn_dropout.training and self.attn_dropout.p > 0:
                    if keep is None:
                        keep = self._dropout_keep((B, -(-T // g), g, g), attn)
                    attn = attn * keep[:, lo // g: lo // g + attn.shape[1], :size, :size]
                out[:, lo:hi] += (attn @ v).flatten(1, 2)  # (B, hi-lo, E)
        return out

    def _dropout_keep(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """The kept-and-rescaled factors nn.Dropout multiplies a tensor of ``shape`` by, from the same random
        draws (bernoulli(1 - p) / (1 - p), as torch's dropout on CPU)."""
        p = self.attn_dropout.p
        return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(1 - p).div_(1 - p)

    def _attend_padded(self, quad_q, lin_q, quad_k, lin_k, values):
        """attend() with the last group zero-padded to g frames (as theirs): the same values, and no branch on
        T % g, so that torch.export traces one graph for every length (G is written so that G * g is visibly
        a multiple of g to its symbolic shapes)."""
        T = values.shape[1]
        g = self.group_size
        kv = lin_k.transpose(1, 2) @ values / T  # (B, Q, E)
        G = (T + g - 1) // g
        q, k, v = (F.pad(t, (0, 0, 0, G * g - T)).unflatten(1, (G, g)) for t in (quad_q, quad_k, values))  # (B,G,g,.)
        attn = self.attn_dropout(F.relu(q @ k.transpose(-1, -2) / g) ** 2)  # (B, G, g, g)
        return lin_q @ kv + (attn @ v).flatten(1, 2)[:, :T]  # (B, T, E)

    def _attend_grouped(self, quad_q, lin_q, quad_k, lin_k, values):
        """attend() over zero-padded groups of g frames (as theirs); causal: each group sees the summary of the
        groups before it, else one summary of the whole sequence."""
        B, T, _ = values.shape
        g = self.group_size
        pad = -T % g  # zero frames give zero keys and values, so they add nothing
        if pad:
            quad_q, lin_q, quad_k, lin_k, values = (F.pad(t, (0, 0, 0, pad)) for t in
                                                    (quad_q, lin_q, quad_k, lin_k, values))
        quad_q, lin_q, quad_k, lin_k, values = (t.unflatten(1, (-1, g)) for t in
                                                (quad_q, lin_q, quad_k, lin_k, values))  # (B, G, g, C)

        scores = quad_q @ quad_k.transpose(-1, -2) / g  # (B, G, g, g)
        attn = self.attn_dropout(F.relu(scores) ** 2)
        if self.causal:
            future = torch.ones(g, g, dtype=torch.bool, device=attn.device).triu(1)
            attn = attn.masked_fill(future, 0.0)
        quad_out = attn @ values  # (B, G, g, E)
        if self.causal:
            kv = lin_k.transpose(-1, -2) @ values / g  # (B, G, Q, E)
            kv = F.pad(kv.cumsum(dim=1), (0, 0, 0, 0, 1, -1))  # exclusive cumulative sum over groups
            lin_out = lin_q @ kv  # (B, G, g, E)
        else:  # one summary of the whole (unpadded) sequence
            kv = torch.einsum("bgnd,bgne->bde", lin_k, values) / T  # (B, Q, E)
            lin_out = lin_q @ kv.unsqueeze(1)  # (B, G, g, E)
        return (quad_out + lin_out).flatten(1, 2)[:, :T]  # (B, T, E)


class FSMNMemory(nn.Module):
    """Feedforward sequential memory: Linear -> ReLU -> Linear, then a depthwise conv over +-(lorder-1)
    frames added to itself, plus the input (theirs: UniDeepFsmn)."""

    def __init__(self, dim: int, hidden: int, lorder: int):
        super().__init__()
        self.linear = nn.Linear(dim, hidden)
        self.project = nn.Linear(hidden, dim, bias=False)
        self.conv = nn.Conv1d(dim, dim, 2 * lorder - 1, padding=lorder - 1, groups=dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.project(F.relu(self.linear(x)))  # (B, T, C)
        memory = plus_depthwise_over_time(self.conv, p)  # (B, T, C): p + conv(p)
        return x + memory


def fsmn_memory(cfg) -> nn.Module:
    """The memory of MossFormer2-SE's gated FSMN (the default ``memory`` factory of the blocks below)."""
    return FSMNMemory(cfg.fsmn_inner_dim, cfg.fsmn_inner_dim, cfg.fsmn_lorder)


# The blocks below are shared by every MossFormer2 network: they read only the fields they need from
# ``cfg`` (MossFormer2SEConfig, MossFormer2SSConfig, ...). ``memory(cfg) -> nn.Module`` builds the memory
# inside the gated FSMN ((B, T, fsmn_inner_dim) -> same); MossFormer2-SS passes its dilated dense memory.
MemoryFactory = Callable[[Any], nn.Module]


class GatedFSMN(nn.Module):
    """memory(to_u(x)) * to_v(x) + x (theirs: Gated_FSMN, or Gated_FSMN_dilated with a dilated memory)."""

    def __init__(self, cfg: MossFormer2SEConfig, memory: MemoryFactory = fsmn_memory):
        super().__init__()
        dim = cfg.fsmn_inner_dim
        self.to_u = ConvFeedForward(dim, dim, cfg.conv_kernel, cfg.fsmn_dropout, "layernorm")
        self.to_v = ConvFeedForward(dim, dim, cfg.conv_kernel, cfg.fsmn_dropout, "layernorm")
        self.memory = memory(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.memory(self.to_u(x)) * self.to_v(x) + x  # (B, T, C)


class GatedFSMNBlock(nn.Module):
    """Linear + PReLU into fsmn_inner_dim, LayerNorm, gated FSMN, LayerNorm, Linear back; residual."""

    def __init__(self, cfg: MossFormer2SEConfig, memory: MemoryFactory = fsmn_memory):
        super().__init__()
        inner = cfg.fsmn_inner_dim
        self.in_proj = nn.Linear(cfg.model_dim, inner)
        self.in_act = nn.PReLU()
        self.norm1 = nn.LayerNorm(inner)
        self.gated_fsmn = GatedFSMN(cfg, memory)
        self.norm2 = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, cfg.model_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(self.in_act(self.in_proj(x)))  # (B, T, inner)
        h = self.norm2(self.gated_fsmn(h))  # (B, T, inner)
        return x + self.out_proj(h)  # (B, T, D)


class MossFormerBlock(nn.Module):
    """One gated attention unit followed by one gated FSMN block."""

    def __init__(self, cfg: MossFormer2SEConfig, memory: MemoryFactory = fsmn_memory):
        super().__init__()
        self.attention = GatedAttentionUnit(cfg)
        self.fsmn = GatedFSMNBlock(cfg, memory)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.fsmn(self.attention(x, rope))  # (B, T, D)


# ----------------------------------------------------------------------------------------------------------
# The network


class MossFormer2SE(nn.Module):
    """features (B, T, 3*n_mels) -> mask (B, T, win_length//2+1), values >= 0."""

    def __init__(self, cfg: MossFormer2SEConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.model_dim
        self.input_norm = nn.GroupNorm(1, cfg.in_channels, eps=1e-8)
        self.encoder = nn.Linear(cfg.in_channels, D, bias=False)
        self.position = ScaledSinusoidalPosition(D) if cfg.use_global_pos_enc else None
        self.rotary = RotaryPosition(cfg.rotary_dim)
        self.blocks = nn.ModuleList(MossFormerBlock(cfg) for _ in range(cfg.num_blocks))
        self.blocks_norm = nn.LayerNorm(D, eps=1e-6)
        self.skip_norm = nn.GroupNorm(1, D, eps=1e-8)
        self.prelu = nn.PReLU()
        # One D-wide stream per speaker; only speaker 0's rows are used (the others exist so official
        # checkpoints load and fine-tuning keeps them).
        self.speaker_proj = nn.Linear(D, D * cfg.num_spks)
        self.out_tanh = nn.Linear(D, D)
        self.out_gate = nn.Linear(D, D)
        self.decoder = nn.Linear(D, cfg.n_freqs, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 3 or features.shape[-1] != self.cfg.in_channels:
            raise ValueError(f"MossFormer2SE expects features (batch, frames, {self.cfg.in_channels}), "
                             f"got {tuple(features.shape)}")
        T = features.shape[1]
        D = self.cfg.model_dim
        x = self.input_norm(features.transpose(1, 2)).transpose(1, 2)  # (B, T, 3*n_mels)
        x = self.encoder(x)  # (B, T, D)
        if self.position is not None:
            x = x + self.position(T)  # (B, T, D)
        skip = x
        rope = self.rotary(T)  # (T, R) cos and sin, shared by all blocks
        for block in self.blocks:
            x = block(x, rope)  # (B, T, D)
        x = self.blocks_norm(x)  # (B, T, D)
        x = self.skip_norm(x.transpose(1, 2)).transpose(1, 2)  # (B, T, D)
        if self.cfg.skip_around_intra:
            x = x + skip
        x = self.prelu(x)
        # Speaker 0 only: rows [0, D) of the projection. Slicing keeps every row in the autograd graph
        # (zero gradient for the unused ones), so DDP sees all parameters used.
        x = F.linear(x, self.speaker_proj.weight[:D], self.speaker_proj.bias[:D])  # (B, T, D)
        x = torch.tanh(self.out_tanh(x)) * torch.sigmoid(self.out_gate(x))  # (B, T, D)
        return F.relu(self.decoder(x))  # (B, T, n_freqs)

