"""MossFormerGAN speech enhancement: a time-frequency generator and its metric discriminator.

The networks of ClearerVoice-Studio's MossFormerGAN_SE_16K (CMGAN-style), written to be read top to
bottom: configs first, then small modules, then the two networks. They compute exactly what theirs
compute (checked against vectors generated with their code, see tests/test_mossformergan.py); module
names differ, and :mod:`steadyvoice.models.clearervoice_mossformergan` maps their keys onto ours. Nothing
here does I/O, losses or optimisation; the STFT front and back ends are in
:mod:`steadyvoice.pipelines.mossformergan_se`.

Generator (theirs: ``SyncANet``; B batch, T frames, F = n_fft/2+1 bins, F' = (F+1)/2, C channels)::

    compressed spectrum (B, 2, T, F) -> [|X|, Re, Im] (B, 3, T, F)
      -> dense encoder: 1x1 conv, dilated dense block (time-causal convs + frequency FSMN), stride-2 conv
         -> (B, C, T, F')
      -> num_blocks x time-frequency block: frequency path, time path (each: unfold, gated FSMN, MossFormer
         gated attention along the axis and across the other one, squeeze-excitation, residual), then
         full-band self-attention over time
      -> mask decoder (B, 1, T, F) and complex decoder (B, 2, T, F)
      -> est = mask * |X| * e^{j angle X} + complex residual: (est_real, est_imag), each (B, 1, T, F)

Metric discriminator (theirs: ``Discriminator``, NISQA-style, training only)::

    ref_mag, est_mag (B, 1, F, T) -> 15-frame windows every 4 frames -> (B*n, 2, F, 15)
      -> CNN with adaptive max pooling -> (B, n, 6*c3) -> 2 Conformer blocks -> attention pooling
      -> beta * sigmoid(slope * x): score (B, 1) in (0, beta)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from steadyvoice.models.mossformer2 import ConvFeedForward, FSMNMemory, OffsetScale, RotaryPosition, apply_rotary

__all__ = [
    "MossFormerGANConfig",
    "MossFormerGANGenerator",
    "MetricDiscriminatorConfig",
    "MetricDiscriminator",
    "DISCRIMINATOR_CONFIGS",
]


@dataclass(frozen=True)
class MossFormerGANConfig:
    """Signal setup and generator dimensions. Defaults are the official MossFormerGAN_SE_16K generator."""

    # --- signal setup (STFT and compression; used by steadyvoice.pipelines.mossformergan_se) ---
    sample_rate: int = 16000
    win_length: int = 400  # Hamming window (periodic at inference, as ClearVoice's decoder)
    hop_length: int = 100
    n_fft: int = 400  # F = n_fft/2 + 1 = 201 bins
    compress_power: float = 0.3  # the network sees |X|^0.3 with the noisy phase

    # --- generator (their names in brackets) ---
    channels: int = 64  # [num_channel] width C of every 2-D feature map
    num_blocks: int = 6  # [n_layers] time-frequency blocks (fixed at 6 in theirs)
    query_key_dim: int = 128  # MossFormer query/key width; their cross-axis attention needs 2 * channels
    rotary_dim: int = 32  # leading query/key dims rotated by position: min(32, query_key_dim) in theirs
    conv_kernel: int = 31  # depthwise convolution inside every FFConvM projection
    fsmn_lorder: int = 20  # FSMN of the frequency/time paths: kernel 2*lorder-1 = 39
    dense_depth: int = 4  # layers of every dilated dense block (dilations 1, 2, 4, 8 in time)
    dense_fsmn_lorder: int = 5  # frequency FSMN after each dense layer: kernel 9
    attn_heads: int = 4  # heads of the full-band self-attention
    approx_qk_dim: int = 512  # full-band attention: query/key channels per head E = ceil(512 / F')
    dropout: float = 0.1  # inside the FFConvM projections and on MossFormer attention scores
    norm_eps: float = 1e-5  # the 4-D layer norms of the blocks

    def __post_init__(self) -> None:
        for name in ("sample_rate", "win_length", "hop_length", "n_fft", "channels", "num_blocks", "query_key_dim",
                     "rotary_dim", "conv_kernel", "fsmn_lorder", "dense_depth", "dense_fsmn_lorder", "attn_heads",
                     "approx_qk_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_fft % 4:
            raise ValueError(f"n_fft must be a multiple of 4 (an odd number of bins, which the stride-2 encoder "
                             f"halves and the decoder doubles back exactly), got {self.n_fft}")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})")
        if self.hop_length > self.win_length:
            raise ValueError(f"hop_length ({self.hop_length}) must not exceed win_length ({self.win_length}): "
                             "frames would skip samples and the iSTFT could not rebuild the signal")
        if not 0.0 < self.compress_power <= 1.0:
            raise ValueError(f"compress_power must be in (0, 1], got {self.compress_power}")
        if self.query_key_dim != 2 * self.channels:
            raise ValueError(f"query_key_dim must be 2 * channels = {2 * self.channels}, got {self.query_key_dim} "
                             "(ClearerVoice's cross-axis attention reshapes the values with the query width)")
        if self.rotary_dim % 2 or self.rotary_dim > self.query_key_dim:
            raise ValueError(f"rotary_dim must be even and at most query_key_dim ({self.query_key_dim}), "
                             f"got {self.rotary_dim}")
        if self.channels % self.attn_heads:
            raise ValueError(f"channels ({self.channels}) must be divisible by attn_heads ({self.attn_heads})")
        if self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd (same-length padding), got {self.conv_kernel}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.norm_eps > 0.0:
            raise ValueError(f"norm_eps must be positive, got {self.norm_eps}")

    @property
    def n_freqs(self) -> int:
        """STFT bins F."""
        return self.n_fft // 2 + 1

    @property
    def encoded_freqs(self) -> int:
        """Bins after the stride-2 encoder, F' = (F + 1) / 2 (101 for n_fft 400)."""
        return (self.n_freqs + 1) // 2

    @property
    def head_qk_channels(self) -> int:
        """Full-band attention: query/key channels per head, E = ceil(approx_qk_dim / F')."""
        return math.ceil(self.approx_qk_dim / self.encoded_freqs)


