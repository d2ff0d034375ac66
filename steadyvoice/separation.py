"""Separator: split a recording of several talkers into one signal per talker, at any rate, channel count
and length.

    audio (N, C) at rate r --soxr--> (M, C) at the model's rate --pipeline--> (S, M, C) --soxr--> (S, N, C)

The pipeline is the architecture's (:mod:`steadyvoice.pipelines`; for MossFormer2-SS: ClearVoice's input
normalisation, the network, each talker scaled to the mixture's RMS). This module decides how the network
covers the recording (``decode``) and keeps every talker on the same output from start to end.

Length. Inputs up to ``one_pass_max_seconds`` (2 s at the model's rate, ClearVoice's
``one_time_decode_length``) take one network pass, exactly as ClearVoice decodes them (the path the parity
vectors check). Longer ones are cut into overlapping windows (:func:`steadyvoice.inference.plan_windows`,
the Enhancer's plan: default 4 s windows, 0.25 s discarded margins, 0.5 s crossfades, so a 3 s stride), so
the model's memory is bounded by one window whatever the length. ClearVoice uses 2 s windows with hard
cuts; longer windows give the network more context and fewer joins.

Talker order. A separation network returns the talkers in an arbitrary order, which can change from one
window to the next. Each window's outputs are therefore put in the order of the previous window's: on
the samples the two windows share (the whole overlap, margins included), the permutation that maximises
the summed normalised correlation between old and new outputs is applied before blending
(:func:`best_permutation`; the identity is kept on ties, e.g. when everyone is silent there). A talker
thus stays in the same output across every join.

Channels. Each channel is separated on its own (so the stereo image of each talker survives), and the
talkers of channel c are put in channel 0's order by the same correlation rule over the whole window
(the channels of one recording hear the same talkers). Level normalisation and the output gain of each
talker are shared by all channels. The result has the input's shape with a talker axis in front:
(N,) -> (S, N), (N, C) -> (S, N, C).

Inference is deterministic: eval mode, ``torch.no_grad``, windows and channels in a fixed order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from steadyvoice import audio as audio_io
from steadyvoice.errors import AudioError, ModelError
from steadyvoice import catalog
from steadyvoice.devices import resolve_device
from steadyvoice.inference import (MAX_CHANNELS, ProgressCallback, _as_frames_by_channels, _check_model_dir,
                                   _check_sample_rate, _model_dir_for, check_precision, crossfade_weights,
                                   network_autocast, pass_count, plan_windows, progress_steps)

__all__ = ["Separator", "best_permutation", "talker_paths", "DEFAULT_SEPARATION_MODEL"]

# Inputs up to this long (at the model's rate) are separated in one pass (ClearVoice's one_time_decode_length).
ONE_PASS_MAX_SECONDS = 2.0
# Longer inputs: window length, discarded margin at each inner window edge, crossfade length.
WINDOW_SECONDS = 4.0
MARGIN_SECONDS = 0.25
CROSSFADE_SECONDS = 0.5

# Name of the separation model shipped with the package (steadyvoice/weights/<name>/): a 16 kHz two-talker
# MossFormer2-SS trained by SteadyVoice on its own corpus (recipe.yaml beside the weights says how).
DEFAULT_SEPARATION_MODEL = "separation-default"
HOW_TO_GET_A_SEPARATION_MODEL = (
    f"give --model {DEFAULT_SEPARATION_MODEL} (shipped), --checkpoint DIR, a separation model directory "
    "(e.g. made by `steadyvoice convert clearervoice <MossFormer2_SS_16K .pt> DIR`), or --model NAME "
    "of one installed with `steadyvoice convert clearervoice <.pt> --name NAME`")


def talker_paths(output: Path, speakers: int) -> list[Path]:
    """Where the talkers of ``output`` go: ``<stem>_s1<ext>``, ``<stem>_s2<ext>``, ..."""
    return [output.with_name(f"{output.stem}_s{k + 1}{output.suffix}") for k in range(speakers)]


def best_permutation(reference: np.ndarray, candidate: np.ndarray) -> list[int]:
    """Order of ``candidate``'s talkers that best matches ``reference``'s: both (C, S, L) (channels,
    talkers, samples); returns ``order`` such that ``candidate[:, order]`` lines up with ``reference``.

    Score of a pairing: the normalised correlation of the two signals summed over channels; the
    permutation with the largest total wins (Hungarian algorithm, scipy). The identity is kept unless
    another permutation scores higher by more than rounding.
    """
    from scipy.optimize import linear_sum_assignment

    ref = reference.astype(np.float64, copy=False)
    cand = candidate.astype(np.float64, copy=False)
    dot = np.einsum("csl,ctl->cst", ref, cand)  # (C, S, S)
    energy = np.einsum("csl,csl->cs", ref, ref)[:, :, None] * np.einsum("ctl,ctl->ct", cand, cand)[:, None, :]
    score = (dot / np.sqrt(np.maximum(energy, 1e-300))).sum(0)  # (S, S); a silent signal scores 0
    rows, cols = linear_sum_assignment(score, maximize=True)
    order = [int(c) for _, c in sorted(zip(rows, cols))]
    identity = list(range(score.shape[0]))
    gain = score[identity, order].sum() - np.trace(score)
    return order if gain > 1e-9 * max(1.0, np.abs(score).sum()) else identity


class Separator:
    """Speech separation with any separation architecture (MossFormer2-SS, ...). Usage::

        separator = Separator.from_pretrained("models/mossformer2-ss-16k")
        talkers = separator(mixture, 16000)     # (N,) or (N, C) -> (S, N) or (S, N, C), float32, same rate
        separator.separate_file("meeting.flac", ["meeting_s1.flac", "meeting_s2.flac"])

    ``speakers``: the number of talkers expected; a model that separates another number is refused.
    ``levels``: "input" (each talker at the RMS of the mixture) or "clearvoice" (their decoder's levels,
    see :mod:`steadyvoice.pipelines.mossformer2_ss`).
    ``precision``: "float32" (the default) or "bfloat16", as for :class:`steadyvoice.Enhancer` (the network's
    matrix products in bfloat16; see :mod:`steadyvoice.inference`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg,
        device: str | torch.device = "cpu",
        *,
        speakers: int | None = None,
        levels: str = "input",
        one_pass_max_seconds: float = ONE_PASS_MAX_SECONDS,
        window_seconds: float = WINDOW_SECONDS,
        margin_seconds: float = MARGIN_SECONDS,
        crossfade_seconds: float = CROSSFADE_SECONDS,
        precision: str = "float32",
    ):
        from steadyvoice.models import architecture_of
        from steadyvoice.pipelines import one_pass

        self.precision = check_precision(precision)
        arch = architecture_of(cfg)
        if arch.task != "separation":
            raise ModelError(f"{arch.name} is an {arch.task} model, not a separation model; use steadyvoice.Enhancer "
                             "(steadyvoice enhance) for it")
        self.speakers = int(cfg.num_spks)
        if speakers is not None and speakers != self.speakers:
            raise ModelError(f"the model separates {self.speakers} talkers but {speakers} were asked for "
                             f"(--speakers {speakers}); use a model trained for {speakers} talkers")
        from steadyvoice.pipelines.mossformer2_ss import LEVELS

        if levels not in LEVELS:
            raise ModelError(f"levels must be one of {', '.join(LEVELS)}, got {levels!r}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.levels = levels
        self._pass = one_pass(cfg)  # the architecture's waveform -> talkers path
        self.sample_rate = int(cfg.sample_rate)
        self.one_pass_max = round(one_pass_max_seconds * self.sample_rate)
        self.plan = plan_windows(self.sample_rate, cfg.win_length, cfg.hop_length, window_seconds=window_seconds,
                                 margin_seconds=margin_seconds, crossfade_seconds=crossfade_seconds)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path = DEFAULT_SEPARATION_MODEL, device: str = "cpu",
                        **options) -> Separator:
        """Load a separation model: a model directory (model.safetensors + config.json), the shipped one
        (``"separation-default"``, the default) or the name of one installed in $STEADYVOICE_HOME/models. ``device``: auto, cpu, cuda, cuda:N or mps; the default stays
        ``"cpu"``, as for :meth:`steadyvoice.Enhancer.from_pretrained`."""
        from steadyvoice.models import load_pretrained

        model_dir = _separation_model_dir(name_or_dir)
        resolved = resolve_device(device)
        model, cfg = load_pretrained(model_dir, resolved)
        return cls(model, cfg, resolved, **options)

    # -- arrays ---------------------------------------------------------------------------------------

    def __call__(self, mixture: np.ndarray, sample_rate: int, *,
                 progress: ProgressCallback | None = None) -> np.ndarray:
        """Separate ``mixture`` ((N,) or (N, C) float, any supported rate) -> (S, *mixture.shape) float32."""
        return self._separate(mixture, sample_rate, progress, name="audio", from_file=False)

    def window_count(self, frames: int, sample_rate: int) -> int:
        """How many windows a recording of ``frames`` samples at ``sample_rate`` takes (per channel)."""
        return pass_count(frames, sample_rate, self.sample_rate, self.one_pass_max, self.plan)

    def _separate(self, audio, sample_rate, progress, name: str, from_file: bool) -> np.ndarray:
        frames_by_channels = _as_frames_by_channels(audio, sample_rate, name, from_file)  # (N, C)
        frames, channels = frames_by_channels.shape
        step = progress_steps(progress, channels * self.window_count(frames, sample_rate))

        at_model_rate = audio_io.resample(frames_by_channels, int(sample_rate), self.sample_rate)  # (M, C)
        talkers = self._separate_at_model_rate(at_model_rate, step)  # (S, M, C)
        out = np.stack([audio_io.resample_to_length(t, self.sample_rate, int(sample_rate), frames)
                        for t in talkers])  # (S, N, C)
        return out.reshape(self.speakers, *audio.shape)

    @torch.no_grad()
    def _separate_at_model_rate(self, wave: np.ndarray, step: Callable[[], None]) -> np.ndarray:
        """(M, C) at the model's rate -> (S, M, C). Levels are set over the whole signal; the network runs
        on the device, one channel and one window at a time."""
        x = torch.from_numpy(np.ascontiguousarray(wave.T, dtype=np.float32))[None]  # (1, C, M)
        out = self._pass(self.model, x, self.cfg, decode=self._decoder(step), levels=self.levels,
                         autocast=network_autocast(self.precision, self.device))  # (1, S, C, M)
        return out[0].transpose(1, 2).float().numpy()  # (S, M, C)

    def _decoder(self, step: Callable[[], None]):
        def decode(passes, normed: torch.Tensor) -> torch.Tensor:  # (1, C, M) -> (1, S, C, L >= M)
            return torch.from_numpy(self._decode(passes, normed[0].numpy(), step))[None]
        return decode

    def _decode(self, passes, normed: np.ndarray, step: Callable[[], None]) -> np.ndarray:
        """Normalised (C, M) -> raw talkers (S, C, L >= M): one pass, or aligned and blended windows."""
        length = normed.shape[-1]
        if length <= self.one_pass_max:
            return self._window(passes, normed, length, step).transpose(1, 0, 2)  # (S, C, L)
        plan = self.plan
        out = np.zeros((self.speakers, normed.shape[0], length), dtype=np.float32)  # (S, C, M)
        starts = plan.starts(length)
        previous = None  # (C, S, samples shared with the next window) of the window before, in output order
        for k, start in enumerate(starts):
            piece = normed[:, start : start + plan.window]  # (C, <= W)
            kept = piece.shape[-1]
            if kept < plan.window:  # the last window: zero-padded, its output cut back
                piece = np.pad(piece, ((0, 0), (0, plan.window - kept)))
            talkers = self._window(passes, piece, kept, step)[:, :, :kept]  # (C, S, kept)
            if previous is not None:
                shared = min(previous.shape[-1], kept)
                order = best_permutation(previous[:, :, :shared], talkers[:, :, :shared])
                talkers = talkers[:, order]
            if k + 1 < len(starts):
                previous = talkers[:, :, starts[k + 1] - start :]
            weights = crossfade_weights(plan, first=k == 0, last=k == len(starts) - 1)[:kept]
            out[:, :, start : start + kept] += (talkers.transpose(1, 0, 2) * weights).astype(np.float32)
        return out

    def _window(self, passes, piece: np.ndarray, kept: int, step: Callable[[], None]) -> np.ndarray:
        """The network on each channel of ``piece`` (C, W) -> (C, S, L), talkers in channel 0's order (judged
        on the first ``kept`` samples, the ones that are not zero padding)."""
        outputs = []
        for c in range(piece.shape[0]):
            x = torch.from_numpy(np.ascontiguousarray(piece[c : c + 1])).to(self.device)  # (1, W)
            outputs.append(passes(x)[0].float().cpu().numpy())  # (S, L)
            step()
        talkers = np.stack(outputs)  # (C, S, L)
        for c in range(1, talkers.shape[0]):
            order = best_permutation(talkers[:1, :, :kept], talkers[c : c + 1, :, :kept])
            talkers[c] = talkers[c, order]
        return talkers

    # -- files ----------------------------------------------------------------------------------------

    def separate_file(self, in_path: str | Path, out_paths: Sequence[str | Path], *,
                      progress: ProgressCallback | None = None) -> None:
        """Separate an audio file into one file per talker (``out_paths``, in talker order), each written
        atomically with the input's rate, channels, length and, when the extension is the same, its
        container and subtype."""
        in_path, out_paths = Path(in_path), [Path(p) for p in out_paths]
        if len(out_paths) != self.speakers:
            raise ModelError(f"{in_path}: {len(out_paths)} output paths given for a model that separates "
                             f"{self.speakers} talkers")
        header = audio_io.info(in_path)
        if header.channels > MAX_CHANNELS:  # refuse before reading a huge multichannel file
            raise AudioError(f"{in_path}: {header.channels} channels is more than the {MAX_CHANNELS} supported")
        _check_sample_rate(header.sample_rate, str(in_path))
        samples, sample_rate = audio_io.read_audio(in_path)  # (N, C)
        talkers = self._separate(samples, sample_rate, progress, name=str(in_path), from_file=True)  # (S, N, C)
        for talker, out_path in zip(talkers, out_paths):
            container, subtype = audio_io.matching_format(header, out_path)
            audio_io.write_audio(out_path, talker, sample_rate, subtype=subtype, format=container)


def _separation_model_dir(name_or_dir: str | Path) -> Path:
    """The model directory ``name_or_dir`` names: a directory, or the name of a shipped or user separation model
    (an enhancement model's name is refused here, before its weights are read)."""
    path = Path(name_or_dir)
    if path.exists():
        return _model_dir_for(path)
    model_dir = catalog.lookup(str(name_or_dir), task="separation", how_to=HOW_TO_GET_A_SEPARATION_MODEL)
    _check_model_dir(model_dir)
    return model_dir
