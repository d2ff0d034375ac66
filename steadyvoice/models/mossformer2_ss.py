"""MossFormer2 speech-separation network: a mixture waveform in, one waveform per talker out.

The network of ClearerVoice-Studio's MossFormer2_SS_16K (their ``MossFormer``: ``Encoder``,
``MossFormer_MaskNet``, ``Decoder``), written to be read top to bottom: the config, the one module that
is new here (the dilated dense FSMN memory), then the network. The attention units and gated FSMN blocks
are the MossFormer2-SE ones (:mod:`steadyvoice.models.mossformer2`), built with this network's memory.
It computes what theirs computes (checked against vectors generated with their code, see
tests/test_separation.py); :mod:`steadyvoice.models.clearervoice_mossformer2_ss` maps their checkpoint keys
onto ours. Nothing here does I/O, level normalisation, losses or optimisation (the level handling of their
decoder is in :mod:`steadyvoice.pipelines.mossformer2_ss`).

Data flow (B batch, N samples, T frames, E encoder_dim, D model_dim, S num_spks)::

    mixture (B, N) -> Conv1d(1 -> E, kernel 16, stride 8, no bias) -> ReLU -> w (B, T, E)
      mask net: GroupNorm -> Linear E -> D -> + scaled sinusoidal position
        -> num_blocks x [gated attention unit -> gated FSMN block whose memory is a dilated dense net]
        -> LayerNorm -> GroupNorm -> + skip -> PReLU -> Linear D -> S*D (one stream per talker)
        -> tanh * sigmoid gate -> Linear D -> E -> ReLU -> masks (B, S, T, E)
      -> w * mask_s -> ConvTranspose1d(E -> 1, 16, 8) -> zero-padded / cut to N -> sources (B, S, N)

Their network works on (B, C, T) with 1x1 convolutions; ours stays in (B, T, C) and uses Linear layers,
which are the same maps. Their decoder is built with ``mossformer_sequence_dim`` input channels but is fed
encoder-width features, so their code only runs when the two widths are equal; ours builds it with
``encoder_dim`` channels, which is the same layer whenever theirs runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from steadyvoice.models.mossformer2 import (MossFormerBlock, RotaryPosition, ScaledSinusoidalPosition,
                                            check_mask_net_fields)

__all__ = ["MossFormer2SSConfig", "MossFormer2SS", "DilatedDenseMemory"]


@dataclass(frozen=True)
class MossFormer2SSConfig:
    """Signal setup and network dimensions. Defaults are the official MossFormer2_SS_16K model."""

    # --- signal setup (the learned encoder) ---
    sample_rate: int = 16000
    encoder_kernel: int = 16  # [encoder_kernel_size] samples per encoder frame (1 ms at 16 kHz)
    encoder_stride: int = 8  # frame step; theirs is always encoder_kernel // 2

    # --- network (names of ClearerVoice's arguments in brackets) ---
    encoder_dim: int = 512  # [encoder_embedding_dim] encoder filters = mask width
    model_dim: int = 512  # [mossformer_sequence_dim] width of the MossFormer blocks
    num_blocks: int = 24  # [num_mossformer_layer] attention + FSMN pairs
    num_spks: int = 2  # [num_spks] talkers separated (one mask and one output each)
    norm: str = "ln"  # [norm] "ln" = GroupNorm(1, C) (the only one used)
    skip_around_intra: bool = True  # [skip_around_intra] residual around all blocks
    use_global_pos_enc: bool = True  # [use_global_pos_enc] scaled sinusoidal position after the input projection
    max_length: int = 20000  # [max_length] accepted by their constructor but unused by their network; kept
    group_size: int = 256  # frames per group of the quadratic (local) attention
    query_key_dim: int = 128
    expansion_factor: float = 4.0  # hidden width of the attention unit = model_dim * expansion_factor
    attn_dropout: float = 0.1
    causal: bool = False
    norm_type: str = "scalenorm"  # pre-norm of the attention projections: "scalenorm" or "layernorm"
    shift_tokens: bool = True
    rotary_dim: int = 32
    conv_kernel: int = 17  # depthwise convolution inside every projection (with a residual)
    fsmn_inner_dim: int = 256  # width inside the gated FSMN block
    fsmn_lorder: int = 20  # memory kernel 2*lorder-1 = 39 frames, dilated 1, 2, 4, ...
    fsmn_depth: int = 2  # layers of the dilated dense memory (dilation 2**i)
    fsmn_dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("sample_rate", "encoder_kernel", "encoder_stride", "encoder_dim", "model_dim", "num_blocks",
                     "num_spks", "max_length", "group_size", "query_key_dim", "rotary_dim", "conv_kernel",
                     "fsmn_inner_dim", "fsmn_lorder", "fsmn_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.encoder_stride > self.encoder_kernel:
            raise ValueError(f"encoder_stride ({self.encoder_stride}) must not exceed encoder_kernel "
                             f"({self.encoder_kernel}): frames would skip samples")
        if self.num_spks < 2:
            raise ValueError(f"num_spks must be at least 2 (a separation model), got {self.num_spks}")
        check_mask_net_fields(self)

    # The frame grid long inputs are windowed on (every architecture's config has these two).
    @property
    def win_length(self) -> int:
        return self.encoder_kernel

    @property
    def hop_length(self) -> int:
        return self.encoder_stride

    @property
    def hidden_dim(self) -> int:
        return int(self.model_dim * self.expansion_factor)

    def num_frames(self, num_samples: int) -> int:
        """Encoder frames of ``num_samples`` samples (the last partial frame is dropped, as theirs)."""
        return (num_samples - self.encoder_kernel) // self.encoder_stride + 1


# ----------------------------------------------------------------------------------------------------------
# The one block that differs from MossFormer2-SE: the memory of the gated FSMN


class DilatedDenseMemory(nn.Module):
    """Linear -> ReLU -> Linear, then a dense stack of dilated depthwise convolutions over time; plus the
    input (theirs: UniDeepFsmn_dilated around DilatedDenseNet).

    Layer i sees the concatenation [out_{i-1}, ..., out_0, p] (newest first) and convolves it with kernel
    2*lorder-1 and dilation 2**i, grouped so that each of the C output channels reads i+1 consecutive
    channels of that concatenation; then InstanceNorm over time (statistics of the whole input, in eval mode
    too) and a per-channel PReLU. The memory is the last layer's output (no residual inside).
    """

    def __init__(self, dim: int, hidden: int, lorder: int, depth: int):
        super().__init__()
        self.linear = nn.Linear(dim, hidden)
        self.project = nn.Linear(hidden, dim, bias=False)
        kernel = 2 * lorder - 1
        self.convs = nn.ModuleList(
            nn.Conv1d(dim * (i + 1), dim, kernel, dilation=2**i, padding=(lorder - 1) * 2**i, groups=dim, bias=False)
            for i in range(depth))
        self.norms = nn.ModuleList(nn.InstanceNorm1d(dim, affine=True) for _ in range(depth))
        self.acts = nn.ModuleList(nn.PReLU(dim) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = self.project(F.relu(self.linear(x))).transpose(1, 2)  # (B, C, T)
        for conv, norm, act in zip(self.convs, self.norms, self.acts):
            out = act(norm(conv_over_time(conv, dense)))  # (B, C, T)
            dense = torch.cat((out, dense), dim=1)  # (B, (i+2)*C, T)
        return x + out.transpose(1, 2)  # (B, T, C)


def conv_over_time(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) for x (B, C, T). Without autograd, an undilated depthwise ``conv`` (the first layer) runs as the
    equal 2-D convolution on a channels-last copy of x: oneDNN's kernel for that is about 10x faster than its
    1-D one (same weights, same result to float32 rounding). Dilated or grouped-by-several layers stay 1-D:
    there the 2-D kernel is several times slower."""
    if torch.is_grad_enabled() or conv.groups != conv.in_channels or conv.dilation[0] != 1:
        return conv(x)
    x = x.transpose(1, 2).contiguous().transpose(1, 2).unsqueeze(2)  # (B, C, 1, T), channels-last
    return F.conv2d(x, conv.weight.unsqueeze(2), padding=(0, conv.padding[0]), groups=conv.groups).squeeze(2)


