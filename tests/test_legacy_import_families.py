"""Import of ClearerVoice FRCRN_SE_16K and MossFormerGAN_SE_16K training directories (tiny networks in their
key naming, optimizers built like their train.py, saved like their solver), then `steadyvoice train` goes on."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from faultinject import REPO, make_data, overrides, train_inprocess
from steadyvoice.checkpoint.api import load_checkpoint
from steadyvoice.errors import CheckpointError
from steadyvoice.legacy import TRAINING_FAMILIES, import_clearervoice, their_parameter_groups
from steadyvoice.train.config import load_train_config

REFERENCE = Path(__file__).parent / "data" / "reference"
FRCRN_RECIPE = REPO / "recipes" / "frcrn-tiny-cpu.yaml"
GAN_RECIPE = REPO / "recipes" / "mossformergan-tiny-cpu.yaml"
SMALL = ["data.crop_seconds=0.5"]  # GAN: PESQ needs more than the default 0.25 s
ADAM_STEPS = 7  # Adam's per-parameter step in the files written here = the imported run's step
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


def _moments(groups: list[list[tuple[str, torch.Tensor]]], optimizer_cls, lrs: list[float], no_state=()) -> dict:
    """Their optimizer's state_dict: torch numbers the parameters group after group, in the order given.

    A recognisable state: exp_avg = position + the parameter's value (in THEIR layout), exp_avg_sq = position;
    none for the keys in ``no_state`` (frozen, or never updated: no gradient, so Adam kept nothing).
    """
    params = [[torch.nn.Parameter(t.detach().clone()) for _, t in g] for g in groups]
    opt = optimizer_cls([{"params": p, "lr": lr} for p, lr in zip(params, lrs)])
    position = 0
    for g, ps in zip(groups, params):
        for (key, _), p in zip(g, ps):
            if key not in no_state:
                opt.state[p] = {"step": torch.tensor(float(ADAM_STEPS)), "exp_avg": p.detach() + position,
                                "exp_avg_sq": torch.full_like(p, float(position))}
            position += 1
    return opt.state_dict()


def _their_position(groups: list[list[tuple[str, torch.Tensor]]]) -> dict[str, int]:
    return {key: i for i, (key, _) in enumerate(kt for g in groups for kt in g)}


# ---- FRCRN ---------------------------------------------------------------------------------------------------
def _frcrn_theirs(model, win: int) -> dict[str, torch.Tensor]:
    """Our tiny FRCRN as their DCCRN state_dict: all keys in their order, both names of every aliased module
    holding the same tensor, their fixed STFT tables (the key list is their official one: same structure)."""
    from steadyvoice.models.clearervoice_frcrn import official_key_to_ours
    from steadyvoice.models.frcrn import conv_stft_kernels

    ours = model.state_dict()
    analysis, synthesis, window = conv_stft_kernels(win, win)
    fixed = {"stft.weight": analysis, "istft.weight": synthesis, "istft.window": window[None, :, None],
             "istft.enframe": torch.eye(win)[:, None, :]}
    shapes = json.loads((REFERENCE / "frcrn_se_16k.state_dict_shapes.json").read_text())["state_dict_shapes"]
    theirs, by_ours = {}, {}
    for key in shapes:
        if key in fixed:
            theirs[key] = fixed[key]
            continue
        name, kind = official_key_to_ours(key)
        if name not in by_ours:
            by_ours[name] = ours[name].unsqueeze(-1) if kind == "conv2d_column" else ours[name].clone()
        theirs[key] = by_ours[name]  # one tensor under both names, as in their state_dict
    return theirs


@pytest.fixture(scope="module")
def frcrn():
    """A tiny FRCRN in their naming with their param groups (built once; each test writes its own files)."""
    from steadyvoice.models import build_model

    torch.manual_seed(1)
    cfg = load_train_config(FRCRN_RECIPE).model.resolve()
    model = build_model(cfg)
    theirs = _frcrn_theirs(model, cfg.win_length)
    # Their param groups exactly as their get_params built them at official size (read from their code run).
    reference = json.loads((REFERENCE / "frcrn_se_16k.state_dict_shapes.json").read_text())
    groups = [[(k, theirs[k]) for k in g["param_names"]]
              for g in reference["optimizer_from_train_code"]["param_groups"]]
    # Modules their forward never applies get no gradient, so no Adam state; se_layer_enc6's output is unused
    # too, but here it has moments (as if DDP had filled zero gradients): ours keeps it frozen and drops them.
    unused = {k for g in groups for k, _ in g
              if k.split(".")[1] in ("fsmn_enc0", "fsmn_dec6", "se_layer_dec5", "se_layer_enc6")}
    no_state = {"stft.weight", "istft.weight"} | {k for k in unused if ".se_layer_enc6." not in k}  # + frozen STFT
    return {"model": model.state_dict(), "theirs": theirs, "groups": groups, "unused": unused, "no_state": no_state}


def _frcrn_dir(src: Path, made: dict, *, epoch: int, step: int, drop_lr: bool, one_group: bool = False) -> None:
    """model.ckpt-E-S.pt as their solver saves it (DDP keys), Adam built as their train.py builds it."""
    src.mkdir(parents=True, exist_ok=True)
    groups = [made["groups"][0] + made["groups"][1]] if one_group else made["groups"]  # one group: not theirs
    osd = _moments(groups, torch.optim.Adam, [2.5e-4, 5e-4][:len(groups)], no_state=made["no_state"])
    if drop_lr:
        for g in osd["param_groups"]:
            del g["lr"]  # their issue #5 / PyTorch's KeyError: 'lr'
    torch.save({"model": {f"module.{k}": v for k, v in made["theirs"].items()}, "optimizer": osd, "epoch": epoch,
                "step": step}, src / f"model.ckpt-{epoch}-{step}.pt")
    (src / "last_checkpoint").write_text(f"model.ckpt-{epoch}-{step}.pt\n")


def _check_moments(state: dict, made: dict, names: dict[str, str | None], ours: dict[str, torch.Tensor]) -> int:
    """Every moment of theirs is on the parameter of ours it belongs to, in our layout; returns how many."""
    checked = 0
    for key, position in _their_position(made["groups"]).items():
        name = names[key]
        if name is None or key in made.get("unused", ()):
            assert name not in state, key  # a fixed table of ours, or a module nobody trains: no moments
            continue
        assert torch.equal(state[name]["exp_avg"], ours[name] + position), (key, name)
        assert torch.equal(state[name]["exp_avg_sq"], torch.full_like(ours[name], float(position))), (key, name)
        assert float(state[name]["step"]) == ADAM_STEPS
        checked += 1
    return checked


def test_frcrn_import_maps_every_moment_repairs_lr_and_training_goes_on(tmp_path, corpus, frcrn, caplog):
    from steadyvoice.cli import main as cli
    from steadyvoice.models.clearervoice_frcrn import official_key_to_ours

    made = frcrn
    _frcrn_dir(tmp_path / "cv", made, epoch=2, step=40, drop_lr=True)
    sets = overrides(corpus, ADAM_STEPS + 1)
    dest = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        code = cli(["ckpt", "import-clearervoice", str(tmp_path / "cv"), str(dest), "--config", str(FRCRN_RECIPE),
                    *[a for s in sets for a in ("--set", s)]])
    assert code == 0
    assert "param group 0: 'lr'=0.001, 'initial_lr'=0.001" in caplog.text  # repaired from the recipe
    assert "param group 1: 'lr'=0.001, 'initial_lr'=0.001" in caplog.text

    content = load_checkpoint(dest / "checkpoints" / f"step-{ADAM_STEPS:08d}")
    weights = content.tensors_of("model")
    for name, tensor in made["model"].items():
        assert torch.equal(weights[name], tensor), name
    optimizer = content.part_state("optimizer")
    names = {k: None if k.startswith(("stft.", "istft.")) else official_key_to_ours(k)[0]
             for g in made["groups"] for k, _ in g}
    checked = _check_moments(optimizer["state"], made, names, made["model"])
    assert checked == len(optimizer["state"]) == 698 - 2 - 2 * 32  # minus the STFT kernels, 4 unused modules x 2
    assert all(g["lr"] == 0.001 and g["initial_lr"] == 0.001 for g in optimizer["param_groups"])
    assert content.part_state("progress")["step"] == ADAM_STEPS and content.part_state("data")["epoch"] == 2
    assert "FRCRN_SE_16K model.ckpt-2-40.pt" in content.state["reason"]

    run = train_inprocess(dest, sets, recipe=FRCRN_RECIPE)
    assert run.reason == "max_steps" and run.checkpointer.restored.step == ADAM_STEPS
    state = load_checkpoint(dest / "checkpoints" / f"step-{ADAM_STEPS + 1:08d}").part_state("optimizer")["state"]
    assert float(state["unet1.encoders.0.conv.re.weight"]["step"]) == ADAM_STEPS + 1  # Adam went on counting


def test_frcrn_group_lrs_halved_by_their_rule_and_wrong_group_structure(tmp_path, corpus, frcrn, caplog):
    _frcrn_dir(tmp_path / "cv", frcrn, epoch=0, step=9, drop_lr=False)  # group 0 at 2.5e-4, group 1 at 5e-4
    with caplog.at_level(logging.WARNING):
        result = import_clearervoice(tmp_path / "cv", tmp_path / "run", config=FRCRN_RECIPE,
                                     overrides=overrides(corpus, 20))
    assert result.family == "FRCRN_SE_16K" and result.discriminator is None
    assert "halves group 0 only" in caplog.text
    content = load_checkpoint(result.checkpoint)
    assert content.part_state("schedule") == {"scale": 0.25}  # group 0's lr over the recipe's 1e-3
    assert all(g["lr"] == 2.5e-4 for g in content.part_state("optimizer")["param_groups"])

    _frcrn_dir(tmp_path / "cv1", frcrn, epoch=0, step=9, drop_lr=False, one_group=True)
    with pytest.raises(CheckpointError, match=r"groups of \[698\] parameters but their training code gives the "
                                              r"FRCRN_SE_16K network groups of \[414, 284\]"):
        import_clearervoice(tmp_path / "cv1", tmp_path / "run1", config=FRCRN_RECIPE, overrides=overrides(corpus, 20))
    assert not (tmp_path / "run1" / "config.yaml").exists()


def test_a_moment_of_the_wrong_size_is_refused_naming_the_parameter(tmp_path, corpus, frcrn):
    _frcrn_dir(tmp_path / "cv", frcrn, epoch=0, step=9, drop_lr=False)
    path = tmp_path / "cv" / "model.ckpt-0-9.pt"
    saved = torch.load(path, weights_only=True)
    first_bias = len(saved["optimizer"]["param_groups"][0]["params"])  # group 1, position 0: a bias
    saved["optimizer"]["state"][first_bias]["exp_avg"] = torch.zeros(3)
    torch.save(saved, path)
    with pytest.raises(CheckpointError, match=r"optimizer state 'exp_avg' of parameter 414 \('unet.fsmn.fsmn_re_L1."
                                              r"linear.bias', ours 'unet1.time_fsmn.layers.0.re.hidden.bias'\) has 3 "
                                              r"values but the parameter has 8"):
        import_clearervoice(tmp_path / "cv", tmp_path / "run", config=FRCRN_RECIPE, overrides=overrides(corpus, 20))
    with pytest.raises(CheckpointError, match="a FRCRN_SE_16K training checkpoint, but the config trains "
                                              "mossformergan-se"):
        import_clearervoice(tmp_path / "cv", tmp_path / "run", config=GAN_RECIPE, overrides=overrides(corpus, 20))
    assert not (tmp_path / "run" / "config.yaml").exists()


# ---- MossFormerGAN ------------------------------------------------------------------------------------------
def _gan_dir(src: Path, *, seed: int, epoch: int, step: int, discriminator: bool) -> dict:
    from steadyvoice.models import build_model
    from steadyvoice.models.clearervoice_mossformergan import (discriminator_ours_to_official,
                                                               generator_ours_to_official)
    from steadyvoice.models.mossformer_gan import MetricDiscriminator

    src.mkdir(parents=True, exist_ok=True)
    cfg = load_train_config(GAN_RECIPE)
    torch.manual_seed(seed)
    g_cfg, d_cfg = cfg.model.resolve(), cfg.gan.resolve()
    gen, disc = build_model(g_cfg), MetricDiscriminator(d_cfg)
    with torch.no_grad():  # BatchNorm statistics that differ from a fresh discriminator's
        for name, buf in disc.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buf.uniform_(0.5, 1.5)
    theirs = generator_ours_to_official(gen.state_dict(), g_cfg)  # their SyncANet order, 12 rotary tables
    # AdamW(model.parameters()): every generator entry is a parameter; the rotary tables are frozen
    groups = [list(theirs.items())]
    osd = _moments(groups, torch.optim.AdamW, [2.5e-4], no_state={k for k in theirs if k.endswith("freqs")})
    torch.save({"model": {f"module.{k}": v for k, v in theirs.items()}, "optimizer": osd, "epoch": epoch,
                "step": step}, src / f"model.ckpt-{epoch}-{step}.pt")
    pointer = f"model.ckpt-{epoch}-{step}.pt\n"
    made = {"generator": gen.state_dict(), "g_groups": groups, "discriminator": disc.state_dict()}
    if discriminator:
        d_theirs = discriminator_ours_to_official(disc.state_dict(), d_cfg)
        d_groups = [[(k, v) for k, v in d_theirs.items() if not k.endswith(BUFFERS)]]  # discriminator.parameters()
        d_osd = _moments(d_groups, torch.optim.AdamW, [5e-4])
        torch.save({"discriminator": {f"module.{k}": v for k, v in d_theirs.items()}, "optimizer_disc": d_osd,
                    "epoch": epoch, "step": step}, src / f"discriminator.ckpt-{epoch}-{step}.pt")
        pointer += f"discriminator.ckpt-{epoch}-{step}.pt\n"
        made["d_groups"] = d_groups
    (src / "last_checkpoint").write_text(pointer)
    return made


def test_gan_import_brings_the_discriminator_and_training_goes_on(tmp_path, corpus):
    from steadyvoice.models.clearervoice_mossformergan import discriminator_key_table, generator_key_table

    made = _gan_dir(tmp_path / "cv", seed=4, epoch=1, step=30, discriminator=True)
    sets = overrides(corpus, ADAM_STEPS + 1, SMALL)
    result = import_clearervoice(tmp_path / "cv", tmp_path / "run", config=GAN_RECIPE, overrides=sets)
    assert result.family == "MossFormerGAN_SE_16K" and result.discriminator.name == "discriminator.ckpt-1-30.pt"
    assert result.step == ADAM_STEPS and result.repaired == [
        "param group 0: 'initial_lr'=0.001", "param group 1: 'initial_lr'=0.001",
        "discriminator param group 0: 'initial_lr'=0.001", "discriminator param group 1: 'initial_lr'=0.001"]

    cfg = load_train_config(GAN_RECIPE)
    content = load_checkpoint(result.checkpoint)
    for part, ours in (("model", made["generator"]), ("discriminator", made["discriminator"])):
        saved = content.tensors_of(part)
        assert saved.keys() == ours.keys() and all(torch.equal(saved[k], v) for k, v in ours.items()), part
    g_names = {t: o for t, o, _ in generator_key_table(cfg.model.resolve())}
    g_state = content.part_state("optimizer")["state"]
    assert _check_moments(g_state, {"groups": made["g_groups"]}, g_names, made["generator"]) == len(g_state) > 100
    d_names = {t: o for t, o, _ in discriminator_key_table(cfg.gan.resolve())}
    d_state = content.part_state("optimizer_d")["state"]
    assert _check_moments(d_state, {"groups": made["d_groups"]}, d_names, made["discriminator"]) == len(d_state) > 20
    assert content.part_state("schedule") == {"scale": 0.25} and content.part_state("schedule_d") == {"scale": 0.5}
    assert all(g["lr"] == 5e-4 for g in content.part_state("optimizer_d")["param_groups"])

    run = train_inprocess(tmp_path / "run", sets, recipe=GAN_RECIPE)
    assert run.reason == "max_steps" and run.checkpointer.restored.step == ADAM_STEPS
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / f"step-{ADAM_STEPS + 1:08d}")
    assert last.part_state("progress")["d_skipped_steps"] == 0  # 0.5 s crops: PESQ scores them
    d_steps = {float(s["step"]) for s in last.part_state("optimizer_d")["state"].values()}
    assert d_steps == {ADAM_STEPS + 1}  # D's imported moments went on too


def test_gan_without_its_discriminator_file_starts_the_discriminator_afresh(tmp_path, corpus, caplog):
    _gan_dir(tmp_path / "cv", seed=5, epoch=3, step=12, discriminator=False)
    with caplog.at_level(logging.WARNING):
        result = import_clearervoice(tmp_path / "cv", tmp_path / "run", config=GAN_RECIPE,
                                     overrides=overrides(corpus, 20, SMALL))
    assert "no discriminator.ckpt-3-12.pt beside it: the discriminator and its optimizer start afresh" in caplog.text
    assert result.discriminator is None
    content = load_checkpoint(result.checkpoint)
    assert content.part_state("optimizer_d")["state"] == {} and content.part_state("schedule_d") == {"scale": 1.0}
    assert len(content.part_state("optimizer")["state"]) > 100


def test_their_parameter_order_is_their_training_codes_at_official_size():
    """The order derived from a state_dict equals what their train.py built (reference data from their code)."""
    from steadyvoice.models import get_config
    from steadyvoice.models.mossformer_gan import DISCRIMINATOR_CONFIGS

    frcrn = json.loads((REFERENCE / "frcrn_se_16k.state_dict_shapes.json").read_text())
    sd = {k: torch.empty(0) for k in frcrn["state_dict_shapes"]}  # 1692 keys, 868 tensors
    groups = their_parameter_groups(TRAINING_FAMILIES["FRCRN_SE_16K"].generator, sd, None)
    assert groups == [g["param_names"] for g in frcrn["optimizer_from_train_code"]["param_groups"]]
    assert groups[0][:2] == ["stft.weight", "istft.weight"]  # frozen, in group 0

    gan = json.loads((REFERENCE / "mossformergan_se_16k.state_dict_shapes.json").read_text())
    spec, counts = TRAINING_FAMILIES["MossFormerGAN_SE_16K"], gan["optimizers_from_train_code"]
    sd = {k: torch.empty(0) for k in gan["generator"]["state_dict_shapes"]}
    assert their_parameter_groups(spec.generator, sd, get_config("mossformergan-se-16k")) == [list(sd)]
    assert [g["n_tensors"] for g in counts["generator_param_groups"]] == [len(sd)]
    sd = {k: torch.empty(0) for k in gan["discriminator"]["state_dict_shapes"]}
    groups = their_parameter_groups(spec.discriminator, sd, DISCRIMINATOR_CONFIGS["mossformergan-se-16k"])
    assert [len(g) for g in groups] == [g["n_tensors"] for g in counts["discriminator_param_groups"]] == [93]
