"""Enhancer: run a MossFormer2-SE model on audio of any rate, channel count and length.

Pipeline for each channel (channels are enhanced independently, one after the other)::

    audio (N,) at rate r  --soxr-->  (M,) at the model's rate  --model-->  (M,)  --soxr-->  (N,) at rate r

Short inputs (up to ``one_pass_max_seconds`` = 20 s at the model's rate, like the official
``one_time_decode_length``) go through :func:`steadyvoice.features.enhance_waveform` in one pass, as the
official ClearerVoice decoder does; this is the path the parity vectors check. (enhance_waveform pads the
input to whole STFT frames, so the last ``(N - win) % hop`` samples are enhanced too; the official code
leaves them at zero.)

Longer inputs are processed in overlapping windows so that the model's memory is bounded by one window
whatever the length (a 10-minute file needs the same model memory as a 1-minute one). Files that long
stream through :meth:`Enhancer.enhance_file` (:func:`overlap_add_blocks`): read, resampled, enhanced and
written block by block, so an hours-long recording needs the memory of a short one::

    weight of window k over its W samples (window k+1 starts S samples later):

       0 (margin)  | ramp up (sin^2) |           1           | ramp down (cos^2) | 0 (margin)
    |--------------|-----------------|-----------------------|-------------------|--------------|
    0              M                M+C                     S+M                 W-M             W
                                                             [window k+1: margin | ramp up ...

* Every window has the same length ``W`` (``window_seconds``, rounded so that STFT frames tile it
  exactly) and starts at a multiple of the stride ``S = W - overlap`` (a multiple of the STFT hop, so the
  windows share the frame grid of the one-pass analysis). The last window is zero-padded past the end
  of the input and its output cut back, so no window is shorter than the others.
* Where two windows overlap (``overlap = 2 * margin + crossfade`` samples), the ``margin`` at each
  window's inner edge is discarded (the model sees little context there) and the middle ``crossfade``
  samples are blended with complementary raised-cosine weights (sin^2 + cos^2 = 1), so the weights of all
  windows sum to one at every sample and the joins have no step.
* Defaults: ``W`` = 10 s, margin 0.5 s, crossfade 1 s (stride 8 s, 25 % extra compute).

The official decoder instead uses 4 s windows with a 3 s stride and cuts hard after dropping 0.5 s at
each edge; a hard cut between two different estimates leaves a step (a click) at every join.

Inference is deterministic: eval mode, ``torch.no_grad``, no dither, channels and windows in a fixed order.

Precision (``precision``): ``float32`` (the default) computes what the reference vectors check. ``bfloat16``
runs the network's matrix products and convolutions in bfloat16 (``torch.autocast`` around the network only:
features, STFT, masks and iSTFT stay float32). On a CPU with native bfloat16 (AVX512-BF16 or AMX) its matrix
products run at about twice the float32 rate (the official-size MossFormer2_SE_48K: 0.49x float32's time,
bench/enhance.py method enhancer-bf16); elsewhere it is slower than float32, and the small shipped models gain
nothing. The output is not the reference output: its difference from the float32 output lies 40-59 dB below
the signal on the shipped models' test files (bench/precision.py; PESQ, STOI and SI-SDR unchanged to 0.002)
and 39 dB for the official-size network with random weights; tests/test_precision.py bounds it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from steadyvoice import audio as audio_io
from steadyvoice import catalog
from steadyvoice.batch import BatchResult, check_output_dir, collect_jobs, run_jobs
from steadyvoice.devices import resolve_device  # noqa: F401  (re-exported: the one device resolver)
from steadyvoice.errors import AudioError, ConfigError, ModelError
from steadyvoice.models import MODEL_FILES, WEIGHTS_FILE

__all__ = [
    "Enhancer",
    "WindowPlan",
    "plan_windows",
    "crossfade_weights",
    "overlap_add",
    "overlap_add_blocks",
    "DEFAULT_MODEL",
    "PRECISIONS",
    "WEIGHTS_DIR",
]

# Inputs up to this long (at the model's rate) are enhanced in one pass (official one_time_decode_length).
ONE_PASS_MAX_SECONDS = 20.0
# Longer inputs: window length, discarded margin at each inner window edge, crossfade length.
WINDOW_SECONDS = 10.0
MARGIN_SECONDS = 0.5
CROSSFADE_SECONDS = 1.0

# Accepted input sample rates and channel counts.
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 384000
MAX_CHANNELS = 32

# Name of the weights shipped with the package (steadyvoice/weights/<name>/): the default model, full band at
# 48 kHz (a 16 kHz MossFormer2-SE core and upper-band gains, recipes/default-v2.yaml); the previous default, the
# 16 kHz core alone, is "default-v1".
DEFAULT_MODEL = "default"
WEIGHTS_DIR = catalog.SHIPPED_DIR  # where shipped models live; names are looked up by steadyvoice.catalog

# Per-architecture limits for long inputs (the others use the defaults above): MossFormerGAN attends over
# the whole input along time (cost grows with the square of the length), so it decodes at most 10 s at
# once, like ClearVoice's one_time_decode_length / decode_window for it.
LONG_INPUT: dict[str, dict[str, float]] = {
    "mossformergan-se": {"one_pass_max_seconds": 10.0, "window_seconds": 10.0},
}

# Precision words (see the module docstring) -> the dtype autocast runs the network in (None: no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}

# Called after each window as progress(done, total); total counts the windows of all channels.
ProgressCallback = Callable[[int, int], None]

_HOW_TO_GET_A_MODEL = (
    "pass a model directory (model.safetensors + config.json), e.g. one made by "
    "`steadyvoice convert clearervoice SRC DEST` from an official checkpoint or by `steadyvoice ckpt export`, "
    "or the name of a model installed with `steadyvoice convert clearervoice SRC --name NAME`"
)


# ---------------------------------------------------------------------------------------------------
# Windows and overlap-add (pure functions of lengths; no model)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowPlan:
    """How a long signal is cut into windows. All lengths are in samples at the model's rate."""

    window: int  # W: every window is exactly this long
    stride: int  # S: distance between window starts
    margin: int  # M: discarded at each inner window edge

    def __post_init__(self):
        overlap = self.window - self.stride
        if not 0 < self.stride <= self.window:
            raise ValueError(f"window stride {self.stride} must be in 1..window ({self.window})")
        if overlap > self.stride:
            raise ValueError(f"windows overlap by {overlap} samples, more than the stride {self.stride}")
        if self.margin < 0 or overlap - 2 * self.margin < 1:
            raise ValueError(f"overlap {overlap} leaves no crossfade after two margins of {self.margin}")

    @property
    def crossfade(self) -> int:
        return self.window - self.stride - 2 * self.margin

    def starts(self, length: int) -> list[int]:
        """Start of every window covering ``length`` samples (the last one may run past the end)."""
        count = 1 + max(0, math.ceil((length - self.window) / self.stride))
        return [k * self.stride for k in range(count)]