# ----------------------------------------------------------------------------------------------------------
# Generator building blocks. Feature maps are (B, C, T, F) unless said otherwise.


class LayerNorm4d(nn.Module):
    """Normalise over channels (and over frequency too when ``n_freqs`` is given), per frame.

    Theirs: LayerNormalization4D (gain/bias (1, C, 1, 1)) and LayerNormalization4DCF ((1, C, 1, F)).
    """

    def __init__(self, channels: int, n_freqs: int | None = None, eps: float = 1e-5):
        super().__init__()
        shape = (1, channels, 1, n_freqs or 1)
        self.dims = (1, 3) if n_freqs else (1,)
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=self.dims, keepdim=True)  # (B, 1, T, 1 or F)
        std = torch.sqrt(x.var(dim=self.dims, unbiased=False, keepdim=True) + self.eps)
        return (x - mean) / std * self.gamma + self.beta  # (B, C, T, F)


class FrequencyFSMN(nn.Module):
    """FSMN memory along frequency, applied to every frame (theirs: FSMN_Wrap)."""

    def __init__(self, channels: int, lorder: int):
        super().__init__()
        self.memory = FSMNMemory(channels, channels, lorder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, Fq = x.shape
        h = x.permute(0, 2, 3, 1).reshape(B * T, Fq, C)  # (B*T, F, C)
        h = self.memory(h)
        return h.reshape(B, T, Fq, C).permute(0, 3, 1, 2)  # (B, C, T, F)


class DenseLayer(nn.Module):
    """Time-causal (2, 3) convolution with dilation d in time -> InstanceNorm -> PReLU -> frequency FSMN."""

    def __init__(self, in_channels: int, channels: int, dilation: int, fsmn_lorder: int):
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv2d(in_channels, channels, kernel_size=(2, 3), dilation=(dilation, 1))
        self.norm = nn.InstanceNorm2d(channels, affine=True)
        self.act = nn.PReLU(channels)
        self.fsmn = FrequencyFSMN(channels, fsmn_lorder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.pad(x, (1, 1, self.dilation, 0))  # past frames only; one bin each side
        return self.fsmn(self.act(self.norm(self.conv(h))))  # (B, C, T, F)


class DilatedDenseBlock(nn.Module):
    """Dense block: layer i sees the input and every earlier output (newest first); returns the last output."""

    def __init__(self, channels: int, depth: int, fsmn_lorder: int):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(channels * (i + 1), channels, 2**i, fsmn_lorder) for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x
        for layer in self.layers:
            out = layer(skip)  # (B, C, T, F)
            skip = torch.cat((out, skip), dim=1)  # (B, C*(i+2), T, F)
        return out


class DenseEncoder(nn.Module):
    """[|X|, Re, Im] (B, 3, T, F) -> (B, C, T, F'): 1x1 conv, dense block, stride-2 conv over frequency."""

    def __init__(self, cfg: MossFormerGANConfig):
        super().__init__()
        C = cfg.channels
        self.in_conv = nn.Conv2d(3, C, kernel_size=1)
        self.in_norm = nn.InstanceNorm2d(C, affine=True)
        self.in_act = nn.PReLU(C)
        self.dense = DilatedDenseBlock(C, cfg.dense_depth, cfg.dense_fsmn_lorder)
        self.down_conv = nn.Conv2d(C, C, kernel_size=(1, 3), stride=(1, 2), padding=(0, 1))
        self.down_norm = nn.InstanceNorm2d(C, affine=True)
        self.down_act = nn.PReLU(C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_act(self.in_norm(self.in_conv(x)))  # (B, C, T, F)
        x = self.dense(x)
        return self.down_act(self.down_norm(self.down_conv(x)))  # (B, C, T, F')


SCORE_BUDGET = 1 << 25  # attention scores held at once by AxialGatedAttention (128 MB in float32)


class AxialGatedAttention(nn.Module):
    """MossFormer gated attention unit on a 2-D grid (theirs: the MossFormer class of MossFormerGAN).

    Input (B, A, S, D): sequences of length S (the attended axis) at A positions of the other axis. Scores
    relu(q k^T / n)^2 are summed over three views: all S positions of a sequence (one group spanning the
    whole axis), all A positions at the same s (the cross-axis branch, self-pairs excluded) and a linear
    attention over S. They weigh two value streams v, u that then gate each other. Residual.
    """

    def __init__(self, cfg: MossFormerGANConfig):
        super().__init__()
        D, hidden = cfg.channels, 4 * cfg.channels  # hidden splits into v and u (2D each)
        self.hidden_proj = ConvFeedForward(D, hidden, cfg.conv_kernel, cfg.dropout, "layernorm")
        self.qk_proj = ConvFeedForward(D, cfg.query_key_dim, cfg.conv_kernel, cfg.dropout, "layernorm")
        self.qk_offset_scale = OffsetScale(cfg.query_key_dim, heads=4)
        self.out_proj = ConvFeedForward(hidden // 2, D, cfg.conv_kernel, cfg.dropout, "layernorm")
        self.attn_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, A, S, D = x.shape
        x = x.reshape(B * A, S, D)  # (B*A, S, D)
        shifted, kept = x.chunk(2, dim=-1)  # token shift: half of the channels see the previous position
        h = torch.cat((F.pad(shifted, (0, 0, 1, -1)), kept), dim=-1)  # (B*A, S, D)
        vu = self.hidden_proj(h)  # (B*A, S, 4D): v = first half, u = second half
        qk = self.qk_proj(h)  # (B*A, S, Q)
        quad_q, lin_q, quad_k, lin_k = (apply_rotary(t, rope) for t in self.qk_offset_scale(qk))  # (B*A, S, Q)
        att_vu = self.attend(quad_q, lin_q, quad_k, lin_k, vu, A)  # (B*A, S, 4D)
        v, u = vu.chunk(2, dim=-1)  # (B*A, S, 2D) each
        att_v, att_u = att_vu.chunk(2, dim=-1)
        gated = (att_u * v) * torch.sigmoid(att_v * u)  # (B*A, S, 2D)
        return (x + self.out_proj(gated)).reshape(B, A, S, D)

    def attend(self, quad_q, lin_q, quad_k, lin_k, values, A: int) -> torch.Tensor:
        """relu^2 attention along S + relu^2 attention across A + linear attention along S, for values (B*A, S, E)."""
        BA, S, _ = values.shape
        along = self.relu2_attention(quad_q, quad_k, values)  # (B*A, S, E)

        def across_view(t: torch.Tensor) -> torch.Tensor:  # (B*A, S, C) -> (B*S, A, C)
            return t.reshape(BA // A, A, S, -1).transpose(1, 2).reshape(BA // A * S, A, -1)

        across = self.relu2_attention(across_view(quad_q), across_view(quad_k), across_view(values), exclude_self=True)
        across = across.reshape(BA // A, S, A, -1).transpose(1, 2).reshape(BA, S, -1)  # (B*A, S, E)

        kv = lin_k.transpose(-1, -2) @ values / S  # (B*A, Q, E): one summary of the whole axis
        return (along + across) + lin_q @ kv  # (B*A, S, E)

    def relu2_attention(self, q, k, v, exclude_self: bool = False) -> torch.Tensor:
        """relu(q k^T / n)^2 v over the n positions of each of N sequences: q, k (N, n, Q), v (N, n, E) -> (N, n, E).

        The (n, n) score tables are built for a few sequences at a time (at most SCORE_BUDGET scores), so
        memory stays bounded for long inputs (20 s: 3201 frames, 10 M scores per sequence).
        """
        N, n, _ = q.shape
        self_pairs = torch.eye(n, dtype=torch.bool, device=q.device) if exclude_self else None
        if torch.compiler.is_exporting():  # one graph for every length (steadyvoice.onnx_export): no chunks
            attn = F.relu(q @ k.transpose(-1, -2) / n) ** 2  # (N, n, n)
            return (attn if self_pairs is None else attn.masked_fill(self_pairs, 0.0)) @ v
        step = max(1, SCORE_BUDGET // (n * n))
        out = []
        for i in range(0, N, step):
            scores = q[i:i + step] @ k[i:i + step].transpose(-1, -2)  # (step, n, n)
            if torch.is_grad_enabled():
                attn = self.attn_dropout(F.relu(scores / n) ** 2)
            else:  # the same, in place: the score tables dominate the memory traffic of long inputs
                attn = self.attn_dropout(scores.div_(n).relu_().square_())
            if self_pairs is not None:
                attn = attn.masked_fill(self_pairs, 0.0)
            out.append(attn @ v[i:i + step])  # (step, n, E)
        return torch.cat(out) if len(out) > 1 else out[0]


class SqueezeExcite(nn.Module):
    """x * (gate(mean over T, F) + gate(max over T, F)), each gate Linear -> ReLU -> Linear -> sigmoid."""

    def __init__(self, channels: int):
        super().__init__()

        def gate() -> nn.Sequential:
            return nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels), nn.Sigmoid())

        self.avg_gate = gate()
        self.max_gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.avg_gate(x.mean(dim=(2, 3)))  # (B, C)
        peak = self.max_gate(x.amax(dim=(2, 3)))  # (B, C)
        return (avg + peak)[:, :, None, None] * x  # (B, C, T, F)


class AxisPath(nn.Module):
    """One pass along the last axis S of a (B, C, A, S) map (theirs: the intra / inter halves of SyncANetBlock).

    norm -> pairs of neighbouring positions (B, 2C, A, S-1) -> FFConvM to u and v, FSMN memory on u, v*u ->
    transposed conv back to (C, S) -> gated attention along S (and across A) -> squeeze-excitation -> residual.
    The frequency path pairs bins with a learned grouped convolution, the time path with a plain unfold.
    """

    def __init__(self, cfg: MossFormerGANConfig, learned_pairs: bool):
        super().__init__()
        C = cfg.channels
        self.norm = LayerNorm4d(C, eps=cfg.norm_eps)
        self.unfold = nn.Conv2d(C, 2 * C, kernel_size=(1, 2), groups=C) if learned_pairs else None
        self.to_u = ConvFeedForward(2 * C, 2 * C, cfg.conv_kernel, cfg.dropout, "layernorm")
        self.to_v = ConvFeedForward(2 * C, 2 * C, cfg.conv_kernel, cfg.dropout, "layernorm")
        self.fsmn = FSMNMemory(2 * C, 2 * C, cfg.fsmn_lorder)
        self.fold = nn.ConvTranspose1d(2 * C, C, kernel_size=2)
        self.attention = AxialGatedAttention(cfg)
        self.se = SqueezeExcite(C)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, C, A, S = x.shape
        h = self.norm(x)  # (B, C, A, S)
        if self.unfold is not None:
            h = self.unfold(h)  # (B, 2C, A, S-1), channel 2c+k from position s+k
        else:
            h = torch.stack((h[..., :-1], h[..., 1:]), dim=2).reshape(B, 2 * C, A, S - 1)
        h = h.permute(0, 2, 3, 1).reshape(B * A, S - 1, 2 * C)  # (B*A, S-1, 2C)
        h = self.to_v(h) * self.fsmn(self.to_u(h))  # (B*A, S-1, 2C)
        h = self.fold(h.transpose(1, 2)).transpose(1, 2)  # (B*A, S, C)
        h = self.attention(h.reshape(B, A, S, C), rope)  # (B, A, S, C)
        return x + self.se(h.permute(0, 3, 1, 2))  # (B, C, A, S)


class ConvPReLUNorm(nn.Module):
    """1x1 conv -> PReLU (one slope) -> layer norm over (channels, frequency)."""

    def __init__(self, in_channels: int, out_channels: int, n_freqs: int, eps: float):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.act = nn.PReLU()
        self.norm = LayerNorm4d(out_channels, n_freqs, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.conv(x)))


class FullBandAttention(nn.Module):
    """TF-GridNet self-attention over time: each frame's whole (channels x frequency) plane is one token."""

    def __init__(self, cfg: MossFormerGANConfig):
        super().__init__()
        C, Fe, E, H = cfg.channels, cfg.encoded_freqs, cfg.head_qk_channels, cfg.attn_heads
        self.queries = nn.ModuleList(ConvPReLUNorm(C, E, Fe, cfg.norm_eps) for _ in range(H))
        self.keys = nn.ModuleList(ConvPReLUNorm(C, E, Fe, cfg.norm_eps) for _ in range(H))
        self.values = nn.ModuleList(ConvPReLUNorm(C, C // H, Fe, cfg.norm_eps) for _ in range(H))
        self.out = ConvPReLUNorm(C, C, Fe, cfg.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.stack([m(x) for m in self.queries], dim=1).transpose(2, 3).flatten(3)  # (B, H, T, E*F')
        k = torch.stack([m(x) for m in self.keys], dim=1).transpose(2, 3).flatten(3)  # (B, H, T, E*F')
        v = torch.stack([m(x) for m in self.values], dim=1)  # (B, H, C/H, T, F')
        per_head = v.shape[2]
        attn = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)  # (B, H, T, T)
        out = attn @ v.transpose(2, 3).flatten(3)  # (B, H, T, C/H*F')
        out = out.unflatten(3, (per_head, -1)).transpose(2, 3).flatten(1, 2)  # (B, C, T, F'), head-major channels
        return x + self.out(out)


class TimeFrequencyBlock(nn.Module):
    """Frequency path, time path, full-band attention (theirs: SyncANetBlock, TF-GridNet-like).

    Their block pads T and F' to fit the (kernel 2, hop 1) unfolding, which never needs padding; so no pad.
    """

    def __init__(self, cfg: MossFormerGANConfig):
        super().__init__()
        self.freq_path = AxisPath(cfg, learned_pairs=True)
        self.time_path = AxisPath(cfg, learned_pairs=False)
        self.full_band = FullBandAttention(cfg)

    def forward(self, x: torch.Tensor, rope_freq, rope_time) -> torch.Tensor:
        x = self.freq_path(x, rope_freq)  # (B, C, T, F'): sequences along frequency
        x = self.time_path(x.transpose(2, 3), rope_time).transpose(2, 3)  # sequences along time
        return self.full_band(x)  # (B, C, T, F')


class SubPixelUpsample(nn.Module):
    """Conv (1, 3) to r*C channels, then the r channel groups interleaved along frequency: F' -> r*F'."""

    def __init__(self, in_channels: int, out_channels: int, r: int = 2):
        super().__init__()
        self.r = r
        self.conv = nn.Conv2d(in_channels, out_channels * r, kernel_size=(1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(F.pad(x, (1, 1, 0, 0)))  # (B, r*C, T, F')
        B, rC, T, Fe = out.shape
        out = out.reshape(B, self.r, rC // self.r, T, Fe).permute(0, 2, 3, 4, 1)  # (B, C, T, F', r)
        return out.reshape(B, rC // self.r, T, Fe * self.r)  # (B, C, T, r*F')


class MaskDecoder(nn.Module):
    """(B, C, T, F') -> magnitude mask (B, 1, T, F), unbounded (per-bin PReLU at the end)."""

    def __init__(self, cfg: MossFormerGANConfig):
        super().__init__()
        C = cfg.channels
        self.dense = DilatedDenseBlock(C, cfg.dense_depth, cfg.dense_fsmn_lorder)
        self.upsample = SubPixelUpsample(C, C, 2)
        self.conv = nn.Conv2d(C, 1, kernel_size=(1, 2))
        self.norm = nn.InstanceNorm2d(1, affine=True)
        self.act = nn.PReLU(1)
        self.final_conv = nn.Conv2d(1, 1, kernel_size=1)
        self.freq_act = nn.PReLU(cfg.n_freqs, init=-0.25)  # one slope per frequency bin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.upsample(self.dense(x))  # (B, C, T, 2F')
        x = self.act(self.norm(self.conv(x)))  # (B, 1, T, F)
        x = self.final_conv(x)[:, 0].transpose(1, 2)  # (B, F, T)
        return self.freq_act(x).transpose(1, 2).unsqueeze(1)  # (B, 1, T, F)


class ComplexDecoder(nn.Module):
    """(B, C, T, F') -> complex residual (B, 2, T, F)."""

    def __init__(self, cfg: MossFormerGANConfig):
        super().__init__()
        C = cfg.channels
        self.dense = DilatedDenseBlock(C, cfg.dense_depth, cfg.dense_fsmn_lorder)
        self.upsample = SubPixelUpsample(C, C, 2)
        self.norm = nn.InstanceNorm2d(C, affine=True)
        self.act = nn.PReLU(C)
        self.conv = nn.Conv2d(C, 2, kernel_size=(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.upsample(self.dense(x))  # (B, C, T, 2F')
        return self.conv(self.act(self.norm(x)))  # (B, 2, T, F)


# ----------------------------------------------------------------------------------------------------------
# The generator


class MossFormerGANGenerator(nn.Module):
    """Compressed noisy spectrum (B, 2, T, F) (real, imag) -> (est_real, est_imag), each (B, 1, T, F)."""

    def __init__(self, cfg: MossFormerGANConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = DenseEncoder(cfg)
        # One fixed rotary table shared by every attention unit (theirs: an identical copy in each of them).
        self.rotary = RotaryPosition(cfg.rotary_dim)
        self.blocks = nn.ModuleList(TimeFrequencyBlock(cfg) for _ in range(cfg.num_blocks))
        self.mask_decoder = MaskDecoder(cfg)
        self.complex_decoder = ComplexDecoder(cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 2 or x.shape[3] != self.cfg.n_freqs:
            raise ValueError(f"MossFormerGANGenerator expects a compressed spectrum (batch, 2, frames, "
                             f"{self.cfg.n_freqs}), got {tuple(x.shape)}")
        real, imag = x[:, 0:1], x[:, 1:2]  # (B, 1, T, F) each
        mag = torch.sqrt(real**2 + imag**2)
        phase = torch.angle(torch.complex(real, imag))
        h = self.encoder(torch.cat((mag, x), dim=1))  # (B, C, T, F')
        rope_freq, rope_time = self.rotary(h.shape[3]), self.rotary(h.shape[2])
        for block in self.blocks:
            h = block(h, rope_freq, rope_time)  # (B, C, T, F')
        mask = self.mask_decoder(h)  # (B, 1, T, F)
        residual = self.complex_decoder(h)  # (B, 2, T, F)
        out_mag = mask * mag
        est_real = out_mag * torch.cos(phase) + residual[:, 0:1]
        est_imag = out_mag * torch.sin(phase) + residual[:, 1:2]
        return est_real, est_imag  # (B, 1, T, F) each, compressed domain


# ----------------------------------------------------------------------------------------------------------
# Metric discriminator


CNN_POOLS = ((101, 7), (50, 7), (25, 5), (12, 5), (6, 3))  # adaptive max-pool sizes after convs 1-5 (fixed in theirs)


@dataclass(frozen=True)
class MetricDiscriminatorConfig:
    """Discriminator dimensions. Defaults are the official MossFormerGAN_SE_16K discriminator (8.1 M)."""

    segment_frames: int = 15  # each window of the magnitudes covers 15 frames
    segment_hop: int = 4  # a window starts every 4 frames
    cnn_channels: tuple[int, int, int] = (16, 32, 64)  # conv 1, conv 2, convs 3-6
    cnn_dropout: float = 0.2  # Dropout2d before convs 3-6
    conformer_blocks: int = 2
    conformer_heads: int = 4  # head width = feature_dim / heads
    ff_mult: int = 4
    conv_expansion: int = 2
    conv_kernel: int = 31
    attn_dropout: float = 0.2
    ff_dropout: float = 0.2
    max_relative_position: int = 512  # Shaw relative positions, clamped at +-512 windows
    pool_hidden: int = 128
    pool_dropout: float = 0.1
    sigmoid_beta: float = 1.0  # score = beta * sigmoid(slope * x)

    def __post_init__(self) -> None:
        for name in ("segment_frames", "segment_hop", "conformer_blocks", "conformer_heads", "ff_mult",
                     "conv_expansion", "conv_kernel", "max_relative_position", "pool_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if len(self.cnn_channels) != 3 or any(not isinstance(c, int) or c <= 0 for c in self.cnn_channels):
            raise ValueError(f"cnn_channels must be three positive integers, got {self.cnn_channels!r}")
        if self.segment_frames % 2 == 0:
            raise ValueError(f"segment_frames must be odd (as theirs), got {self.segment_frames}")
        if self.feature_dim % self.conformer_heads:
            raise ValueError(f"the Conformer width 6 * cnn_channels[2] = {self.feature_dim} must be divisible by "
                             f"conformer_heads ({self.conformer_heads})")
        if self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd (same-length padding), got {self.conv_kernel}")
        for name in ("cnn_dropout", "attn_dropout", "ff_dropout", "pool_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.sigmoid_beta > 0.0:
            raise ValueError(f"sigmoid_beta must be positive, got {self.sigmoid_beta}")

    @property
    def feature_dim(self) -> int:
        """Width of one window's CNN features = Conformer width: cnn_channels[2] x 6 pooled bins."""
        return self.cnn_channels[2] * CNN_POOLS[-1][0]


class AdaptiveCNN(nn.Module):
    """(N, 2, F, 15) -> (N, 6*c3): six 3x3 conv -> BatchNorm -> ReLU layers with adaptive max pooling."""

    def __init__(self, cfg: MetricDiscriminatorConfig):
        super().__init__()
        c1, c2, c3 = cfg.cnn_channels
        widths = [(2, c1), (c1, c2), (c2, c3), (c3, c3), (c3, c3)]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, kernel_size=3, padding=1) for i, o in widths)
        # The last conv spans the remaining width (3 frames) and leaves one column.
        self.convs.append(nn.Conv2d(c3, c3, kernel_size=(3, CNN_POOLS[-1][1]), padding=(1, 0)))
        self.norms = nn.ModuleList(nn.BatchNorm2d(conv.out_channels) for conv in self.convs)
        self.dropout = nn.Dropout2d(cfg.cnn_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            if i >= 2:
                x = self.dropout(x)
            x = F.relu(norm(conv(x)))
            if i < len(CNN_POOLS):
                x = F.adaptive_max_pool2d(x, CNN_POOLS[i])  # (N, c, pool_h, pool_w)
        return x.flatten(1)  # (N, c3 * 6)


class FeedForward(nn.Module):
    """LayerNorm -> Linear -> Swish -> dropout -> Linear -> dropout (used with a half-step residual)."""

    def __init__(self, dim: int, mult: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, dim * mult)
        self.linear2 = nn.Linear(dim * mult, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.linear2(self.dropout(F.silu(self.linear1(self.norm(x))))))


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with Shaw relative position embeddings (lucidrains' Conformer)."""

    def __init__(self, dim: int, heads: int, max_relative_position: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.max_relative_position = max_relative_position
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)
        self.rel_pos = nn.Embedding(2 * max_relative_position + 1, self.head_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, n, _ = x.shape
        scale = self.head_dim**-0.5
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2)
                   for t in (self.to_q(x), *self.to_kv(x).chunk(2, dim=-1)))  # (B, h, n, d) each
        pos = torch.arange(n, device=x.device)
        dist = (pos[:, None] - pos[None, :]).clamp(-self.max_relative_position, self.max_relative_position)
        rel = self.rel_pos(dist + self.max_relative_position).to(q.dtype)  # (n, n, d)
        scores = q @ k.transpose(-1, -2) * scale + torch.einsum("bhid,ijd->bhij", q, rel) * scale  # (B, h, n, n)
        out = self.dropout(scores.softmax(dim=-1)) @ v  # (B, h, n, d)
        return self.dropout(self.to_out(out.transpose(1, 2).flatten(2)))  # (B, n, dim)


class ConformerConv(nn.Module):
    """LayerNorm -> pointwise conv + GLU -> depthwise conv -> BatchNorm -> Swish -> pointwise conv."""

    def __init__(self, dim: int, expansion: int, kernel: int):
        super().__init__()
        inner = dim * expansion
        self.norm = nn.LayerNorm(dim)
        self.pointwise_in = nn.Conv1d(dim, 2 * inner, kernel_size=1)
        self.depthwise = nn.Conv1d(inner, inner, kernel, padding=kernel // 2, groups=inner)
        self.batch_norm = nn.BatchNorm1d(inner)
        self.pointwise_out = nn.Conv1d(inner, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pointwise_in(self.norm(x).transpose(1, 2))  # (B, 2*inner, n)
        h = F.glu(h, dim=1)  # (B, inner, n)
        h = F.silu(self.batch_norm(self.depthwise(h)))
        return self.pointwise_out(h).transpose(1, 2)  # (B, n, dim); their conv dropout is 0


class ConformerBlock(nn.Module):
    """x + ff/2, + attention, + conv, + ff/2, then LayerNorm."""

    def __init__(self, cfg: MetricDiscriminatorConfig):
        super().__init__()
        dim = cfg.feature_dim
        self.ff1 = FeedForward(dim, cfg.ff_mult, cfg.ff_dropout)
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = RelativeSelfAttention(dim, cfg.conformer_heads, cfg.max_relative_position, cfg.attn_dropout)
        self.conv = ConformerConv(dim, cfg.conv_expansion, cfg.conv_kernel)
        self.ff2 = FeedForward(dim, cfg.ff_mult, cfg.ff_dropout)
        self.post_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ff1(x) * 0.5 + x  # (B, n, dim)
        x = self.attn(self.attn_norm(x)) + x
        x = self.conv(x) + x
        x = self.ff2(x) * 0.5 + x
        return self.post_norm(x)


class AttentionPooling(nn.Module):
    """Softmax-weighted mean over the windows (weights from a small MLP), then Linear to one value."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.hidden = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1)
        self.out = nn.Linear(dim, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.score(self.dropout(F.relu(self.hidden(x))))  # (B, n, 1)
        weights = torch.softmax(weights.transpose(1, 2), dim=2)  # (B, 1, n)
        return self.out((weights @ x).squeeze(1))  # (B, 1)


class MetricDiscriminator(nn.Module):
    """(ref_mag, est_mag), each (B, 1, F, T) compressed magnitudes -> predicted metric (B, 1) in (0, beta).

    Trained to regress normalised PESQ, (PESQ - 1) / 3.5, of est against ref. Needs T >= segment_frames.
    """

    def __init__(self, cfg: MetricDiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        self.cnn = AdaptiveCNN(cfg)
        self.conformer = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.conformer_blocks))
        self.pool = AttentionPooling(cfg.feature_dim, cfg.pool_hidden, cfg.pool_dropout)
        self.slope = nn.Parameter(torch.ones(1))

    def segments(self, mag: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, T) -> (B*n, 1, F, L): windows of L frames every hop frames, n = ceil((T - L + 1) / hop)."""
        L, hop = self.cfg.segment_frames, self.cfg.segment_hop
        if mag.dim() != 4 or mag.shape[1] != 1 or mag.shape[-1] < L:
            raise ValueError(f"MetricDiscriminator expects magnitudes (batch, 1, freqs, frames >= {L}), "
                             f"got {tuple(mag.shape)}")
        windows = mag[:, 0].unfold(-1, L, hop)  # (B, F, n, L)
        return windows.transpose(1, 2).flatten(0, 1).unsqueeze(1)  # (B*n, 1, F, L)

    def forward(self, ref_mag: torch.Tensor, est_mag: torch.Tensor) -> torch.Tensor:
        B = ref_mag.shape[0]
        x = torch.cat((self.segments(ref_mag), self.segments(est_mag)), dim=1)  # (B*n, 2, F, L)
        x = self.cnn(x).reshape(B, -1, self.cfg.feature_dim)  # (B, n, dim)
        for block in self.conformer:
            x = block(x)
        return self.cfg.sigmoid_beta * torch.sigmoid(self.slope * self.pool(x))  # (B, 1)


# Named discriminator configurations (training builds the one that goes with its generator config).
DISCRIMINATOR_CONFIGS: dict[str, MetricDiscriminatorConfig] = {
    # ClearerVoice-Studio's MossFormerGAN_SE_16K discriminator: 8,121,331 parameters.
    "mossformergan-se-16k": MetricDiscriminatorConfig(),
    # The reduced discriminator of the parity vectors: CNN 8/8/16 channels, Conformer width 96.
    "mossformergan-se-16k-small": MetricDiscriminatorConfig(cnn_channels=(8, 8, 16)),
}
