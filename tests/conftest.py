"""Shared test fixtures.

The tiny model is a TEST FIXTURE (random-weight MossFormer2-SE saved with save_pretrained into a temporary
directory), never a default: it only exercises plumbing (inference, the enhance command).
"""

import pytest
import torch

from steadyvoice.models import MossFormer2SEConfig, build_model, save_pretrained

# Tiny 16 kHz network: 40 ms frames would be 640 samples; this uses 32 ms / 8 ms like the 16k registry entry.
TINY = MossFormer2SEConfig(sample_rate=16000, win_length=512, hop_length=128, n_mels=40, model_dim=32,
                           num_blocks=1, query_key_dim=16, rotary_dim=8, fsmn_inner_dim=32, group_size=64)


@pytest.fixture(autouse=True)
def steadyvoice_home(tmp_path_factory, monkeypatch):
    """An empty $STEADYVOICE_HOME per test: tests never see (or write) the user's installed models."""
    home = tmp_path_factory.mktemp("steadyvoice-home")
    monkeypatch.setenv("STEADYVOICE_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def one_torch_thread():
    """The fixture model is tiny: one thread is faster than two and immune to a busy machine's stalls.

    Not autouse: a module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Random-weight TINY model (seeded), saved like a real exported model; one per test module."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-model")
    return save_pretrained(build_model(TINY), TINY, directory, source={"kind": "test fixture, random weights"})
