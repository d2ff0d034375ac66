"""FRCRN (ClearerVoice FRCRN_SE_16K): official shapes, network parity, checkpoint import, ClearVoice's whole path."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from steadyvoice import Enhancer
from steadyvoice.cli import main
from steadyvoice.config import from_dict
from steadyvoice.errors import CheckpointError, ConfigError
from steadyvoice.models import (FRCRNConfig, architecture_of, build_model, count_parameters, get_config,
                                load_pretrained, load_state_dict_strict)
from steadyvoice.models.clearervoice_frcrn import (infer_frcrn_config, is_frcrn, load_frcrn, official_key_to_ours,
                                                   official_to_ours)
from steadyvoice.models.frcrn import conv_stft_kernels
from steadyvoice.pipelines import one_pass
from steadyvoice.pipelines.frcrn_se import audio_norm, enhance_waveform, padded_length

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small networks: one thread, immune to a busy machine

REF = Path(__file__).parent / "data" / "reference"
HOP = 320  # samples covered by one frame only at each end of a decoded chunk (amplified by the iSTFT division)


@pytest.fixture(scope="module")
def parity():
    npz = np.load(REF / "frcrn_se_small_parity.npz")
    meta = json.loads((REF / "frcrn_se_small_parity.json").read_text())
    shapes = meta["npz_arrays"]  # the npz stores 0-d entries with shape (1,); the json has their real shape
    official = {k[len("param/"):]: torch.from_numpy(npz[k]).reshape(shapes[k]["shape"])
                for k in npz.files if k.startswith("param/")}
    arrays = {k: torch.from_numpy(npz[k]) for k in npz.files if not k.startswith("param/")}
    return meta, official, arrays


@pytest.fixture(scope="module")
def small_model(parity):
    _, official, _ = parity
    model = build_model(get_config("frcrn-se-16k-small"))
    load_state_dict_strict(model, official_to_ours(official), where="parity npz")
    return model.eval()


def tolerance(meta, name: str) -> float:
    """10 x the deviation of their own float64 run from their float32 outputs (the json's float64_check)."""
    return 10 * meta["float64_check"]["deviation"][name]["max_abs_diff"]


# ---- official size ---------------------------------------------------------------------------------------


def fake_official(shapes: dict) -> dict[str, torch.Tensor]:
    """The 1692 official keys with cheap tensors: real fixed STFT tables; a distinct value per weight, the same
    for both names of an aliased module (as in their state_dict)."""
    analysis, synthesis, window = conv_stft_kernels(640, 640)
    fixed = {"stft.weight": analysis, "istft.weight": synthesis, "istft.window": window[None, :, None],
             "istft.enframe": torch.eye(640)[:, None, :]}
    ours_of = {k: official_key_to_ours(k)[0] for k in shapes if k not in fixed}
    value_of = {ours: float(i) for i, ours in enumerate(dict.fromkeys(ours_of.values()))}
    sd = {}
    for key, shape in shapes.items():
        if key in fixed:
            sd[key] = fixed[key]
        elif key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(int(value_of[ours_of[key]]))
        else:  # broadcast view: no 13 M-element allocation per key
            sd[key] = torch.full((1,) * len(shape), value_of[ours_of[key]]).expand(*shape)
    return sd


def test_official_size_has_every_official_shape_and_the_official_parameter_count():
    meta = json.loads((REF / "frcrn_se_16k.state_dict_shapes.json").read_text())
    shapes = meta["state_dict_shapes"]
    assert len(shapes) == 1692 and meta["n_distinct_tensors_in_state_dict"] == 868
    theirs = fake_official(shapes)
    cfg = get_config("frcrn-se-16k")
    assert cfg == FRCRNConfig()
    assert (cfg.sample_rate, cfg.win_length, cfg.hop_length, cfg.fft_len) == (16000, 640, 320, 640)
    assert infer_frcrn_config(theirs) == cfg
    model = build_model(cfg)
    ours = official_to_ours(theirs)  # 1692 keys -> 864 weights: aliases merged, 4 fixed tables computed
    assert len(ours) == 864 == 868 - 4
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in
                                                            model.state_dict().items()}
    assert count_parameters(model) == 13_141_844 == meta["trainable_parameters"]
    assert meta["total_parameters"] - meta["trainable_parameters"] == 2 * 642 * 640  # the kernels we compute
    loaded, loaded_cfg = load_frcrn(theirs, Path("official.pt"), sample_rate=None, hop_length=None, fmin=20.0)
    assert loaded_cfg == cfg
    weights = loaded.state_dict()
    for key, value in theirs.items():  # every value lands where its key says (one distinct value per weight)
        if not key.startswith(("stft.", "istft.")):
            ours_key = official_key_to_ours(key)[0]
            assert weights[ours_key][(0,) * weights[ours_key].dim()] == value[(0,) * value.dim()], key


