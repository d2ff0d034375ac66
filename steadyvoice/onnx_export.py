"""ONNX export of the enhancement networks, and the onnxruntime backend of :class:`steadyvoice.Enhancer`.

One graph per model directory: input ``wave`` (batch, samples) float32 -> output ``enhanced`` (batch, samples),
the samples axis dynamic. What the graph covers, per architecture (the rest runs in torch around it, with the
functions of :mod:`steadyvoice.pipelines`, so each architecture's path stays one implementation)::

    mossformer2-se    in the graph: Kaldi log-mel front end (framing, rfft, mel filters, deltas), STFT, network,
                      mask, iSTFT; outside: zero padding to the frame-aligned length win + k*hop, cut back to N
    frcrn-se          in the graph: the network (conv-STFT, two complex UNets, complex mask, conv-iSTFT); outside:
                      ClearVoice's two-stage -25 dBFS normalisation (float64), their zero padding, the cut to
                      whole frames before the graph, the cut to N and the rescaling after it
    mossformergan-se  in the graph: STFT, |X|^0.3 compression, generator, decompression, iSTFT; outside: the
                      RMS normalisation factor, the padding to whole hops with the signal's own first samples,
                      the division by the factor, the cut to N and the silent-row rule
    fullband-se       in the graph: its 16 kHz MossFormer2-SE core, as mossformer2-se above; outside: the soxr
                      resampling to and from the core's rate and the upper band (band energies, the small
                      recurrent gain network, STFT and iSTFT at 48 kHz: about 1 % of the compute), in torch

Why these lines: what stays outside is a rule on the input's *length* (ClearVoice's piecewise padding, the
frame grid) or a per-row scalar; torch.export would turn each branch of such a rule into a guard and
specialise the graph to one length. Everything whose cost grows with the length is inside. The ONNX
metadata (``steadyvoice.input``) says how the graph's input is made, for use without SteadyVoice.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export, then onnxscript). The legacy TorchScript
exporter fails on the Kaldi front end (a float64 constant in a float32 Mul) and, tracing with Python
integers, would freeze the length-dependent group attention into constants. Three parts are adapted for it:
the models branch on ``torch.compiler.is_exporting()`` to a length-independent form of the same maths
(MossFormer2's grouped attention with the last group zero-padded, as ClearerVoice does; MossFormerGAN's
score tables in one chunk); the STFT and iSTFT of the graphs are :class:`SpectrumOps` (real tensors only, a
float64-built DFT basis where onnxruntime's DFT is inexact, a pad-and-add overlap-add: why in its
docstring); MossFormerGAN's power-law compression is written without complex numbers. The Kaldi front end
(steadyvoice.features.fbank_features) exports as it is. The exporter's own ONNX optimiser is off
(``optimize=False``): it fails on FRCRN's graph, and onnxruntime optimises the graph when it loads it.
Exporting traces every layer with symbolic shapes: 10-60 s for the small models, minutes for the
official-size MossFormer2-SE (24 blocks).

Check: after the export, the whole pass (outside parts included) runs in torch and in onnxruntime on two
inputs of different lengths (neither the length the graph was traced at) and the largest absolute
difference must be at most :data:`RELATIVE_TOLERANCE` times the peak of the torch output, or nothing is
written. The tolerance: both runtimes compute in float32 (eps 1.2e-7) but sum in other orders (other GEMM
blockings, fused kernels); over the layers of these networks that accumulates to about 1e-6 of the
output's peak (measured: 1e-6..5e-6 on every architecture, random and trained weights). 1e-4 (-80 dB) leaves
a margin of 20x and more and is far below anything audible, while a wrong graph (a shape frozen at the
traced length, a mistranslated op) is off by a fraction of the peak itself; onnxruntime's DFT of 1920
points alone was off by 2e-4, which this tolerance caught.

The backend (``Enhancer.from_pretrained(..., backend="onnx")``, ``steadyvoice enhance --backend onnx``)
looks for the graph of a model directory in this order, and exports it once when there is none:

1. ``MODEL_DIR/model.onnx``, if it was exported from exactly these weights and config (the fingerprint in its
   metadata: XXH3-128 of config.json and model.safetensors, and the graph version of this module);
2. ``$STEADYVOICE_HOME/onnx/<fingerprint>.onnx`` (the cache);
3. otherwise it exports to ``MODEL_DIR/model.onnx`` when that directory is writable, is not a model shipped
   inside the package and holds no model.onnx of someone else's making; else into the cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from steadyvoice.errors import ConfigError, ModelError, SteadyVoiceError, os_failure
from steadyvoice.extras import missing_modules

__all__ = ["export_onnx", "export_model", "OnnxPass", "onnx_pass", "source_fingerprint", "check_export", "check_backend",
           "SpectrumOps", "overlap_add", "ExportCheck", "ONNX_FILE", "RELATIVE_TOLERANCE", "BACKENDS"]

ONNX_FILE = "model.onnx"  # the graph beside a model directory's weights
BACKENDS = ("torch", "onnx")
EXPORT_MODULES = ("onnx", "onnxscript", "onnxruntime")  # torch.onnx's dynamo exporter needs onnx + onnxscript
RUNTIME_MODULES = ("onnxruntime",)
INSTALL_ONNX = "pip install 'steadyvoice[onnx]'"
GRAPH_VERSION = 1  # bump when a graph below changes: cached graphs of older versions are exported again
RELATIVE_TOLERANCE = 1e-4  # max |onnx - torch| / peak |torch| (see the module docstring)
CHECK_SECONDS = (1.0, 2.7)  # the two check lengths at the model's rate (1.6 s is the traced length)
TRACE_SECONDS = 1.6
INPUT_NAME, OUTPUT_NAME = "wave", "enhanced"


def check_backend(backend: str, device: torch.device | str) -> None:
    """A ConfigError unless ``backend`` is one of BACKENDS and can run on ``device`` (onnx: the CPU only)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "onnx" and torch.device(device).type != "cpu":
        raise ConfigError(f"the onnx backend runs on the CPU (onnxruntime's CPU provider), not {device}; "
                          "use device cpu, or the torch backend on that device")