def plan_windows(
    sample_rate: int,
    win_length: int,
    hop_length: int,
    *,
    window_seconds: float = WINDOW_SECONDS,
    margin_seconds: float = MARGIN_SECONDS,
    crossfade_seconds: float = CROSSFADE_SECONDS,
) -> WindowPlan:
    """Window plan in samples for a model with this STFT: windows tiled exactly by frames, hop-aligned stride."""
    frames = max(1, round((window_seconds * sample_rate - win_length) / hop_length))
    window = win_length + frames * hop_length  # (window - win) % hop == 0: no leftover samples
    margin = round(margin_seconds * sample_rate)
    overlap = 2 * margin + max(1, round(crossfade_seconds * sample_rate))
    stride = hop_length * max(1, (window - overlap) // hop_length)  # overlap rounded up to the hop grid
    try:
        return WindowPlan(window=window, stride=stride, margin=margin)
    except ValueError as exc:
        raise ConfigError(
            f"window {window_seconds} s, margin {margin_seconds} s, crossfade {crossfade_seconds} s: {exc}"
        ) from None


def crossfade_weights(plan: WindowPlan, first: bool, last: bool) -> np.ndarray:
    """Weight of one window's output (W,): 0 in inner margins, raised-cosine ramps, 1 in the middle.

    The fade-in of window k+1 and the fade-out of window k cover the same samples and sum to one.
    """
    overlap = plan.window - plan.stride
    fade_in = np.zeros(overlap, dtype=np.float64)  # (overlap,)
    phase = (np.arange(plan.crossfade) + 0.5) / plan.crossfade
    fade_in[plan.margin : plan.margin + plan.crossfade] = np.sin(0.5 * np.pi * phase) ** 2
    fade_in[plan.margin + plan.crossfade :] = 1.0
    weights = np.ones(plan.window, dtype=np.float64)  # (W,)
    if not first:
        weights[:overlap] = fade_in
    if not last:
        weights[plan.stride :] = 1.0 - fade_in
    return weights


def overlap_add(
    signal: np.ndarray,
    plan: WindowPlan,
    process: Callable[[np.ndarray], np.ndarray],
    progress: Callable[[], None] | None = None,
) -> np.ndarray:
    """Apply ``process`` ((W,) -> (W,)) to each window of ``signal`` (N,) and blend the outputs -> (N,).

    A window that runs past the end of the signal is zero-padded to W samples (only that window is copied).
    """
    blocks = overlap_add_blocks([signal[:, None]], plan, process, progress)  # (n, 1) each
    return np.concatenate(list(blocks))[:, 0]


def overlap_add_blocks(
    blocks: Iterable[np.ndarray],
    plan: WindowPlan,
    process: Callable[[np.ndarray], np.ndarray],
    progress: Callable[[], None] | None = None,
) -> Iterator[np.ndarray]:
    """:func:`overlap_add` over a stream: (n, C) blocks in -> (n', C) blocks out, every channel of every
    window through ``process`` (window by window, channels in order), the same samples as overlap_add of
    each whole channel. Holds one window of input and one of output (plus one block).

    A window's place in the plan (first, last) decides its weights; it is known to be not the last once
    more than W samples from its start have arrived, or is the last when the input ends. The blended
    output before the next window's start is final and is yielded at once.
    """
    held: list[np.ndarray] = []  # input from the current window's start on, as it came (joined per window)
    count = 0  # frames in ``held``
    out = None  # (W, C) output accumulated for the current window's span
    first = True
    for block in blocks:
        held.append(block)
        count += block.shape[0]
        if count <= plan.window:
            continue
        pending = np.concatenate(held) if len(held) > 1 else held[0]  # (count, C)
        while pending.shape[0] > plan.window:  # more input follows this window: it is not the last
            out = _blend_window(pending[: plan.window], out, plan, process, progress, first=first, last=False)
            yield out[: plan.stride]
            out = np.concatenate([out[plan.stride :], np.zeros((plan.stride, out.shape[1]), np.float32)])
            pending, first = pending[plan.stride :], False
        held, count = [pending], pending.shape[0]
    if count == 0:
        return
    out = _blend_window(np.concatenate(held), out, plan, process, progress, first=first, last=True)
    yield out[:count]


def _blend_window(piece, out, plan: WindowPlan, process, progress, *, first: bool, last: bool) -> np.ndarray:
    """Add each channel of ``piece`` (<= W, C) through ``process`` with its window weights to ``out``
    ((W, C), or None for zeros). A piece shorter than W (the last window) is zero-padded, its output cut."""
    kept, channels = piece.shape
    if out is None:
        out = np.zeros((plan.window, channels), dtype=np.float32)
    if kept < plan.window:
        piece = np.pad(piece, ((0, plan.window - kept), (0, 0)))  # (W, C)
    weights = crossfade_weights(plan, first=first, last=last)[:kept]
    for c in range(channels):
        enhanced = process(piece[:, c])[:kept]  # (kept,)
        out[:kept, c] += (enhanced * weights).astype(np.float32)
        if progress is not None:
            progress()
    return out


# ---------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------


def _as_frames_by_channels(audio: np.ndarray, sample_rate: int, name: str, from_file: bool) -> np.ndarray:
    """Validate ``audio`` ((N,) or (N, C), float) and return it as float32 (N, C).

    ``from_file``: the layout came from a file header, so frames < channels cannot be a transposed array.
    """
    _check_samples(audio, name)
    if audio.ndim not in (1, 2):
        raise AudioError(f"{name}: expected shape (frames,) or (frames, channels), got {audio.shape}")
    frames_by_channels = audio.reshape(audio.shape[0], -1)  # (N, C)
    frames, channels = frames_by_channels.shape
    if frames < channels and not from_file:
        raise AudioError(
            f"{name}: shape {audio.shape} reads as {frames} frames of {channels} channels; "
            "audio must be (frames, channels): pass audio.T if you have (channels, frames), or batch=True "
            "for a batch (batch, samples)"
        )
    if channels > MAX_CHANNELS:
        raise AudioError(f"{name}: {channels} channels is more than the {MAX_CHANNELS} supported")
    _check_sample_rate(sample_rate, name)
    return frames_by_channels.astype(np.float32, copy=False)


def _as_rows(audio: np.ndarray, sample_rate: int, name: str) -> np.ndarray:
    """Validate time-last ``audio`` ((T,), (B, T) or (B, C, T), float) and return it as float32 rows (R, T)."""
    _check_samples(audio, name)
    if audio.ndim not in (1, 2, 3):
        raise AudioError(f"{name}: expected a time-last shape (samples,), (batch, samples) or "
                         f"(batch, channels, samples), got {audio.shape}")
    _check_sample_rate(sample_rate, name)
    return audio.reshape(-1, audio.shape[-1]).astype(np.float32, copy=False)


def _check_samples(audio: np.ndarray, name: str) -> None:
    """A non-empty floating-point numpy array of finite samples."""
    if not isinstance(audio, np.ndarray):
        raise AudioError(f"{name}: expected a numpy array or a torch tensor, got {type(audio).__name__}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise AudioError(
            f"{name}: samples must be floating point in [-1, 1], got dtype {audio.dtype}; "
            "for integer PCM divide by the full-scale value (e.g. int16: x / 32768)"
        )
    if audio.size == 0:
        raise AudioError(f"{name}: the audio is empty (shape {audio.shape})")
    if not np.isfinite(audio).all():
        bad = int((~np.isfinite(audio)).sum())
        raise AudioError(f"{name}: {bad} samples are NaN or infinite")


def _to_numpy(audio) -> tuple[np.ndarray, Callable[[np.ndarray], object]]:
    """``audio`` as a numpy array, and the function that turns a float32 result back into the input's kind:
    the same dtype, and for a torch tensor the same device."""
    if isinstance(audio, torch.Tensor):
        if not audio.is_floating_point():  # integer samples: _check_samples says what to do
            return audio.detach().cpu().numpy(), lambda out: out
        device, dtype = audio.device, audio.dtype
        samples = audio.detach().to("cpu", torch.float32).numpy()
        return samples, lambda out: torch.from_numpy(out).to(device=device, dtype=dtype)
    if isinstance(audio, np.ndarray) and np.issubdtype(audio.dtype, np.floating):
        dtype = audio.dtype
        return audio, lambda out: out.astype(dtype, copy=False)
    return audio, lambda out: out  # _check_samples says what is wrong


def _check_sample_rate(sample_rate, name: str) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
        raise AudioError(f"{name}: sample rate must be an integer number of Hz, got {sample_rate!r}")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(
            f"{name}: sample rate {sample_rate} Hz is not supported "
            f"(supported: {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz)"
        )


def model_length(frames: int, sample_rate: int, model_rate: int) -> int:
    """Length of ``frames`` samples at ``sample_rate`` once resampled to ``model_rate`` (soxr's output length)."""
    return math.floor(frames * model_rate / sample_rate + 0.5)


def pass_count(frames: int, sample_rate: int, model_rate: int, one_pass_max: int, plan: WindowPlan) -> int:
    """How many model passes one channel of ``frames`` samples at ``sample_rate`` takes (one, or one per window)."""
    model_frames = model_length(frames, sample_rate, model_rate)
    if model_frames <= one_pass_max:
        return 1
    return len(plan.starts(model_frames))


def progress_steps(progress: ProgressCallback | None, total: int) -> Callable[[], None]:
    """A function to call after each model pass; it reports (done, total) to ``progress``."""
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    return step


# ---------------------------------------------------------------------------------------------------
# Finding a model
# ---------------------------------------------------------------------------------------------------


def precision_note(precision: str, device: torch.device) -> str | None:
    """One line for the commands about a half precision on the CPU: whether this CPU computes bfloat16
    natively (else it is slower than float32); None for float32 and other devices."""
    if precision == "float32" or device.type != "cpu":
        return None
    try:  # oneDNN's own check (AVX512-BF16 or AMX); private, hence the fallback
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return f"precision: {precision}"
    if native:
        return f"precision: {precision} (this CPU computes bfloat16 natively)"
    return (f"precision: {precision}; this CPU has no native bfloat16 (AVX512-BF16 or AMX), so it is emulated and "
            "slower than float32")


def network_autocast(precision: str, device: torch.device) -> torch.autocast | None:
    """The context the pipelines enter around the network for ``precision`` on ``device`` (None: float32)."""
    dtype = PRECISIONS[precision]
    return None if dtype is None else torch.autocast(device.type, dtype=dtype)


def check_precision(precision: str) -> str:
    """``precision`` if it is one of PRECISIONS, else a ConfigError listing them."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def _model_dir_for(name_or_dir: str | Path) -> Path:
    """The model directory that ``name_or_dir`` names, or a ModelError saying what to pass instead."""
    path = Path(name_or_dir)
    if path.is_dir():
        _check_model_dir(path)
        return path
    if path.is_file():
        if path.name == WEIGHTS_FILE:
            _check_model_dir(path.parent)
            return path.parent
        raise ModelError(f"{path}: is a file, not a model directory; {_hint_for_file(path)}")
    if path.name in ("best", "last") and (path.parent / "checkpoints").is_dir():  # RUN_DIR/best of a training run
        raise ModelError(f"{path}: names a training checkpoint, not a model directory; make one with "
                         f"`steadyvoice ckpt export {path} OUT_DIR` and pass OUT_DIR")
    model_dir = catalog.lookup(str(name_or_dir), task="enhancement", how_to=_HOW_TO_GET_A_MODEL)  # a model's name
    _check_model_dir(model_dir)
    return model_dir


def _check_model_dir(path: Path) -> None:
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if not missing:
        return
    if (path / "manifest.json").is_file():
        raise ModelError(
            f"{path}: is a training checkpoint, not a model directory; "
            "make one with `steadyvoice ckpt export` and pass that"
        )
    if (path / "checkpoints").is_dir():
        raise ModelError(f"{path}: is a training run directory, not a model directory; make one from its best "
                         f"checkpoint with `steadyvoice ckpt export {path} OUT_DIR --best` and pass OUT_DIR")
    raise ModelError(f"{path}: not a model directory (missing {', '.join(missing)}); {_HOW_TO_GET_A_MODEL}")


def _hint_for_file(path: Path) -> str:
    if path.suffix in (".pt", ".pth", ".ckpt", ".bin") or path.name.startswith("model.ckpt"):
        return f"convert an official ClearerVoice checkpoint first: `steadyvoice convert clearervoice {path} DEST`"
    return _HOW_TO_GET_A_MODEL


# ---------------------------------------------------------------------------------------------------
# Enhancer
# ---------------------------------------------------------------------------------------------------


class Enhancer:
    """Speech enhancement with any enhancement architecture (MossFormer2-SE, ...). Usage::

        enhancer = Enhancer.from_pretrained("models/my-model", device="cpu")
        clean = enhancer(noisy, 16000)          # (N,) or (N, C) float -> same shape, float32, same rate
        enhancer.enhance_file("noisy.flac", "clean.flac")
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg,
        device: str | torch.device = "cpu",
        *,
        one_pass_max_seconds: float | None = None,
        window_seconds: float | None = None,
        margin_seconds: float = MARGIN_SECONDS,
        crossfade_seconds: float = CROSSFADE_SECONDS,
        precision: str = "float32",
    ):
        from steadyvoice.models import architecture_of
        from steadyvoice.pipelines import one_pass

        self.precision = check_precision(precision)
        if architecture_of(cfg).task != "enhancement":
            raise ModelError(f"{architecture_of(cfg).name} is a {architecture_of(cfg).task} model, not an enhancement "
                             "model; use steadyvoice.Separator (steadyvoice separate) for it")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self._pass = one_pass(cfg)  # the architecture's waveform -> waveform path
        # Architectures whose attention spans the whole input decode shorter stretches at once.
        limits = LONG_INPUT.get(architecture_of(cfg).name, {})
        one_pass_max_seconds = one_pass_max_seconds or limits.get("one_pass_max_seconds", ONE_PASS_MAX_SECONDS)
        window_seconds = window_seconds or limits.get("window_seconds", WINDOW_SECONDS)
        self.sample_rate = int(cfg.sample_rate)
        self.one_pass_max = round(one_pass_max_seconds * self.sample_rate)
        self.plan = plan_windows(
            self.sample_rate,
            cfg.win_length,
            cfg.hop_length,
            window_seconds=window_seconds,
            margin_seconds=margin_seconds,
            crossfade_seconds=crossfade_seconds,
        )

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path = DEFAULT_MODEL, device: str = "cpu", *, backend: str = "torch",
                        on_export: Callable[[str], None] | None = None, **options) -> Enhancer:
        """Load a model directory (model.safetensors + config.json) or a model by name: a shipped one, or one in
        $STEADYVOICE_HOME/models (`steadyvoice models` lists them; see steadyvoice.catalog).

        ``device``: auto, cpu, cuda, cuda:N or mps (steadyvoice.devices). The default stays ``"cpu"`` (the
        command line's is ``auto``): a library call does not pick hardware behind its caller's back, and CPU
        results are the same on every machine; pass ``device="auto"`` for CUDA, then MPS, then CPU.

        ``backend``: ``"torch"`` (the default: measured as fast or faster, bench/onnx_backend.py) or ``"onnx"``: each
        pass runs the model's ONNX graph in onnxruntime on the CPU (the ``onnx`` extra), exported on first use
        (where it is kept: steadyvoice.onnx_export); ``on_export(message)`` hears before such an export.

        ``options`` go to the constructor: window lengths and ``precision`` (``"float32"``, the default, or
        ``"bfloat16"``: see the module docstring; the torch backend only)."""
        from steadyvoice.models import load_pretrained
        from steadyvoice.onnx_export import check_backend

        model_dir = _model_dir_for(name_or_dir)
        resolved = resolve_device(device)
        check_backend(backend, resolved)
        if backend == "onnx" and check_precision(options.get("precision", "float32")) != "float32":
            raise ConfigError("the onnx backend runs the float32 graph; use precision float32 with it, or "
                              "precision bfloat16 with the torch backend")
        model, cfg = load_pretrained(model_dir, resolved)
        enhancer = cls(model, cfg, resolved, **options)
        if backend == "onnx":  # the same windows and resampling around it; only the pass itself changes
            from steadyvoice.onnx_export import onnx_pass

            enhancer._pass = onnx_pass(model_dir, model, cfg, say=on_export)
        return enhancer

    # -- arrays ---------------------------------------------------------------------------------------

    def __call__(
        self, audio, sample_rate: int, *, batch: bool = False, progress: ProgressCallback | None = None
    ):
        """Enhance ``audio`` at any supported rate -> the enhanced audio, same kind, shape, dtype and rate.

        ``audio`` is a float numpy array or torch tensor (on any device: the result comes back on it):

        * numpy ``(N,)`` or ``(N, C)``: frames first, as soundfile reads them;
        * a torch tensor, a 3-D array, or any array with ``batch=True``: time last, as torchaudio and batched
          code hold it: ``(T,)``, ``(B, T)`` or ``(B, C, T)``.

        Every channel (every row of a batch) is enhanced on its own, so a batch gives the same result as its
        rows one by one.
        """
        samples, restore = _to_numpy(audio)
        if isinstance(audio, torch.Tensor) or batch or getattr(samples, "ndim", 0) >= 3:
            rows = _as_rows(samples, sample_rate, "audio")  # (R, T)
            out = self._enhance_rows(rows, int(sample_rate), progress)  # (R, T)
            return restore(out.reshape(samples.shape))
        return restore(self._enhance(samples, sample_rate, progress, name="audio", from_file=False))

    def window_count(self, frames: int, sample_rate: int) -> int:
        """How many model passes one channel of ``frames`` samples at ``sample_rate`` takes."""
        return pass_count(frames, sample_rate, self.sample_rate, self.one_pass_max, self.plan)

    def _enhance(self, audio, sample_rate, progress, name: str, from_file: bool) -> np.ndarray:
        frames_by_channels = _as_frames_by_channels(audio, sample_rate, name, from_file)  # (N, C)
        return self._enhance_rows(frames_by_channels.T, int(sample_rate), progress).T.reshape(audio.shape)

    def _enhance_rows(self, rows: np.ndarray, sample_rate: int, progress) -> np.ndarray:
        """(R, T) float32 at ``sample_rate`` -> (R, T) float32, each row enhanced on its own."""
        count, frames = rows.shape
        step = progress_steps(progress, count * self.window_count(frames, sample_rate))
        out = np.empty((count, frames), dtype=np.float32)  # (R, T)
        for r in range(count):
            out[r] = self._enhance_channel(rows[r], sample_rate, step)
        return out

    def _enhance_channel(self, wave: np.ndarray, sample_rate: int, step: Callable[[], None]) -> np.ndarray:
        """(N,) at ``sample_rate`` -> (N,) at ``sample_rate``."""
        at_model_rate = audio_io.resample(wave, sample_rate, self.sample_rate)  # (M,)
        if at_model_rate.shape[0] <= self.one_pass_max:
            enhanced = self._one_pass(at_model_rate)
            step()
        else:
            enhanced = overlap_add(at_model_rate, self.plan, self._one_pass, step)
        return audio_io.resample_to_length(enhanced, self.sample_rate, sample_rate, wave.shape[0])

    @torch.no_grad()
    def _one_pass(self, wave: np.ndarray) -> np.ndarray:
        """One model pass over (M,) samples at the model's rate -> (M,)."""
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)).to(self.device)[None]  # (1, M)
        autocast = network_autocast(self.precision, self.device)
        if autocast is None:  # float32; the onnx backend's pass takes no autocast
            y = self._pass(self.model, x, self.cfg)  # (1, M)
        else:
            y = self._pass(self.model, x, self.cfg, autocast=autocast)
        return y[0].float().cpu().numpy()

    # -- files ----------------------------------------------------------------------------------------

    def enhance_files(
        self,
        inputs: str | Path | Sequence[str | Path],
        out_dir: str | Path,
        *,
        jobs: int = 1,
        overwrite: bool = False,
        format: str | None = None,
    ) -> BatchResult:
        """Enhance files, directories and .scp/.txt lists into ``out_dir`` with ``steadyvoice enhance``'s
        layout and rules (outputs keep relative paths and formats; existing outputs are kept unless
        ``overwrite``), ``jobs`` files at once on threads sharing this model. ``format`` (e.g. ``"flac"``):
        the output container instead of the input's, as ``--format``.

        A bad input does not stop the others: it is listed in the result's ``failed`` (path and problem).
        An ``out_dir`` that cannot be created or written to raises AudioError before any work.
        """
        out_dir = Path(out_dir)
        problem = check_output_dir(out_dir)
        if problem is not None:
            raise AudioError(str(problem))
        todo, problems = collect_jobs([inputs] if isinstance(inputs, (str, Path)) else inputs, out_dir, format)
        result = run_jobs(todo, lambda job: self.enhance_file(job.source, job.output),
                          is_done=lambda job: not overwrite and job.output.exists(), workers=jobs)
        result.failed[:0] = problems
        return result


    def enhance_file(
        self, in_path: str | Path, out_path: str | Path, *, progress: ProgressCallback | None = None
    ) -> None:
        """Enhance an audio file into ``out_path`` (written atomically) with the input's rate, channels,
        length and, when the extension is the same, its container and subtype (e.g. PCM_24 stays PCM_24).

        A file short enough for one pass is read and enhanced whole. A longer one streams: it is read,
        resampled, enhanced window by window and written block by block, so memory stays bounded by about
        one window whatever its length (hours); the samples are those of enhancing the whole array.
        """
        in_path, out_path = Path(in_path), Path(out_path)
        header = audio_io.info(in_path)
        if header.channels > MAX_CHANNELS:  # refuse before reading a huge multichannel file
            raise AudioError(f"{in_path}: {header.channels} channels is more than the {MAX_CHANNELS} supported")
        _check_sample_rate(header.sample_rate, str(in_path))
        container, subtype = audio_io.matching_format(header, out_path)
        if model_length(header.frames, header.sample_rate, self.sample_rate) > self.one_pass_max:
            audio_io.write_audio_blocks(out_path, self._enhance_blocks(in_path, header, progress), header.sample_rate,
                                        header.channels, subtype=subtype, format=container)
            return
        samples, sample_rate = audio_io.read_audio(in_path)  # (N, C)
        enhanced = self._enhance(samples, sample_rate, progress, name=str(in_path), from_file=True)
        audio_io.write_audio(out_path, enhanced, sample_rate, subtype=subtype, format=container)

    def _enhance_blocks(self, in_path: Path, header: audio_io.AudioInfo,
                        progress: ProgressCallback | None) -> Iterator[np.ndarray]:
        """The file enhanced, as (n, C) blocks at its own rate: reading, resampling both ways and the
        windows all stream (soxr's streaming resampler gives the samples of its one-call resampling)."""
        rate, channels = header.sample_rate, header.channels
        step = progress_steps(progress, channels * self.window_count(header.frames, rate))
        source = audio_io.CountedBlocks(audio_io.read_blocks(in_path))  # (n, C) at the file's rate
        at_model_rate = audio_io.resample_blocks(source, rate, self.sample_rate, channels)
        enhanced = overlap_add_blocks(at_model_rate, self.plan, self._one_pass, step)  # at the model's rate
        back = audio_io.resample_blocks(enhanced, self.sample_rate, rate, channels)
        return audio_io.fit_length(back, source, channels)  # exactly the input's length