def test_fixed_stft_tables_are_computed_not_stored(parity):
    _, official, _ = parity
    model = build_model("frcrn-se-16k-small")
    assert not any(k.startswith(("stft.", "istft.")) for k in model.state_dict())
    assert (model.stft.kernel - official["stft.weight"]).abs().max() <= 1e-7
    assert (model.istft.kernel - official["istft.weight"]).abs().max() <= 1e-7
    assert torch.equal(model.istft.window, official["istft.window"].flatten())
    assert architecture_of(model.cfg).name == "frcrn-se" and architecture_of(model.cfg).task == "enhancement"


def test_config_is_validated():
    with pytest.raises(ValueError, match="fft_len must be 640"):
        FRCRNConfig(fft_len=512, win_length=512)
    with pytest.raises(ConfigError, match="win_length .* must equal fft_len"):
        from_dict(FRCRNConfig, {"win_length": 512})
    with pytest.raises(ConfigError, match="unknown config key 'channel'"):
        from_dict(FRCRNConfig, {"channel": 32})


# ---- network parity ------------------------------------------------------------------------------------------


def test_outputs_and_intermediates_match_clearervoice_network(parity, small_model):
    meta, _, arrays = parity
    captured = {}
    hooks = [getattr(small_model, name).register_forward_hook(lambda m, i, o, name=name: captured.update({name: o}))
             for name in ("stft", "unet1", "unet2")]
    try:
        with torch.no_grad():
            est_spec, est_wav, est_mask = small_model(arrays["input/waveform"])
    finally:
        for hook in hooks:
            hook.remove()
    assert est_spec.shape == est_mask.shape == (2, 642, 49) and est_wav.shape == (2, 16000)
    for name, out in (("output/est_spec", est_spec), ("output/est_wav", est_wav), ("output/est_mask", est_mask)):
        err = (out - arrays[name]).abs().max().item()
        assert err <= tolerance(meta, name), f"{name}: max abs error {err:.3g}"
    interior = (est_wav - arrays["output/est_wav"])[:, HOP:-HOP].abs().max().item()
    assert interior <= tolerance(meta, "output/est_wav[:, 320:-320] (interior)")
    assert (captured["stft"] - arrays["intermediate/conv_stft"]).abs().max() <= 1e-5
    mask_tol = tolerance(meta, "output/est_mask")  # no float64 check of their own: the mask's, which is tanh of them
    for ours, theirs in (("unet1", "intermediate/unet1_out"), ("unet2", "intermediate/unet2_out")):
        assert (captured[ours] - arrays[theirs]).abs().max() <= mask_tol, ours


def test_float64_run_reproduces_their_float64_check(parity, small_model):
    """Ours in float64 differs from their float32 outputs by exactly what their own float64 run does: the same
    function, to float64 precision."""
    meta, _, arrays = parity
    model = build_model("frcrn-se-16k-small")
    model.load_state_dict(small_model.state_dict())
    model = model.double().eval()
    with torch.no_grad():
        outs = dict(zip(("output/est_spec", "output/est_wav", "output/est_mask"),
                        model(arrays["input/waveform"].double())))
    outs["output/est_wav[:, 320:-320] (interior)"] = outs["output/est_wav"][:, HOP:-HOP]
    for name, out in outs.items():
        theirs = arrays[name.split("[")[0]].double()
        theirs = theirs[:, HOP:-HOP] if "interior" in name else theirs
        deviation = (out - theirs).abs().max().item()
        assert deviation == pytest.approx(meta["float64_check"]["deviation"][name]["max_abs_diff"], rel=1e-4), name


