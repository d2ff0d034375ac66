"""FRCRN speech-enhancement network: waveform in, complex-masked spectrum and enhanced waveform out.

This is ClearerVoice-Studio's FRCRN_SE_16K (their ``DCCRN`` with ``model_depth=14``, two cascaded complex
UNets with frequency-recurrent FSMN memories), written to be read top to bottom: the config, the fixed
conv-STFT, small complex building blocks, one UNet, then the network. It computes exactly what theirs
computes (checked against vectors generated with their code, tests/test_frcrn.py); only module names differ,
and :mod:`steadyvoice.models.clearervoice_frcrn` maps their checkpoint keys onto ours. Nothing here does
I/O, losses or optimisation.

Data flow (B batch, N samples, F = fft_len/2+1 = 321 bins, T frames, C channels)::

    wave (B, N) -> conv-STFT (sqrt periodic Hann, no centring) -> spectrum (B, 1, F, T, 2)
      -> UNet 1 -> u1 (B, 1, F, T, 2) -> UNet 2 (on u1 before any tanh) -> u2
      -> mask = tanh(u2) + tanh(u1), in (-2, 2) -> complex product with the spectrum
      -> conv-iSTFT (overlap-add / (sum of squared windows + 1e-8)) -> wave (B, (T-1)*hop + win)

    one UNet, on complex maps (B, C, F, T, 2) (last axis: real, imaginary):
      7 x [frequency FSMN (not before the first) -> complex conv, stride 2 in frequency -> complex BN -> LeakyReLU]
          frequency 321 -> 159 -> 78 -> 37 -> 17 -> 7 -> 2 -> 1; each encoder adds one frame (time kernel 2, pad 1)
      -> 2-layer complex FSMN along time at the 1-bin bottleneck
      -> 7 x [complex transposed conv -> complex BN -> LeakyReLU -> frequency FSMN -> squeeze-excitation gate
              -> concatenate the gated encoder output of the same size] (the last decoder: transposed conv,
              BN, LeakyReLU only) -> 1x1 complex conv to one channel

The squeeze-excitation gates average over the whole (frequency x time) plane, so every output frame depends
on the whole input (zero padding changes the result; see :mod:`steadyvoice.pipelines.frcrn_se`).

Their complex layers are pairs of real layers (A, B) applied as (A x_re - B x_im, A x_im + B x_re), biases
included, and their complex batch norm normalises the real and imaginary planes separately; ours do the same.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FRCRNConfig", "FRCRN", "conv_stft_kernels"]

# The depth-14 UNet of theirs: (frequency, time) kernels; stride (2, 1) and padding (0, 1) everywhere.
ENCODER_KERNELS = ((5, 2), (5, 2), (5, 2), (5, 2), (5, 2), (5, 2), (2, 2))
DECODER_KERNELS = ((2, 2), (5, 2), (5, 2), (5, 2), (6, 2), (5, 2), (5, 2))
STRIDE = (2, 1)
PADDING = (0, 1)
LEAKY_SLOPE = 0.01  # nn.LeakyReLU's default, as theirs
ISTFT_EPS = 1e-8  # added to the overlap-added squared window before dividing by it


@dataclass(frozen=True)
class FRCRNConfig:
    """Signal setup and network dimensions. Defaults are the official FRCRN_SE_16K model."""

    # --- signal setup (the fixed conv-STFT inside the network) ---
    sample_rate: int = 16000
    win_length: int = 640  # sqrt(periodic Hann) analysis and synthesis window; equal to fft_len
    hop_length: int = 320
    fft_len: int = 640  # 321 bins: the only size the UNet's fixed kernels take down to 1 bin and back

    # --- network ---
    channels: int = 128  # width of every encoder, decoder, FSMN and gate (official 128; the parity vectors 32)
    se_reduction: int = 8  # squeeze-excitation hidden width = channels // se_reduction
    fsmn_order: int = 20  # causal memory length (kernel) of every FSMN layer

    def __post_init__(self) -> None:
        for name in ("sample_rate", "win_length", "hop_length", "fft_len", "channels", "se_reduction",
                     "fsmn_order"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.fft_len != 640:
            raise ValueError(f"fft_len must be 640, got {self.fft_len}: the UNet's fixed kernel sizes reduce "
                             "exactly 321 frequency bins to 1 and back")
        if self.win_length != self.fft_len:
            raise ValueError(f"win_length ({self.win_length}) must equal fft_len ({self.fft_len})")
        if self.hop_length > self.win_length:
            raise ValueError(f"hop_length ({self.hop_length}) must not exceed win_length ({self.win_length}): "
                             "frames would skip samples")
        if self.channels // self.se_reduction < 1:
            raise ValueError(f"channels // se_reduction must be at least 1, got {self.channels} // "
                             f"{self.se_reduction}")

    @property
    def n_freqs(self) -> int:
        """STFT bins."""
        return self.fft_len // 2 + 1


# ----------------------------------------------------------------------------------------------------------
# Fixed conv-STFT. Not learned and not saved: computed here (in float64, then rounded to float32, as theirs),
# and checked against an official checkpoint's copies when one is imported.


@functools.lru_cache(maxsize=4)
def _kernels_float64(win_length: int, fft_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    window = torch.hann_window(win_length, periodic=True, dtype=torch.float64, device="cpu").sqrt()  # (W,)
    basis = torch.fft.rfft(torch.eye(fft_len, dtype=torch.float64, device="cpu"))[:win_length]  # (W, F) complex
    analysis = torch.cat((basis.real, basis.imag), dim=1).T  # (2F, W): real rows, then imaginary rows
    synthesis = torch.linalg.pinv(analysis).T  # (2F, W): the pseudo-inverse, before windowing
    return analysis * window, synthesis * window, window


def conv_stft_kernels(win_length: int, fft_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(analysis (2F, 1, W), synthesis (2F, 1, W), window (W,)), float32, F = fft_len/2+1.

    analysis = [Re; Im] of the real DFT basis x sqrt(periodic Hann); synthesis = pinv(DFT basis)^T x the same
    window (overlap-added by a transposed convolution, then divided by the overlap-added squared window).
    """
    analysis, synthesis, window = _kernels_float64(win_length, fft_len)
    return analysis.float()[:, None, :], synthesis.float()[:, None, :], window.float()


