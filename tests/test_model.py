"""MossFormer2SE: parity with ClearerVoice's network, official shapes, any length, batching, training mode."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from steadyvoice.config import from_dict
from steadyvoice.errors import ConfigError, ModelError
from steadyvoice.models import (CONFIGS, MossFormer2SE, MossFormer2SEConfig, build_model, count_parameters,
                                get_config, load_state_dict_strict)
from steadyvoice.models.clearervoice import config_from_constructor_args, official_to_ours, ours_to_official
from steadyvoice.models.mossformer2 import GatedAttentionUnit

REF = Path(__file__).parent / "data" / "reference"


@pytest.fixture(scope="module")
def parity():
    npz = np.load(REF / "mossformer2_se_small_parity.npz")
    meta = json.loads((REF / "mossformer2_se_small_parity.json").read_text())
    official = {k[len("param/"):]: torch.from_numpy(npz[k]) for k in npz.files if k.startswith("param/")}
    return meta, official, torch.from_numpy(npz["input/features"]), torch.from_numpy(npz["output/mask"])


@pytest.fixture(scope="module")
def small_model(parity):
    meta, official, _, _ = parity
    cfg = config_from_constructor_args(meta["masknet_constructor_args"])
    model = build_model(cfg)
    load_state_dict_strict(model, official_to_ours(official), where="parity npz")
    return model.eval()


def test_output_matches_clearervoice_network(parity, small_model):
    _, _, features, mask = parity
    with torch.no_grad():
        out = small_model(features)
    assert out.shape == (2, 300, 961)
    err = (out - mask).abs().max().item()
    assert err <= 1e-4, f"max abs error {err:.3g} vs the official network"
    assert (out >= 0).all()


def test_parity_config_is_the_registered_small_config(parity):
    meta = parity[0]
    assert config_from_constructor_args(meta["masknet_constructor_args"]) == get_config("mossformer2-se-48k-small")


def test_official_size_weights_have_the_official_keys_and_shapes():
    shapes_file = json.loads((REF / "mossformer2_se_48k.state_dict_shapes.json").read_text())
    expected = {k: tuple(v) for k, v in shapes_file["state_dict_shapes"].items()}
    cfg = get_config("mossformer2-se-48k")
    with torch.device("meta"):  # shapes only: no 220 MB allocation
        model = build_model(cfg)
    mapped = ours_to_official(model.state_dict(), cfg)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expected
    assert len(expected) == 929
    # Their count: shared rotary table once, the persistent inv_freq buffer not a parameter.
    unique = {k: v for k, v in mapped.items() if not k.endswith("pos_enc.inv_freq")
              and not (k.endswith("rotary_pos_emb.freqs") and ".layers.0." not in k)}
    assert sum(v.numel() for v in unique.values()) == 55_262_170 == shapes_file["total_parameters"]
    # Ours: the same minus the 16 fixed rotary frequencies, which are a buffer here.
    assert count_parameters(model) == 55_262_170 - 16 == shapes_file["trainable_parameters"]


def test_fixed_tables_are_buffers_not_weights():
    model = build_model("mossformer2-se-48k-small")
    keys = set(model.state_dict())
    assert not any("freq" in k for k in keys)
    assert torch.equal(model.rotary.freqs, 1.0 / 10000 ** (torch.arange(0, 32, 2).float() / 32))
    assert model.position.inv_freq.shape == (32,)


@pytest.mark.parametrize("T", [1, 7, 255, 256, 257, 600])
def test_any_length_and_batch_items_are_independent(small_model, T):
    torch.manual_seed(T)
    x = torch.randn(3, T, 180)
    with torch.no_grad():
        batched = small_model(x)
        single = torch.cat([small_model(x[i:i + 1]) for i in range(3)])
    assert batched.shape == (3, T, 961)
    assert torch.isfinite(batched).all()
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_eval_is_deterministic_and_train_uses_dropout(small_model):
    torch.manual_seed(0)
    x = torch.randn(1, 40, 180)
    with torch.no_grad():
        assert torch.equal(small_model(x), small_model(x))
        small_model.train()
        try:
            a, b = small_model(x), small_model(x)
        finally:
            small_model.eval()
    assert not torch.equal(a, b)


def test_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    model = build_model("mossformer2-se-16k-small").train()
    cfg = model.cfg
    x = torch.randn(2, 30, cfg.in_channels)
    loss = model(x).square().mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []  # DDP needs every parameter in the graph
    D = cfg.model_dim
    assert model.speaker_proj.weight.grad[:D].abs().sum() > 0
    assert model.speaker_proj.weight.grad[D:].abs().sum() == 0  # other speakers' rows are unused


def test_small_16k_variant_follows_signal_setup():
    cfg = MossFormer2SEConfig(sample_rate=16000, win_length=640, hop_length=160, n_mels=40, model_dim=96,
                              num_blocks=1)
    assert (cfg.n_freqs, cfg.in_channels) == (321, 120)
    model = build_model(cfg).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 10, 120)).shape == (2, 10, 321)


def test_causal_attention_does_not_look_ahead():
    cfg = MossFormer2SEConfig(model_dim=32, num_blocks=1, query_key_dim=16, rotary_dim=8, group_size=8,
                              causal=True, attn_dropout=0.0)
    unit = GatedAttentionUnit(cfg).eval()
    torch.manual_seed(0)
    queries_keys = [torch.randn(1, 20, 16) for _ in range(4)]  # quad_q, lin_q, quad_k, lin_k
    values = torch.randn(1, 20, 64)
    changed = values.clone()
    changed[:, 13:] += 1.0  # change the future of frame 12 (frames 8..15 share a group)
    out_a = unit.attend(*queries_keys, values)
    out_b = unit.attend(*queries_keys, changed)
    assert torch.equal(out_a[:, :13], out_b[:, :13])
    assert not torch.equal(out_a[:, 13:], out_b[:, 13:])


def test_wrong_feature_width_is_a_clear_error(small_model):
    with pytest.raises(ValueError, match=r"\(batch, frames, 180\)"):
        small_model(torch.randn(1, 10, 60))


def test_registry_and_config_validation():
    assert {"mossformer2-se-48k", "mossformer2-se-48k-small"} <= set(CONFIGS)
    official = get_config("mossformer2-se-48k")
    assert (official.n_freqs, official.in_channels, official.hidden_dim) == (961, 180, 2048)
    with pytest.raises(ModelError, match="mossformer2-se-48k-small"):
        get_config("mossformer2-48k")
    with pytest.raises(ConfigError, match="unknown config key 'model_dims'"):
        from_dict(MossFormer2SEConfig, {"model_dims": 64})
    with pytest.raises(ConfigError, match="hop_length .* must not exceed win_length"):
        from_dict(MossFormer2SEConfig, {"hop_length": 4000})
    with pytest.raises(ConfigError, match="model_dim must be even"):
        from_dict(MossFormer2SEConfig, {"model_dim": 63})
    with pytest.raises(ConfigError, match="rotary_dim"):
        from_dict(MossFormer2SEConfig, {"query_key_dim": 16})
    with pytest.raises(ConfigError, match="norm 'gln' is not supported"):
        from_dict(MossFormer2SEConfig, {"norm": "gln"})
    assert isinstance(build_model(official.__class__(model_dim=32, num_blocks=1)), MossFormer2SE)