def dilated_dense_memory(cfg: MossFormer2SSConfig) -> nn.Module:
    """The ``memory`` factory handed to the shared MossFormer2 blocks."""
    return DilatedDenseMemory(cfg.fsmn_inner_dim, cfg.fsmn_inner_dim, cfg.fsmn_lorder, cfg.fsmn_depth)


# ----------------------------------------------------------------------------------------------------------
# The network


class MossFormer2SS(nn.Module):
    """mixture (B, N) -> sources (B, num_spks, N), in the network's own (arbitrary) talker order and scale."""

    def __init__(self, cfg: MossFormer2SSConfig):
        super().__init__()
        self.cfg = cfg
        E, D, S = cfg.encoder_dim, cfg.model_dim, cfg.num_spks
        self.encoder = nn.Conv1d(1, E, cfg.encoder_kernel, stride=cfg.encoder_stride, bias=False)
        # mask net
        self.input_norm = nn.GroupNorm(1, E, eps=1e-8)
        self.input_proj = nn.Linear(E, D, bias=False)
        self.position = ScaledSinusoidalPosition(D) if cfg.use_global_pos_enc else None
        self.rotary = RotaryPosition(cfg.rotary_dim)
        self.blocks = nn.ModuleList(MossFormerBlock(cfg, dilated_dense_memory) for _ in range(cfg.num_blocks))
        self.blocks_norm = nn.LayerNorm(D, eps=1e-6)
        self.skip_norm = nn.GroupNorm(1, D, eps=1e-8)
        self.prelu = nn.PReLU()
        self.speaker_proj = nn.Linear(D, D * S)
        self.out_tanh = nn.Linear(D, D)
        self.out_gate = nn.Linear(D, D)
        self.mask_proj = nn.Linear(D, E, bias=False)
        # back to samples
        self.decoder = nn.ConvTranspose1d(E, 1, cfg.encoder_kernel, stride=cfg.encoder_stride, bias=False)

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        if mixture.dim() != 2 or mixture.shape[-1] < self.cfg.encoder_kernel:
            raise ValueError(f"MossFormer2SS expects a mixture (batch, samples) of at least "
                             f"{self.cfg.encoder_kernel} samples, got {tuple(mixture.shape)}")
        B, N = mixture.shape
        S = self.cfg.num_spks
        w = F.relu(self.encoder(mixture[:, None])).transpose(1, 2)  # (B, T, E)
        masks = self.masks(w)  # (B, S, T, E)
        separated = (w[:, None] * masks).flatten(0, 1)  # (B*S, T, E)
        out = self.decoder(separated.transpose(1, 2)).view(B, S, -1)  # (B, S, (T-1)*stride + kernel)
        if out.shape[-1] < N:  # samples after the last whole frame: zeros, as theirs
            return F.pad(out, (0, N - out.shape[-1]))
        return out[..., :N]  # (B, S, N)

    def masks(self, w: torch.Tensor) -> torch.Tensor:
        """The mask net: encoder output (B, T, E) -> one non-negative mask per talker (B, S, T, E)."""
        T = w.shape[1]
        S, D = self.cfg.num_spks, self.cfg.model_dim
        x = self.input_norm(w.transpose(1, 2)).transpose(1, 2)  # (B, T, E)
        x = self.input_proj(x)  # (B, T, D)
        if self.position is not None:
            x = x + self.position(T)  # (B, T, D)
        skip = x
        rope = self.rotary(T)  # (T, R) cos and sin, shared by all blocks
        for block in self.blocks:
            x = block(x, rope)  # (B, T, D)
        x = self.blocks_norm(x)
        x = self.skip_norm(x.transpose(1, 2)).transpose(1, 2)  # (B, T, D)
        if self.cfg.skip_around_intra:
            x = x + skip
        x = self.prelu(x)
        x = self.speaker_proj(x).unflatten(-1, (S, D)).transpose(1, 2)  # (B, S, T, D): talker s = rows [s*D, (s+1)*D)
        x = torch.tanh(self.out_tanh(x)) * torch.sigmoid(self.out_gate(x))  # (B, S, T, D)
        return F.relu(self.mask_proj(x))  # (B, S, T, E)