class ConvSTFT(nn.Module):
    """wave (B, N) -> spectrum (B, 2F, T): real bins, then imaginary bins; T = 1 + (N - win) // hop."""

    def __init__(self, cfg: FRCRNConfig):
        super().__init__()
        self.hop_length = cfg.hop_length
        analysis, _, _ = conv_stft_kernels(cfg.win_length, cfg.fft_len)
        self.register_buffer("kernel", analysis, persistent=False)  # (2F, 1, W)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return F.conv1d(wave[:, None, :], self.kernel, stride=self.hop_length)  # (B, 2F, T)


class ConvISTFT(nn.Module):
    """spectrum (B, 2F, T) -> wave (B, (T-1)*hop + win), overlap-added and divided by the window sum.

    Only one frame covers each of the first and last ``hop`` samples, where the squared window tends to
    zero: whatever the mask changes there is amplified (theirs does the same; the parity tests say so).
    """

    def __init__(self, cfg: FRCRNConfig):
        super().__init__()
        self.hop_length = cfg.hop_length
        _, synthesis, window = conv_stft_kernels(cfg.win_length, cfg.fft_len)
        self.register_buffer("kernel", synthesis, persistent=False)  # (2F, 1, W)
        self.register_buffer("window", window, persistent=False)  # (W,)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        frames = spec.shape[-1]
        wave = F.conv_transpose1d(spec, self.kernel, stride=self.hop_length)  # (B, 1, L)
        length, win = wave.shape[-1], self.window.shape[0]
        squared = (self.window**2)[None, :, None].expand(1, win, frames)  # (1, W, T)
        window_sum = F.fold(squared, (1, length), (1, win), stride=(1, self.hop_length))  # (1, 1, 1, L)
        return (wave / (window_sum[0] + ISTFT_EPS))[:, 0]  # (B, L)


# ----------------------------------------------------------------------------------------------------------
# Complex building blocks. A complex map is a real tensor whose last axis (size 2) is (real, imaginary).


