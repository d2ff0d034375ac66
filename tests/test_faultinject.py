"""CI share of the fault-injection harness (tests/faultinject.py): 2 trials, SIGKILL at random moments.

For longer runs: ``python tests/faultinject.py --trials 50``.
"""

from __future__ import annotations

import random

from faultinject import compare_runs, make_data, overrides, train_inprocess, trial

STEPS = 10  # warmup, validations at 3 (best), 6, 9 (plateau: reload best + halve), 10 (end); 4 steps per epoch


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    data = make_data(tmp_path / "data")
    reference = tmp_path / "reference"
    # The uninterrupted run, in this process (the CLI gives the same result: see the resume tests).
    train_inprocess(reference, overrides(data, STEPS))
    rng = random.Random(20251123)
    for index in range(2):
        result = trial(index, tmp_path, data, reference, max_steps=STEPS, kills=1, rng=rng)
        assert len(result.kills) == 1 and result.launches == 2
        assert result.diffs == [], f"trial {index} (killed {result.kills}): {result.diffs}"
    assert compare_runs(reference, tmp_path / "trial-000") == []