def test_batch_items_are_independent_and_short_inputs_are_refused(small_model):
    torch.manual_seed(3)
    x = 0.1 * torch.randn(2, 6400)
    with torch.no_grad():
        both = small_model(x)[1]
        one = small_model(x[1:])[1]
    assert (both[1:] - one)[:, HOP:-HOP].abs().max() <= 1e-5  # the edges amplify rounding (see the parity test)
    with pytest.raises(ValueError, match="at least win_length = 640 samples"):
        small_model(x[:, :639])


# ---- ClearVoice's path around the network --------------------------------------------------------------------


def test_padding_follows_clearvoice_then_whole_frames():
    cfg = get_config("frcrn-se-16k")
    # below 1 s -> 1 s; 1..1.75 s -> 1.75 s; longer: + window + remainder unless the remainder is 0
    for n, length in ((500, 16000), (15999, 16000), (16000, 28000), (27840, 28000), (30000, 48000), (40000, 40000),
                      (52001, 68002)):
        assert padded_length(n, cfg) == length, n
    # where their frames would stop short of N (they return fewer samples), up to whole frames instead
    assert padded_length(27900, cfg) == padded_length(28000, cfg) == 28160


def test_audio_norm_is_clearvoices_and_silence_stays_finite():
    e2e = np.load(REF / "frcrn_se_small_e2e.npz")
    normed, scalar = audio_norm(torch.from_numpy(e2e["input/waveform_raw"]))
    assert (normed - torch.from_numpy(e2e["input/waveform"])).abs().max() <= 1e-7
    assert scalar.item() == pytest.approx(e2e["input/audio_norm_scalar"][0], rel=1e-6)
    normed, scalar = audio_norm(torch.zeros(1, 100))  # theirs: NaN (mean of an empty selection)
    assert torch.equal(normed, torch.zeros(1, 100)) and torch.isfinite(scalar).all()
    assert torch.equal(enhance_waveform(build_model("frcrn-se-16k-small").eval(), torch.zeros(1, 300)),
                       torch.zeros(1, 300))


@pytest.fixture(scope="module")
def official_pt(parity, tmp_path_factory):
    """The parity weights as an official checkpoint: their state_dict (all 1692 keys) under 'model', DDP-prefixed."""
    _, official, _ = parity
    src = tmp_path_factory.mktemp("official") / "last_best_checkpoint.pt"
    torch.save({"model": {f"module.{k}": v for k, v in official.items()}, "epoch": 7, "step": 1234}, src)
    return src


def convert(capsys, src: Path, dest: Path) -> tuple[int, str, str]:
    code = main(["convert", "clearervoice", str(src), str(dest)])
    out, err = capsys.readouterr()
    return code, out, err