def complex_apply(real_map: nn.Module, imag_map: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(A + iB) x for two real maps A, B: (A x_re - B x_im, A x_im + B x_re); x (N, ..., 2) -> (N, ..., 2).

    Both parts go through each map in one call (stacked on the batch axis, which the maps treat independently).
    """
    both = torch.cat((x[..., 0], x[..., 1]))  # (2N, ...): real parts, then imaginary parts
    a_re, a_im = real_map(both).chunk(2)
    b_re, b_im = imag_map(both).chunk(2)
    return torch.stack((a_re - b_im, a_im + b_re), dim=-1)


class ComplexConv2d(nn.Module):
    """Complex (transposed) 2-D convolution from two real ones; (B, C, F, T, 2) -> (B, C', F', T', 2)."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0, transposed: bool = False):
        super().__init__()
        conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        self.re = conv(c_in, c_out, kernel, stride=stride, padding=padding)
        self.im = conv(c_in, c_out, kernel, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return complex_apply(self.re, self.im, x)


class ComplexBatchNorm2d(nn.Module):
    """BatchNorm of the real and of the imaginary plane, each with its own statistics (not a whitening)."""

    def __init__(self, channels: int):
        super().__init__()
        self.re = nn.BatchNorm2d(channels)
        self.im = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack((self.re(x[..., 0]), self.im(x[..., 1])), dim=-1)  # (B, C, F, T, 2)


class ConvBlock(nn.Module):
    """Complex (transposed) conv, stride 2 in frequency -> complex BN -> LeakyReLU. Encoder or decoder stage."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int], transposed: bool):
        super().__init__()
        self.conv = ComplexConv2d(c_in, c_out, kernel, STRIDE, PADDING, transposed=transposed)
        self.norm = ComplexBatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.norm(self.conv(x)), LEAKY_SLOPE)


class GateMLP(nn.Module):
    """Linear -> ReLU -> Linear -> sigmoid: per-channel gate values in (0, 1)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.reduce = nn.Linear(channels, channels // reduction)
        self.expand = nn.Linear(channels // reduction, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.expand(F.relu(self.reduce(x))))


class ComplexSqueezeExcite(nn.Module):
    """Complex gate from the plane averages; multiplies the real plane by its real part and the imaginary
    plane by its imaginary part (element-wise per part, as theirs, not a complex product)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.re = GateMLP(channels, reduction)
        self.im = GateMLP(channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        average = x.mean(dim=(2, 3))  # (B, C, 2): over the whole frequency x time plane
        gate = complex_apply(self.re, self.im, average)  # (B, C, 2)
        return x * gate[:, :, None, None, :]  # (B, C, F, T, 2)


class FSMNLayer(nn.Module):
    """Feedforward sequential memory with a causal depthwise memory (theirs: UniDeepFsmn).

    p = project(relu(hidden(x))); out = x + (p + sum_{k<order} w_k * p[t - k]).
    """

    def __init__(self, dim: int, order: int):
        super().__init__()
        self.order = order
        self.hidden = nn.Linear(dim, dim)
        self.project = nn.Linear(dim, dim, bias=False)
        self.memory = nn.Conv1d(dim, dim, order, groups=dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.project(F.relu(self.hidden(x)))  # (N, L, D)
        past = F.pad(p.transpose(1, 2), (self.order - 1, 0))  # (N, D, order-1+L): causal
        return x + (p + self.memory(past).transpose(1, 2))  # (N, L, D)


class ComplexFSMN(nn.Module):
    """One complex FSMN layer on sequences (N, L, D, 2)."""

    def __init__(self, dim: int, order: int):
        super().__init__()
        self.re = FSMNLayer(dim, order)
        self.im = FSMNLayer(dim, order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return complex_apply(self.re, self.im, x)


class FrequencyFSMN(ComplexFSMN):
    """Complex FSMN running along frequency (sequence = bins in increasing order, features = channels), for
    every frame independently (theirs: ComplexUniDeepFsmn_L1); (B, C, F, T, 2) -> same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, Fq, T, _ = x.shape
        seq = x.permute(0, 3, 2, 1, 4).reshape(B * T, Fq, C, 2)  # (B*T, F, C, 2)
        out = super().forward(seq)  # (B*T, F, C, 2)
        return out.reshape(B, T, Fq, C, 2).permute(0, 3, 2, 1, 4)  # (B, C, F, T, 2)


class TimeFSMN(nn.Module):
    """Two complex FSMN layers along time at the bottleneck, features = channels x bins (theirs:
    ComplexUniDeepFsmn); (B, C, F, T, 2) -> same, with C x F = channels."""

    def __init__(self, dim: int, order: int):
        super().__init__()
        self.layers = nn.ModuleList(ComplexFSMN(dim, order) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, Fq, T, _ = x.shape
        seq = x.reshape(B, C * Fq, T, 2).transpose(1, 2)  # (B, T, C*F, 2)
        for layer in self.layers:
            seq = layer(seq)
        return seq.transpose(1, 2).reshape(B, C, Fq, T, 2)


# ----------------------------------------------------------------------------------------------------------
# One complex UNet


class ComplexUNet(nn.Module):
    """(B, 1, F, T, 2) -> (B, 1, F, T, 2).

    Module lists are indexed like theirs. Four entries are built but never applied, as in theirs:
    ``freq_fsmn_enc[0]`` (the input has one channel), ``freq_fsmn_dec[6]`` and ``decoder_gates[5]`` (the last
    decoder is followed by nothing), and ``encoder_gates[6]`` (its output would feed no decoder). They hold
    trained values in official checkpoints, count as parameters there (13,141,844 in all) and are kept so
    that a converted checkpoint keeps every weight; they are frozen (requires_grad False), so an optimizer
    built from the trainable parameters leaves them alone and DDP does not wait for their gradients.
    """

    def __init__(self, cfg: FRCRNConfig):
        super().__init__()
        C, order, r = cfg.channels, cfg.fsmn_order, cfg.se_reduction
        depth = len(ENCODER_KERNELS)
        self.freq_fsmn_enc = nn.ModuleList(FrequencyFSMN(C, order) for _ in range(depth))
        self.encoders = nn.ModuleList(ConvBlock(1 if i == 0 else C, C, ENCODER_KERNELS[i], transposed=False)
                                      for i in range(depth))
        self.encoder_gates = nn.ModuleList(ComplexSqueezeExcite(C, r) for _ in range(depth))
        self.time_fsmn = TimeFSMN(C, order)
        # The first decoder takes the bottleneck alone; the others its predecessor + a gated encoder output.
        self.decoders = nn.ModuleList(ConvBlock(C if i == 0 else 2 * C, 1 if i == depth - 1 else C,
                                                DECODER_KERNELS[i], transposed=True) for i in range(depth))
        self.freq_fsmn_dec = nn.ModuleList(FrequencyFSMN(C, order) for _ in range(depth))
        self.decoder_gates = nn.ModuleList(ComplexSqueezeExcite(C, r) for _ in range(depth - 1))
        self.out_proj = ComplexConv2d(1, 1, 1)
        for unused in (self.freq_fsmn_enc[0], self.freq_fsmn_dec[depth - 1], self.decoder_gates[depth - 2],
                       self.encoder_gates[depth - 1]):
            unused.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth = len(self.encoders)
        skips = []  # gated outputs of encoders 0 .. depth-2
        h = x  # (B, 1, 321, T, 2)
        for i, encoder in enumerate(self.encoders):
            if i > 0:
                h = self.freq_fsmn_enc[i](h)
            h = encoder(h)  # (B, C, F_i, T + i + 1, 2), F_i = 159, 78, 37, 17, 7, 2, 1
            if i < depth - 1:
                skips.append(self.encoder_gates[i](h))
        h = self.time_fsmn(h)  # (B, C, 1, T + 7, 2)
        for i, decoder in enumerate(self.decoders):
            h = decoder(h)  # (B, C, F, T + 6 - i, 2), F = 2, 7, 17, 37, 78, 159 (last: (B, 1, 321, T, 2))
            if i == depth - 1:
                break
            h = self.freq_fsmn_dec[i](h)
            if i < depth - 2:
                h = self.decoder_gates[i](h)
            h = torch.cat((h, skips[depth - 2 - i]), dim=1)  # (B, 2C, F, T + 6 - i, 2)
        return self.out_proj(h)  # (B, 1, 321, T, 2)


# ----------------------------------------------------------------------------------------------------------
# The network


class FRCRN(nn.Module):
    """wave (B, N) -> (est_spec (B, 2F, T), est_wave (B, (T-1)*hop + win), est_mask (B, 2F, T)).

    T = 1 + (N - win_length) // hop_length; samples after the last whole frame are not reconstructed.
    Spectra and masks hold the F real bins, then the F imaginary bins (their layout).
    """

    def __init__(self, cfg: FRCRNConfig):
        super().__init__()
        self.cfg = cfg
        self.stft = ConvSTFT(cfg)
        self.unet1 = ComplexUNet(cfg)
        self.unet2 = ComplexUNet(cfg)
        self.istft = ConvISTFT(cfg)

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if wave.dim() != 2 or wave.shape[-1] < self.cfg.win_length:
            raise ValueError(f"FRCRN expects a waveform batch (batch, samples) with at least win_length = "
                             f"{self.cfg.win_length} samples, got {tuple(wave.shape)}")
        spec = self.stft(wave)  # (B, 2F, T)
        x = torch.stack(spec.chunk(2, dim=1), dim=-1)[:, None]  # (B, 1, F, T, 2)
        u1 = self.unet1(x)  # (B, 1, F, T, 2)
        u2 = self.unet2(u1)  # the second UNet refines the first one's raw (pre-tanh) output
        mask = torch.tanh(u2) + torch.tanh(u1)  # (B, 1, F, T, 2), each part in (-2, 2)
        s_re, s_im, m_re, m_im = x[:, 0, ..., 0], x[:, 0, ..., 1], mask[:, 0, ..., 0], mask[:, 0, ..., 1]
        est_spec = torch.cat((s_re * m_re - s_im * m_im, s_re * m_im + s_im * m_re), dim=1)  # (B, 2F, T)
        est_mask = torch.cat((m_re, m_im), dim=1)  # (B, 2F, T)
        return est_spec, self.istft(est_spec), est_mask