def require_onnx(what: str, modules: tuple[str, ...] = EXPORT_MODULES) -> None:
    """A SteadyVoiceError naming the extra to install if ``what`` lacks one of ``modules``."""
    missing = missing_modules(modules)
    if missing:
        raise SteadyVoiceError(f"{what} needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                               f"not installed: {INSTALL_ONNX}")


# ---------------------------------------------------------------------------------------------------
# STFT and iSTFT of the graphs, on real tensors
# ---------------------------------------------------------------------------------------------------


class SpectrumOps(nn.Module):
    """STFT / iSTFT of ``n``-sample frames as the graphs compute them: real and imaginary parts as two real
    tensors (B, T, n/2 + 1), never a complex tensor (the exporter cannot index one).

    Written by hand because no exportable form of torch's is exact enough, measured with onnxruntime 1.32:
    its DFT is exact to float32 for powers of two (5e-7 of the peak) but off by 3e-5 (n = 400) and 2e-4
    (n = 1920) for other sizes, where torch's is off by 1e-7; so sizes that are not powers of two use a matmul
    with a cos/sin basis built in float64. torch.istft exports as an accumulating index_put that onnxruntime
    rejects (ScatterND with int32 indices) and F.fold does not trace with a symbolic length, so the
    overlap-add is a sum of shifted copies (:func:`overlap_add`).
    """

    def __init__(self, n: int, hop: int, window: torch.Tensor):
        super().__init__()
        self.n, self.hop = n, hop
        self.power_of_two = n & (n - 1) == 0
        self.register_buffer("window", window.float(), persistent=False)  # (n,)
        bins = n // 2 + 1
        if not self.power_of_two:
            angle = 2 * torch.pi * (torch.arange(n)[:, None] * torch.arange(bins)[None, :] % n) / n  # (n, F) float64
            weights = torch.full((bins,), 2.0, dtype=torch.float64)  # the bins that stand for a +-k pair count twice
            weights[0] = 1.0
            if n % 2 == 0:
                weights[-1] = 1.0
            self.register_buffer("cos", angle.cos().float(), persistent=False)  # (n, F)
            self.register_buffer("sin", (-angle.sin()).float(), persistent=False)  # (n, F): e^{-i angle}
            self.register_buffer("icos", (angle.cos() * weights / n).T.float(), persistent=False)  # (F, n)
            self.register_buffer("isin", (-angle.sin() * weights / n).T.float(), persistent=False)  # (F, n)

    def stft(self, wave: torch.Tensor, center: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """wave (B, L) -> (real, imag) (B, T, F): torch.stft with this window (center: reflect padding n/2)."""
        if center:
            wave = F.pad(wave[:, None], (self.n // 2, self.n // 2), mode="reflect")[:, 0]
        frames = wave.unfold(-1, self.n, self.hop) * self.window  # (B, T, n)
        if self.power_of_two:
            spec = torch.view_as_real(torch.fft.rfft(frames, n=self.n))  # (B, T, F, 2)
            return spec[..., 0], spec[..., 1]
        return frames @ self.cos, frames @ self.sin

    def istft(self, real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
        """(real, imag) (B, T, F) -> (B, (T-1)*hop + n): torch.istft(center=False) of this window."""
        if self.power_of_two:
            frames = torch.fft.irfft(torch.complex(real, imag), n=self.n)  # (B, T, n)
        else:
            frames = real @ self.icos + imag @ self.isin  # (B, T, n)
        envelope = (self.window * self.window).expand(1, frames.shape[1], self.n)  # (1, T, n)
        return overlap_add(frames * self.window, self.hop) / overlap_add(envelope, self.hop)


def overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """(B, T, n) frames ``hop`` samples apart -> (B, (T-1)*hop + n) sums: each frame is cut into blocks of hop
    samples and block i of frame t lands in output block t + i, so the overlap-add is a sum of r = ceil(n / hop)
    shifted copies (pads and adds, for any T)."""
    T, n = frames.shape[1], frames.shape[2]
    r = -(-n // hop)
    blocks = F.pad(frames, (0, r * hop - n)).unflatten(-1, (r, hop))  # (B, T, r, hop)
    out = sum(F.pad(blocks[:, :, i], (0, 0, i, r - 1 - i)) for i in range(r))  # (B, T + r - 1, hop)
    return out.flatten(1)[:, : (T - 1) * hop + n]


def _power_law(real: torch.Tensor, imag: torch.Tensor, power: float) -> tuple[torch.Tensor, torch.Tensor]:
    """|z|^power with the phase of z = real + i imag: z * |z|^(power - 1), and 0 where z = 0 (angle(0) = 0)."""
    mag = torch.sqrt(real * real + imag * imag)
    scale = torch.where(mag > 0, mag.clamp(min=torch.finfo(mag.dtype).tiny) ** (power - 1.0), 0.0)
    return real * scale, imag * scale


# ---------------------------------------------------------------------------------------------------
# What each architecture's graph covers
# ---------------------------------------------------------------------------------------------------


class _MossFormer2SEGraph(nn.Module):
    """Frame-aligned wave (B, win + k*hop) -> enhanced (B, same): steadyvoice.features.one_pass after its padding."""

    def __init__(self, model: nn.Module, cfg):
        super().__init__()
        from steadyvoice import features

        self.model, self.cfg, self.features = model, cfg, features
        self.spectrum = SpectrumOps(cfg.win_length, cfg.hop_length,
                                    torch.hamming_window(cfg.win_length, periodic=False, dtype=torch.float64))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        feats = self.features.fbank_features(wave, self.cfg)  # (B, T, 3*n_mels); its rfft size is a power of two
        real, imag = self.spectrum.stft(wave, center=False)  # (B, T, F) each
        mask = self.model(feats)  # (B, T, F)
        return self.spectrum.istft(real * mask, imag * mask)  # (B, L)


class _FRCRNGraph(nn.Module):
    """Normalised wave cut to whole frames (B, win + k*hop) -> the network's enhanced wave (B, same)."""

    def __init__(self, model: nn.Module, cfg):
        super().__init__()
        self.model = model

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.model(wave)[1]


class _MossFormerGANGraph(nn.Module):
    """Normalised wave padded to whole hops (B, k*hop) -> enhanced (B, same), before the division by the factor:
    mossformergan_se.enhance_waveform's stft, compress, generator, decompress and istft."""

    def __init__(self, model: nn.Module, cfg):
        super().__init__()
        self.model, self.cfg = model, cfg
        window = torch.hamming_window(cfg.win_length, periodic=True, dtype=torch.float64)
        left = (cfg.n_fft - cfg.win_length) // 2  # torch.stft centres a shorter window in n_fft
        self.spectrum = SpectrumOps(cfg.n_fft, cfg.hop_length, F.pad(window, (left, cfg.n_fft - cfg.win_length - left)))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        power, half = self.cfg.compress_power, self.cfg.n_fft // 2
        real, imag = _power_law(*self.spectrum.stft(wave, center=True), power)  # (B, T, F) each
        est_real, est_imag = self.model(torch.stack((real, imag), dim=1))  # (B, 1, T, F) each
        real, imag = _power_law(est_real[:, 0], est_imag[:, 0], 1.0 / power)
        full = self.spectrum.istft(real, imag)  # (B, (T-1)*hop + n_fft)
        return full[:, half: half + wave.shape[-1]]  # center=True: the reflect padding dropped; T - 1 = L / hop


@dataclass(frozen=True)
class _Split:
    """One architecture's pass around its graph.

    ``prepare(wave (B, N), cfg) -> (graph input (B, L) float32, context)``; ``finish(graph output, context, wave,
    cfg) -> (B, N)``; the graph's input lengths are ``offset(cfg) + step(cfg) * k`` for k >= 2.
    """

    graph: type
    prepare: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
    finish: Callable[[torch.Tensor, Any, torch.Tensor, Any], torch.Tensor]
    step: Callable[[Any], int]
    offset: Callable[[Any], int]
    input_doc: str


def _mossformer2_prepare(wave, cfg):
    from steadyvoice.features import padded_length

    return F.pad(wave, (0, padded_length(wave.shape[-1], cfg) - wave.shape[-1])), None


def _frcrn_prepare(wave, cfg):
    from steadyvoice.pipelines.frcrn_se import audio_norm, padded_length

    n = wave.shape[-1]
    normed, scalar = audio_norm(wave)  # (B, N), (B, 1) float64
    length = padded_length(n, cfg)
    whole = cfg.win_length + (length - cfg.win_length) // cfg.hop_length * cfg.hop_length  # what the network reads
    return F.pad(normed, (0, length - n))[:, :whole], scalar


def _mossformergan_prepare(wave, cfg):
    from steadyvoice.pipelines.mossformergan_se import normalisation_factor, pad_to_hops

    silent = wave.square().sum(dim=-1, keepdim=True) == 0  # (B, 1)
    c = normalisation_factor(torch.where(silent, torch.ones_like(wave), wave))  # (B, 1)
    return pad_to_hops(wave, cfg) * c, (c, silent)


class _FullBandCoreGraph(_MossFormer2SEGraph):
    """The full-band model's core: frame-aligned wave at the core's rate -> its enhanced wave."""

    def __init__(self, model: nn.Module, cfg):
        super().__init__(model.core, cfg.core)


SPLITS: dict[str, _Split] = {
    "mossformer2-se": _Split(
        _MossFormer2SEGraph, _mossformer2_prepare,
        lambda out, ctx, wave, cfg: out[:, : wave.shape[-1]],
        lambda cfg: cfg.hop_length, lambda cfg: cfg.win_length - cfg.hop_length,
        "the waveform (batch, N) at the model's rate, zero-padded at the end to win_length + k * hop_length "
        "samples (k >= 1, the smallest covering N); cut the output back to N"),
    "frcrn-se": _Split(
        _FRCRNGraph, _frcrn_prepare,
        lambda out, ctx, wave, cfg: (out[:, : wave.shape[-1]] * ctx).to(wave.dtype),
        lambda cfg: cfg.hop_length, lambda cfg: cfg.win_length - cfg.hop_length,
        "the waveform normalised to -25 dBFS by ClearVoice's two-stage audio_norm (scalar s), zero-padded by "
        "ClearVoice's rule, cut to win_length + k * hop_length samples; multiply the output by 1/(s + 1e-6) "
        "and cut it to N (steadyvoice.pipelines.frcrn_se)"),
    "mossformergan-se": _Split(
        _MossFormerGANGraph, _mossformergan_prepare,
        lambda out, ctx, wave, cfg: (out / ctx[0])[:, : wave.shape[-1]].masked_fill(ctx[1], 0.0),
        lambda cfg: cfg.hop_length, lambda cfg: 0,
        "the waveform times c = sqrt(N / sum x^2), padded to a multiple of hop_length with its own first samples; "
        "divide the output by c and cut it to N (steadyvoice.pipelines.mossformergan_se)"),
    "fullband-se": _Split(
        _FullBandCoreGraph, lambda wave, cfg: _mossformer2_prepare(wave, cfg.core),
        lambda out, ctx, wave, cfg: out[:, : wave.shape[-1]],
        lambda cfg: cfg.core.hop_length, lambda cfg: cfg.core.win_length - cfg.core.hop_length,
        "the full-band model's 16 kHz core only: the waveform (batch, N) resampled to the core's rate, zero-padded "
        "at the end to win_length + k * hop_length samples of the core; cut the output back to N. The band "
        "above the core's runs outside the graph (steadyvoice.pipelines.fullband_se)"),
}


def _split_for(cfg) -> _Split:
    from steadyvoice.models import architecture_of

    arch = architecture_of(cfg)
    split = SPLITS.get(arch.name)
    if split is None:
        raise ModelError(f"{arch.name} is a {arch.task} model; ONNX export covers the enhancement networks "
                         f"({', '.join(SPLITS)}). Separation models run with the torch backend "
                         "(steadyvoice separate)")
    return split


# ---------------------------------------------------------------------------------------------------
# Running a graph
# ---------------------------------------------------------------------------------------------------


class OnnxPass:
    """An architecture's one-pass function (as :func:`steadyvoice.pipelines.one_pass` returns: ``fn(model, wave
    (B, N), cfg) -> (B, N)``) with the graph run by onnxruntime on the CPU; ``model`` is used only by a
    full-band model, whose upper band runs in torch around its core's graph."""

    def __init__(self, path: str | Path, cfg, *, threads: int | None = None):
        require_onnx("the onnx backend", RUNTIME_MODULES)
        import onnxruntime as ort

        self.path, self.cfg, self.split = Path(path), cfg, _split_for(cfg)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()  # as many as torch would use
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its optimiser's notes on unfoldable casts are not ours
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise ModelError(f"{path}: onnxruntime cannot load this graph ({str(exc).strip()[:300]}); delete it "
                             "to export it again") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, model, wave: torch.Tensor, cfg=None) -> torch.Tensor:
        if self.split.graph is _FullBandCoreGraph:  # the graph is the core; the upper band runs in torch around it
            from steadyvoice.pipelines.fullband_se import enhance_waveform

            with torch.no_grad():
                return enhance_waveform(model, wave, self.cfg, core_pass=lambda core, x, core_cfg: self._graph_pass(x))
        return self._graph_pass(wave)

    def _graph_pass(self, wave: torch.Tensor) -> torch.Tensor:
        x, context = self.split.prepare(wave.detach().cpu(), self.cfg)
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: x.float().contiguous().numpy()})[0]
        return self.split.finish(torch.from_numpy(out), context, wave.detach().cpu(), self.cfg).to(wave.device)


# ---------------------------------------------------------------------------------------------------
# Exporting and checking
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportCheck:
    """ONNX against PyTorch on one input: its length (samples at the model's rate) and the errors."""

    samples: int
    max_abs_error: float
    peak: float  # max |torch output|

    @property
    def relative(self) -> float:
        return self.max_abs_error / max(self.peak, 1e-12)

    @property
    def ok(self) -> bool:
        return self.max_abs_error <= RELATIVE_TOLERANCE * self.peak


def check_inputs(cfg) -> list[torch.Tensor]:
    """The two check inputs (1, N): seeded noise with a few tones, lengths off the frame grid."""
    rate = int(cfg.sample_rate)
    generator = torch.Generator().manual_seed(0)
    inputs = []
    for seconds in CHECK_SECONDS:
        n = round(seconds * rate) + 37
        t = torch.arange(n, dtype=torch.float64) / rate
        tones = sum(0.1 * torch.sin(2 * torch.pi * f * t) for f in (220.0, 1000.0, 3100.0))
        inputs.append((tones + 0.05 * torch.randn(n, generator=generator, dtype=torch.float64)).float()[None])
    return inputs


def check_export(path: str | Path, model: nn.Module, cfg) -> list[ExportCheck]:
    """Run the whole pass through torch and through the graph at ``path`` on :func:`check_inputs`."""
    from steadyvoice.pipelines import one_pass

    reference, onnx = one_pass(cfg), OnnxPass(path, cfg)
    checks = []
    for wave in check_inputs(cfg):
        with torch.no_grad():
            want = reference(model, wave, cfg)
        got = onnx(model, wave, cfg)
        checks.append(ExportCheck(wave.shape[-1], float((got - want).abs().max()), float(want.abs().max())))
    return checks


def export_model(model: nn.Module, cfg, out_path: str | Path, *, metadata: dict[str, str] | None = None,
                 ) -> list[ExportCheck]:
    """Export ``model`` (any enhancement architecture, on the CPU) to ``out_path`` and check it; returns the
    checks. The file appears only if every check is within tolerance (written atomically); otherwise a
    ModelError says by how much it missed and nothing is left at ``out_path``."""
    require_onnx("ONNX export")
    from steadyvoice.fileio import atomic_write_path
    from steadyvoice.models import architecture_of

    split = _split_for(cfg)
    model = model.eval()
    graph = split.graph(model, cfg).eval()
    example, _ = split.prepare(_trace_input(cfg), cfg)  # (1, L), a length that is not checked below
    with torch.no_grad():
        graph(example)  # fills steadyvoice.features' caches (windows, filters) with real tensors before tracing
    frames = torch.export.Dim("frames", min=2, max=1_000_000)
    out_path = Path(out_path)
    checks: list[ExportCheck] = []

    def write(tmp: Path) -> None:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(graph, (example,), dynamo=True, optimize=False, verbose=False,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes={"wave": {1: split.offset(cfg) + split.step(cfg) * frames}})
        program.model.doc_string = (f"SteadyVoice {architecture_of(cfg).name}: {INPUT_NAME} (batch, samples) float32 "
                                    f"-> {OUTPUT_NAME} (batch, samples). Input: {split.input_doc}.")
        props = {"steadyvoice.architecture": architecture_of(cfg).name, "steadyvoice.config": _config_json(cfg),
                 "steadyvoice.graph_version": str(GRAPH_VERSION), "steadyvoice.input": split.input_doc,
                 "steadyvoice.sample_rate": str(cfg.sample_rate), **(metadata or {})}
        program.model.metadata_props.update(props)
        program.save(tmp)
        checks.extend(check_export(tmp, model, cfg))
        worst = max(checks, key=lambda c: c.relative)
        if not worst.ok:
            raise ModelError(f"{out_path}: the ONNX graph differs from PyTorch by {worst.max_abs_error:.3g} on a "
                             f"{worst.samples}-sample input ({worst.relative:.2g} of the output's peak, tolerance "
                             f"{RELATIVE_TOLERANCE:g}); nothing was written. Please report this with the model's "
                             "config.json and your torch and onnxruntime versions")

    try:
        atomic_write_path(out_path, write)
    except OSError as exc:  # the system refused the write (exit code 1)
        raise os_failure(ModelError, out_path, exc) from None
    return checks


def _trace_input(cfg) -> torch.Tensor:
    n = round(TRACE_SECONDS * cfg.sample_rate)
    return 0.1 * torch.randn(1, n, generator=torch.Generator().manual_seed(1))


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx prints its progress and warns about things that are not ours to fix; keep the output clean."""
    import logging

    registration = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            warnings.simplefilter("ignore")
            yield
    finally:
        registration.setLevel(level)


def _config_json(cfg) -> str:
    from steadyvoice.config import to_dict

    return json.dumps(to_dict(cfg), sort_keys=True)


def source_fingerprint(model_dir: str | Path) -> str:
    """XXH3-128 of the model directory's config.json and model.safetensors, and of GRAPH_VERSION (hex)."""
    import xxhash

    from steadyvoice.models import CONFIG_FILE, WEIGHTS_FILE

    digest = xxhash.xxh3_128()
    digest.update(f"steadyvoice-onnx-graph-{GRAPH_VERSION}\0".encode())
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        with open(Path(model_dir) / name, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def export_onnx(model_dir: str | Path, out_path: str | Path) -> list[ExportCheck]:
    """``steadyvoice export onnx MODEL_DIR OUT``: a model directory's network -> a checked ONNX graph at OUT."""
    from steadyvoice.inference import _model_dir_for
    from steadyvoice.models import architecture_of, load_pretrained, read_model_config

    model_dir = _model_dir_for(model_dir)
    cfg = read_model_config(model_dir)
    _split_for(cfg)  # a separation model is refused before loading anything
    require_onnx("ONNX export")
    out_path = Path(out_path)
    if out_path.is_dir():
        raise ModelError(f"{out_path}: is a directory; give the file to write, e.g. {out_path / ONNX_FILE}")
    if not out_path.parent.is_dir():
        raise ModelError(f"{out_path.parent}: no such directory (for {out_path})")
    model, cfg = load_pretrained(model_dir, "cpu")
    assert architecture_of(cfg).task == "enhancement"
    return export_model(model, cfg, out_path, metadata={"steadyvoice.fingerprint": source_fingerprint(model_dir)})


# ---------------------------------------------------------------------------------------------------
# The backend: find or make the graph of a model directory
# ---------------------------------------------------------------------------------------------------


def onnx_pass(model_dir: str | Path, model: nn.Module, cfg, *, say: Callable[[str], None] | None = None
              ) -> OnnxPass:
    """The onnxruntime pass for ``model_dir`` (whose network ``model`` is), exporting its graph on first use.

    Where the graph is looked for and written: the module docstring. ``say`` hears one line before an export
    (it can take minutes for large models)."""
    require_onnx("the onnx backend", RUNTIME_MODULES)
    _split_for(cfg)
    model_dir = Path(model_dir)
    fingerprint = source_fingerprint(model_dir)
    beside, cached = model_dir / ONNX_FILE, _cache_dir() / f"{fingerprint}.onnx"
    for path in (beside, cached):
        found = _open_if_made_from(path, fingerprint, cfg)
        if found is not None:
            return found
    target = beside if _may_write_beside(model_dir, beside) else cached
    if say is not None:
        say(f"exporting {model_dir} to ONNX ({target}); once for these weights")
    if target == cached:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelError(f"{cached.parent}: cannot create the ONNX cache ({exc.strerror or exc}); set "
                             "$STEADYVOICE_HOME to a writable directory, or export the graph yourself with "
                             f"`steadyvoice export onnx {model_dir} {beside}`") from None
    export_model(model, cfg, target, metadata={"steadyvoice.fingerprint": fingerprint})
    return OnnxPass(target, cfg)


def _cache_dir() -> Path:
    from steadyvoice.catalog import home

    return home() / "onnx"


def _open_if_made_from(path: Path, fingerprint: str, cfg) -> OnnxPass | None:
    """The pass of the graph at ``path`` if it exists and was exported from the weights of ``fingerprint``."""
    if not path.is_file():
        return None
    try:
        found = OnnxPass(path, cfg)
    except ModelError:  # not ONNX, truncated: as good as absent (exported again)
        return None
    return found if found.metadata.get("steadyvoice.fingerprint") == fingerprint else None


def _made_by_steadyvoice(path: Path) -> bool:
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX or truncated: not ours to replace
        return False
    return any(p.key == "steadyvoice.fingerprint" for p in proto.metadata_props)


def _may_write_beside(model_dir: Path, beside: Path) -> bool:
    """Whether the backend may (re)write MODEL_DIR/model.onnx: a user's writable model directory whose
    model.onnx, if any, is one SteadyVoice exported (an older fingerprint)."""
    from steadyvoice.catalog import SHIPPED_DIR

    with contextlib.suppress(ValueError, OSError):
        model_dir.resolve().relative_to(Path(SHIPPED_DIR).resolve())
        return False  # inside the installed package: never write there
    if beside.exists() and not _made_by_steadyvoice(beside):
        return False
    return os.access(model_dir, os.W_OK | os.X_OK) and _can_create(model_dir)


def _can_create(directory: Path) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".steadyvoice-probe-"):
            return True
    except OSError:
        return False