def test_convert_then_enhance_reproduces_clearvoice(tmp_path, capsys, official_pt, parity):
    meta, _, _ = parity
    dest = tmp_path / "frcrn"
    code, out, err = convert(capsys, official_pt, dest)
    assert code == 0, err
    assert "frcrn-se, config frcrn-se-16k-small" in out and f"{meta['n_params_trainable']:,} parameters" in out
    assert json.loads((dest / "config.json").read_text())["architecture"] == "frcrn-se"
    assert load_pretrained(dest)[1] == get_config("frcrn-se-16k-small")

    e2e = np.load(REF / "frcrn_se_small_e2e.npz")
    raw = e2e["input/waveform_raw"][0]  # (16000,) float32, before audio_norm
    expected = e2e["onepass/output_waveform_rescaled"]  # ClearVoice: audio_norm, pad to 28000, network, cut, rescale
    enhanced = Enhancer.from_pretrained(dest)(raw, 16000)
    assert enhanced.shape == raw.shape and enhanced.dtype == np.float32
    # Tolerances scaled to the output level by the audio_norm scalar. Only the first HOP samples lie at an edge of
    # the decoded 28000-sample chunk (one frame covers them; their window-sum division amplifies rounding).
    scale = float(e2e["input/audio_norm_scalar"][0])
    edge = np.abs(enhanced[:HOP] - expected[:HOP]).max()
    interior = np.abs(enhanced[HOP:] - expected[HOP:]).max()
    assert edge <= tolerance(meta, "output/est_wav") * scale, edge
    assert interior <= tolerance(meta, "output/est_wav[:, 320:-320] (interior)") * scale, interior

    # Their padding matters: the same network on the unpadded second gives another output.
    model, cfg = load_pretrained(dest)
    normed, scalar = audio_norm(torch.from_numpy(raw)[None])
    assert one_pass(cfg) is enhance_waveform
    with torch.no_grad():
        unpadded = (model(normed)[1] * scalar)[0, HOP:-HOP].float().numpy()
    assert np.abs(unpadded - expected[HOP:-HOP]).max() > 100 * interior


def test_aliases_are_merged_and_must_agree(parity):
    _, official, _ = parity
    flat_only = {k: v for k, v in official.items() if not any(f"{m}." in k for m in
                 ("encoders", "decoders", "se_layers_enc", "se_layers_dec", "fsmn_enc", "fsmn_dec"))}
    assert len(official) == 1692 and len(flat_only) == 868
    ours = official_to_ours(official)
    assert official_to_ours(flat_only).keys() == ours.keys()  # either name of a module is enough
    edited = dict(official)
    edited["unet2.se_layers_dec.3.fc_i.2.bias"] = official["unet2.se_layers_dec.3.fc_i.2.bias"] + 1e-3
    with pytest.raises(CheckpointError, match=r"'unet2.se_layers_dec.3.fc_i.2.bias' and "
                                              r"'unet2.se_layer_dec3.fc_i.2.bias' are two names of one weight"):
        official_to_ours(edited)


def test_foreign_fixed_table_or_key_is_refused(parity):
    _, official, _ = parity
    hamming = dict(official)
    hamming["istft.window"] = torch.hamming_window(640, periodic=True)[None, :, None].sqrt()
    with pytest.raises(CheckpointError, match="'istft.window' differs from the fixed table"):
        official_to_ours(hamming)
    with pytest.raises(CheckpointError, match="unexpected key 'unet.lstm.weight'"):
        official_to_ours({**official, "unet.lstm.weight": torch.zeros(1)})
    assert is_frcrn(official) and not is_frcrn({"mossformer.norm.weight": torch.zeros(1)})


def test_mis_shaped_weight_names_their_key_and_ours(tmp_path, capsys, parity):
    _, official, _ = parity
    bad = {k: v for k, v in official.items() if not k.startswith("unet.encoders.2.")}  # keep one name only
    bad["unet.encoder2.conv.conv_im.weight"] = torch.zeros(32, 32, 4, 2)
    src = tmp_path / "bad.pt"
    torch.save(bad, src)
    code, _, err = convert(capsys, src, tmp_path / "never")
    assert code == 2 and not (tmp_path / "never").exists()
    assert ("'unet.encoder2.conv.conv_im.weight' (ours 'unet1.encoders.2.conv.im.weight') has shape (32, 32, 4, 2) "
            "but the model expects (32, 32, 5, 2)") in err


def test_convert_of_an_unknown_network_names_the_known_families(tmp_path, capsys):
    src = tmp_path / "other.pt"
    torch.save({"model": {"generator.conv.weight": torch.zeros(2, 1, 3)}}, src)
    code, _, err = convert(capsys, src, tmp_path / "never")
    assert code == 2 and err.startswith("error: ") and "not a network SteadyVoice knows" in err
    assert "FRCRN_SE_16K" in err and "MossFormer2_SE_48K" in err
