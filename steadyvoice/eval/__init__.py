"""Evaluation: speech-quality metrics and directory scoring (``steadyvoice score``).

```python
from steadyvoice.eval import si_sdr, pesq_wb, pesq_nb, stoi, estoi, composite, DNSMOS, score_pair
# every metric takes (estimate, reference), as torchmetrics and steadyvoice.train.losses
si_sdr(est, ref)                      # dB; est, ref: 1-D arrays of equal length
pesq_wb(est, ref, sr)                 # resampled to 16 kHz; pesq_nb at 8 kHz; stoi/estoi via pystoi
composite(est, ref, sr)               # {"csig", "cbak", "covl", ...} at 16 kHz
DNSMOS()(audio, sr)                   # {"sig", "bak", "ovrl", "p808"}; sessions built once per instance
score_pair(est, ref, sr, ["pesq_wb", "dnsmos"])   # {"pesq_wb": ..., "dnsmos_sig": ..., ...}
result = score_directories(ref_dir, est_dir, noisy_dir, metrics, jobs=2)
result.rows, result.summary            # per-file rows (sorted), mean/std/count + improvement
scores, order = pit_si_sdr(estimates, references)   # (S, N) each: per-talker SI-SDR in the best order
result = score_separation(ref_dir, est_dir, mix_dir)  # groups <mixture>_s1, _s2, ...; SI-SDR(i) per talker
```
"""

from steadyvoice.eval.dnsmos import DNSMOS
from steadyvoice.eval.metrics import (
    METRICS,
    composite,
    estoi,
    metric_columns,
    parse_metrics,
    pesq_nb,
    pesq_wb,
    score_pair,
    si_sdr,
    stoi,
)
from steadyvoice.eval.score import ScoreResult, format_table, score_directories, summarize, write_csv, write_json
from steadyvoice.eval.separation import SeparationResult, pit_si_sdr, score_separation, write_separation_csv

__all__ = [
    "METRICS", "DNSMOS", "ScoreResult", "composite", "estoi", "format_table", "metric_columns",
    "parse_metrics", "pesq_nb", "pesq_wb", "score_directories", "score_pair", "si_sdr", "stoi",
    "summarize", "write_csv", "write_json",
    "SeparationResult", "pit_si_sdr", "score_separation", "write_separation_csv",
]
