"""The band above 8 kHz at 44.1/48 kHz: what each design of a full-band enhancer does with it.

On the test split of a 48 kHz corpus (``steadyvoice corpus DIR --sample-rate 48000 ...``; its test speakers are
unseen), every noisy file is enhanced by

* ``cut``: the 16 kHz core alone, resampled up (default-v1's behaviour: nothing above 8 kHz);
* ``pass``: the core for 0-8 kHz plus the noisy band above, untouched;
* ``follow``: the core plus the noisy upper band times one gain per frame, the core's own gain on its top band
  (6-7.5 kHz energy out / in): a design with nothing to train;
* ``learned``: a full-band model (``--model``, default: the shipped default), whose upper-band gains are trained;
* ``dfn3``: DeepFilterNet3 at its native 48 kHz (bench/quality.py's runner), as the peer.

Per file, with S, Y and X the clean, noisy and enhanced STFTs (20 ms Hann, 10 ms hop) over the bins at
8 kHz and above: the upper-band level of the output against the clean one, 10 log10(sum |X|^2 / sum |S|^2)
(0 dB: the clean band's energy; the cut design has none), and the upper-band SNR, 10 log10(sum |S|^2 /
sum |X - S|^2), against the noisy input's (the noise the band keeps, and what the gains distort). Also the
full-band SI-SDR. Means over files (dB values averaged in dB); the ``cut`` level is floored at -60 dB.

    python bench/fullband.py --corpus corpus48k2
    python bench/fullband.py --corpus corpus48k2 --model runs/default-v2-export --limit 20
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FLOOR_DB = -60.0
DESIGNS = ("cut", "pass", "follow", "learned", "dfn3")


def upper_band_figures(clean: np.ndarray, estimate: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """(level of the estimate's band >= 8 kHz against the clean one in dB, SNR of that band in dB)."""
    window = torch.hann_window(960 * sample_rate // 48000)
    n_fft = window.numel()

    def spec(x: np.ndarray) -> torch.Tensor:
        return torch.stft(torch.from_numpy(np.ascontiguousarray(x, np.float32)), n_fft, n_fft // 2, window=window,
                          return_complex=True)

    s, x = spec(clean), spec(estimate)
    band = torch.fft.rfftfreq(n_fft, 1 / sample_rate) >= 8000
    s, x = s[band], x[band]
    clean_energy = s.abs().square().sum().item() + 1e-12
    level = 10 * np.log10(x.abs().square().sum().item() / clean_energy + 1e-12)
    snr = 10 * np.log10(clean_energy / ((x - s).abs().square().sum().item() + 1e-12))
    return max(level, FLOOR_DB), snr


def si_sdr(clean: np.ndarray, estimate: np.ndarray) -> float:
    from steadyvoice.train.losses import si_sdr as si_sdr_t

    return float(si_sdr_t(torch.from_numpy(estimate)[None], torch.from_numpy(clean)[None])[0])


def designs_of(model, noisy: np.ndarray) -> dict[str, np.ndarray]:
    """cut / pass / follow from the model's core, learned from the whole model; noisy (N,) at 48 kHz."""
    from steadyvoice.pipelines.fullband_se import one_pass, stft, istft

    cfg = model.cfg
    with torch.no_grad():
        result = one_pass(model, torch.from_numpy(noisy)[None], cfg)
        low, upper_spec = result.low, result.upper_spec  # (1, N), (1, F, T)
        noisy_low = torch.from_numpy(noisy)[None] - istft(upper_spec, cfg, length=noisy.shape[0])
        freqs = torch.linspace(0, cfg.sample_rate / 2, cfg.n_freqs)
        top = (freqs >= 6000) & (freqs < 7500)
        gain = (stft(low, cfg)[:, top].abs().square().sum(1) /
                stft(noisy_low, cfg)[:, top].abs().square().sum(1).clamp(min=1e-12)).sqrt().clamp(max=1.0)  # (1, T)
        follow = low + istft(upper_spec * gain[:, None, :], cfg, length=noisy.shape[0])
        passed = low + istft(upper_spec, cfg, length=noisy.shape[0])
    return {"cut": low[0].numpy(), "pass": passed[0].numpy(), "follow": follow[0].numpy(),
            "learned": result.enhanced[0].numpy()}


def main(argv: list[str] | None = None) -> int:
    from quality import dfn3_denoise

    from steadyvoice.models import load_pretrained
    from steadyvoice.inference import _model_dir_for

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="a 48 kHz corpus (steadyvoice corpus --sample-rate 48000)")
    parser.add_argument("--model", default="default", help="a full-band model directory or name (default: default)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test files")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "fullband.csv", help="per-file CSV")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    model, cfg = load_pretrained(_model_dir_for(args.model))
    if type(cfg).__name__ != "FullBandConfig":
        print(f"error: {args.model} is not a full-band model (architecture fullband-se)", file=sys.stderr)
        return 2
    with open(args.corpus / "test" / "mixtures.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["name"])[: args.limit]
    table = []
    for row in rows:
        clean, rate = sf.read(args.corpus / row["clean"], dtype="float32")
        noisy, _ = sf.read(args.corpus / row["noisy"], dtype="float32")
        if rate != cfg.sample_rate:
            print(f"error: {row['clean']} is at {rate} Hz; this bench needs a {cfg.sample_rate} Hz corpus", file=sys.stderr)
            return 2
        outputs = {**designs_of(model, noisy), "dfn3": dfn3_denoise(noisy, rate)}  # a fresh runtime per file
        record = {"name": row["name"], "snr_db": float(row["snr_db"]), "source": row.get("source", "")}
        record["noisy_level"], record["noisy_snr"] = upper_band_figures(clean, noisy, rate)
        for design, out in outputs.items():
            record[f"{design}_level"], record[f"{design}_snr"] = upper_band_figures(clean, out, rate)
            record[f"{design}_si_sdr"] = si_sdr(clean, out)
        table.append(record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in table]))

    print(f"{len(table)} test files of {args.corpus} at {cfg.sample_rate} Hz; band >= 8 kHz (dB)\n")
    print("| design | level vs clean | band SNR | band SNR gain | full-band SI-SDR |")
    print("|---|---|---|---|---|")
    print(f"| noisy | {mean('noisy_level'):+.1f} | {mean('noisy_snr'):.1f} | - | - |")
    for design in DESIGNS:
        print(f"| {design} | {mean(f'{design}_level'):+.1f} | {mean(f'{design}_snr'):.1f} | "
              f"{mean(f'{design}_snr') - mean('noisy_snr'):+.1f} | {mean(f'{design}_si_sdr'):.2f} |")
    print(f"\nper-file figures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
