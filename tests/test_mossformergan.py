"""MossFormerGAN_SE_16K: official shapes, network parity of generator and discriminator, and the whole path
(official .pt -> `steadyvoice convert clearervoice` -> Enhancer) against ClearVoice's own decoder."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from steadyvoice import Enhancer
from steadyvoice.cli import main
from steadyvoice.config import from_dict
from steadyvoice.errors import ConfigError
from steadyvoice.models import build_model, count_parameters, get_config, load_state_dict_strict
from steadyvoice.models.clearervoice_mossformergan import (discriminator_official_to_ours,
                                                           discriminator_ours_to_official, generator_official_to_ours,
                                                           generator_ours_to_official, infer_discriminator_config,
                                                           infer_generator_config, load_discriminator)
from steadyvoice.models.mossformer2 import rotary_freqs
from steadyvoice.models.mossformer_gan import (DISCRIMINATOR_CONFIGS, MetricDiscriminator, MossFormerGANConfig,
                                               MossFormerGANGenerator)
from steadyvoice.pipelines.mossformergan_se import compress, enhance_waveform, pad_to_hops, stft

REF = Path(__file__).parent / "data" / "reference"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _params(npz, prefix: str) -> dict[str, torch.Tensor]:
    """``prefix<key>`` arrays as tensors; 0-d entries (BatchNorm counters) are stored with shape (1,)."""
    out = {}
    for name in npz.files:
        if name.startswith(prefix):
            key = name[len(prefix):]
            value = torch.from_numpy(npz[name])
            out[key] = value.reshape(()) if key.endswith("num_batches_tracked") else value
    return out


@pytest.fixture(scope="module")
def parity():
    npz = np.load(REF / "mossformergan_se_small_parity.npz")
    meta = json.loads((REF / "mossformergan_se_small_parity.json").read_text())
    return meta, npz, _params(npz, "param/"), _params(npz, "disc/param/")


@pytest.fixture(scope="module")
def official_shapes():
    return json.loads((REF / "mossformergan_se_16k.state_dict_shapes.json").read_text())


@pytest.fixture(scope="module")
def generator(parity):
    _, _, gen, _ = parity
    model = MossFormerGANGenerator(get_config("mossformergan-se-16k-small"))
    load_state_dict_strict(model, generator_official_to_ours(gen), where="parity npz")
    return model.eval()


def _tolerance(meta, name: str) -> float:
    """10x the float32-vs-float64 deviation of their own network (the json's float64_check)."""
    return 10 * meta["float64_check"]["deviation"][name]["max_abs_diff"]


def fake_official(shapes: dict) -> dict[str, torch.Tensor]:
    """Official keys with cheap tensors (real values only for the rotary tables, which are checked)."""
    sd = {}
    for key, shape in shapes.items():
        if key.endswith("rotary_pos_emb.freqs"):
            sd[key] = rotary_freqs(2 * shape[0])
        elif key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(0)
        else:
            sd[key] = torch.full((1,) * len(shape), float(len(sd))).expand(*shape)
    return sd


# ---- official sizes -------------------------------------------------------------------------------------


def test_official_generator_has_every_official_key_shape_and_count(official_shapes):
    expected = official_shapes["generator"]
    cfg = get_config("mossformergan-se-16k")
    with torch.device("meta"):  # shapes only
        model = build_model(cfg)
    assert isinstance(model, MossFormerGANGenerator)
    theirs = generator_ours_to_official(model.state_dict(), cfg)
    assert list(theirs) == list(expected["state_dict_shapes"])  # every key, in their order
    assert {k: list(v.shape) for k, v in theirs.items()} == expected["state_dict_shapes"]
    assert len(theirs) == expected["n_state_dict_entries"] == 1065
    # Trainable parameters; their 12 rotary tables of 16 are fixed buffers here (one shared table).
    assert count_parameters(model) == expected["trainable_parameters"] == 3_128_447
    assert sum(v.numel() for v in theirs.values()) == expected["total_parameters"] == 3_128_447 + 12 * 16
    assert not any(k.endswith("freqs") for k in model.state_dict())


def test_official_discriminator_has_every_official_key_shape_and_count(official_shapes):
    expected = official_shapes["discriminator"]
    cfg = DISCRIMINATOR_CONFIGS["mossformergan-se-16k"]
    with torch.device("meta"):
        model = MetricDiscriminator(cfg)
    theirs = discriminator_ours_to_official(model.state_dict(), cfg)
    assert list(theirs) == list(expected["state_dict_shapes"])
    assert {k: list(v.shape) for k, v in theirs.items()} == expected["state_dict_shapes"]
    assert len(theirs) == expected["n_state_dict_entries"] == 117
    assert count_parameters(model) == expected["trainable_parameters"] == 8_121_331


def test_configs_are_inferred_from_shapes(official_shapes, parity):
    gen = fake_official(official_shapes["generator"]["state_dict_shapes"])
    assert infer_generator_config(gen) == get_config("mossformergan-se-16k")
    assert infer_generator_config({f"module.{k}": v for k, v in gen.items()}) == get_config("mossformergan-se-16k")
    disc = fake_official(official_shapes["discriminator"]["state_dict_shapes"])
    assert infer_discriminator_config(disc) == DISCRIMINATOR_CONFIGS["mossformergan-se-16k"]
    # The parity vectors' reduced networks are the registered small configs.
    meta, _, gen_small, disc_small = parity
    assert meta["constructor_args"] == {"num_channel": 16, "num_features": 201}
    assert infer_generator_config(gen_small) == get_config("mossformergan-se-16k-small")
    assert infer_discriminator_config(disc_small) == DISCRIMINATOR_CONFIGS["mossformergan-se-16k-small"]
    cfg = get_config("mossformergan-se-16k-small")
    assert (cfg.channels, cfg.query_key_dim, cfg.rotary_dim, cfg.encoded_freqs, cfg.head_qk_channels) == (16, 32, 32,
                                                                                                         101, 6)


def test_key_mapping_round_trips_exactly(parity):
    _, _, gen, disc = parity
    cfg = get_config("mossformergan-se-16k-small")
    back = generator_ours_to_official(generator_official_to_ours(gen), cfg)
    assert list(back) == list(gen) and all(torch.equal(back[k], gen[k]) for k in gen)
    dcfg = DISCRIMINATOR_CONFIGS["mossformergan-se-16k-small"]
    back = discriminator_ours_to_official(discriminator_official_to_ours(disc), dcfg)
    assert list(back) == list(disc) and all(torch.equal(back[k], disc[k]) for k in disc)


def test_config_rules():
    with pytest.raises(ConfigError, match="query_key_dim must be 2 \\* channels = 32"):
        from_dict(MossFormerGANConfig, {"channels": 16})  # their cross-axis attention needs qk = 2 * channels
    with pytest.raises(ConfigError, match="n_fft must be a multiple of 4"):
        from_dict(MossFormerGANConfig, {"n_fft": 402, "win_length": 402})
    cfg = MossFormerGANConfig()
    assert (cfg.sample_rate, cfg.win_length, cfg.hop_length, cfg.n_fft, cfg.compress_power) == (16000, 400, 100,
                                                                                              400, 0.3)


# ---- network parity -------------------------------------------------------------------------------------


def test_generator_matches_clearervoice_network(parity, generator):
    meta, npz, _, _ = parity
    captured = {}
    hooks = [generator.mask_decoder.register_forward_hook(lambda m, i, o: captured.__setitem__("mask", o)),
             generator.complex_decoder.register_forward_hook(lambda m, i, o: captured.__setitem__("residual", o))]
    try:
        with torch.no_grad():
            est_real, est_imag = generator(torch.from_numpy(npz["input/spec_compressed"]))
    finally:
        for hook in hooks:
            hook.remove()
    tol = max(_tolerance(meta, "output/est_real"), _tolerance(meta, "output/est_imag"))  # 3.4e-5
    results = {"output/est_real": est_real, "output/est_imag": est_imag, "intermediate/mask": captured["mask"],
               "intermediate/complex_residual": captured["residual"]}
    for name, ours in results.items():
        ref = torch.from_numpy(npz[name])
        assert ours.shape == ref.shape, name
        err = (ours - ref).abs().max().item()
        assert err <= tol, f"{name}: max abs error {err:.3g} > {tol:.3g}"


def test_discriminator_matches_clearervoice_network(parity):
    meta, npz, _, disc = parity
    model, cfg = load_discriminator(disc, where="parity npz")
    assert cfg == DISCRIMINATOR_CONFIGS["mossformergan-se-16k-small"]
    model.eval()
    clean, est = torch.from_numpy(npz["disc/input/clean_mag"]), torch.from_numpy(npz["disc/input/est_mag"])
    with torch.no_grad():
        scores = {"disc/output/score_clean_vs_est": model(clean, est),
                  "disc/output/score_clean_vs_clean": model(clean, clean)}
    for name, ours in scores.items():
        ref = torch.from_numpy(npz[name])
        assert ours.shape == ref.shape == (2, 1)
        err = (ours - ref).abs().max().item()
        assert err <= _tolerance(meta, name), f"{name}: max abs error {err:.3g}"
        assert ((ours > 0) & (ours < 1)).all()


def test_sliced_and_no_grad_paths_compute_the_same(generator, monkeypatch):
    """Inference builds the score tables a few sequences at a time and in place; training in one piece."""
    import steadyvoice.models.mossformer_gan as gan

    spec = compress(stft(0.1 * torch.randn(2, 1900, generator=torch.Generator().manual_seed(3)), generator.cfg), 0.3)
    reference = generator(spec)  # autograd on: one piece, out of place, 1-D depthwise convolutions
    monkeypatch.setattr(gan, "SCORE_BUDGET", 500)  # a handful of sequences per slice
    with torch.no_grad():
        sliced = generator(spec)
    for a, b in zip(reference, sliced):
        torch.testing.assert_close(a.detach(), b, atol=2e-5, rtol=1e-5)


def test_discriminator_rejects_clips_shorter_than_one_window():
    model = MetricDiscriminator(DISCRIMINATOR_CONFIGS["mossformergan-se-16k-small"]).eval()
    with pytest.raises(ValueError, match="frames >= 15"):
        model(torch.ones(1, 1, 201, 14), torch.ones(1, 1, 201, 14))


def test_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    generator = build_model("mossformergan-se-16k-small").train()
    discriminator = MetricDiscriminator(DISCRIMINATOR_CONFIGS["mossformergan-se-16k-small"]).train()
    spec = compress(stft(0.1 * torch.randn(2, 1600), generator.cfg), 0.3)  # (2, 2, 17, 201)
    est_real, est_imag = generator(spec)
    est_mag = torch.sqrt(est_real**2 + est_imag**2 + 1e-12).transpose(2, 3)  # (B, 1, F, T)
    ref_mag = torch.sqrt(spec[:, :1] ** 2 + spec[:, 1:] ** 2).transpose(2, 3)
    (est_real.square().mean() + est_imag.square().mean() + discriminator(ref_mag, est_mag).mean()).backward()
    assert [n for n, p in generator.named_parameters() if p.grad is None] == []  # DDP needs them all in the graph
    assert [n for n, p in discriminator.named_parameters() if p.grad is None] == []


# ---- the inference path -----------------------------------------------------------------------------------


def test_front_end_reproduces_their_network_input():
    e2e = np.load(REF / "mossformergan_se_small_e2e.npz")
    cfg = get_config("mossformergan-se-16k-small")
    wave = torch.from_numpy(e2e["input/waveform"])  # (1, 16000)
    c = torch.sqrt(wave.shape[-1] / wave.square().sum())
    ours = compress(stft(pad_to_hops(wave, cfg) * c, cfg), cfg.compress_power)
    ref = torch.from_numpy(e2e["onepass/network_input"])
    assert ours.shape == ref.shape == (1, 2, 161, 201)
    assert (ours - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_pipeline_reproduces_their_decode_of_the_parity_rows(parity, generator):
    _, npz, _, _ = parity
    with torch.no_grad():
        out = enhance_waveform(generator, torch.from_numpy(npz["input/waveform"]), generator.cfg)  # (2, 16000)
    ref = torch.from_numpy(npz["decode/output_waveform"])
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


def test_padding_silence_and_short_inputs(generator):
    cfg = generator.cfg
    wave = torch.arange(1, 251, dtype=torch.float32)[None]  # 250 samples -> 300: their rule appends x[:50]
    padded = pad_to_hops(wave, cfg)
    assert padded.shape == (1, 300) and torch.equal(padded[0, 250:], wave[0, :50])
    short = pad_to_hops(wave[:, :70], cfg)  # too short for the reflect-padded STFT: repeated up to 300
    assert short.shape == (1, 300) and torch.equal(short[0, 70:140], wave[0, :70])
    x = torch.zeros(2, 150)
    x[1] = 0.1 * torch.randn(150)
    with torch.no_grad():
        out = enhance_waveform(generator, x, cfg)
    assert out.shape == (2, 150) and torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros(150))  # silence stays silence (theirs: NaN from c = inf)


def test_convert_then_enhancer_reproduces_clearvoice_decode(tmp_path, capsys, parity):
    """Their generator weights saved as a DDP-trained .pt with their key names -> convert -> Enhancer."""
    _, _, gen, disc = parity
    src = tmp_path / "model.ckpt-120-99.pt"
    torch.save({"model": {f"module.{k}": v for k, v in gen.items()}, "optimizer": {}, "epoch": 120, "step": 99}, src)
    dest = tmp_path / "mossformergan-small"
    code = main(["convert", "clearervoice", str(src), str(dest)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "mossformergan-se, config mossformergan-se-16k-small" in out and "353,855 parameters" in out
    assert json.loads((dest / "config.json").read_text())["architecture"] == "mossformergan-se"

    e2e = np.load(REF / "mossformergan_se_small_e2e.npz")
    tol = 1e-5 * np.abs(e2e["onepass/output_waveform"]).max()  # the e2e json's hint: 1e-5 of the peak
    raw = e2e["input/waveform"][0]  # (16000,) float32 at 16 kHz
    enhanced = Enhancer.from_pretrained(dest)(raw, 16000)
    assert enhanced.shape == raw.shape and enhanced.dtype == np.float32
    err = np.abs(enhanced - e2e["onepass/output_waveform"]).max()
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g}"

    # A file holding only the discriminator is refused, saying what it is.
    disc_file = tmp_path / "discriminator.ckpt-120-99.pt"
    torch.save({"discriminator": disc, "optimizer_disc": {}, "epoch": 120, "step": 99}, disc_file)
    code = main(["convert", "clearervoice", str(disc_file), str(tmp_path / "never")])
    _, err = capsys.readouterr()
    assert code == 2 and "discriminator" in err and "not the generator" in err
    assert not (tmp_path / "never").exists()


def test_wrong_rotary_table_or_unknown_key_is_refused(tmp_path, capsys, parity):
    _, _, gen, _ = parity
    bad = dict(gen)
    bad["blocks.2.inter_mossformer.rotary_pos_emb.freqs"] = gen["blocks.2.inter_mossformer.rotary_pos_emb.freqs"] * 2
    src = tmp_path / "bad.pt"
    torch.save(bad, src)
    assert main(["convert", "clearervoice", str(src), str(tmp_path / "a")]) == 2
    assert "rotary_pos_emb.freqs' differs" in capsys.readouterr().err
    torch.save({**gen, "blocks.0.extra.weight": torch.zeros(1)}, src)
    assert main(["convert", "clearervoice", str(src), str(tmp_path / "b")]) == 2
    assert "unexpected key 'blocks.0.extra.weight'" in capsys.readouterr().err
