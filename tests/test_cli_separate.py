"""`steadyvoice separate` end to end on tiny audio: output names and formats, reruns, bad files, bad models."""

import numpy as np
import pytest
import soundfile as sf
import torch

from steadyvoice import Separator
from steadyvoice.cli import main
from steadyvoice.models import MossFormer2SSConfig, build_model, save_pretrained

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A tiny random-weight separation network: plumbing only, never a default.
TINY_SS = MossFormer2SSConfig(encoder_dim=32, model_dim=32, num_blocks=1, query_key_dim=16, rotary_dim=8,
                              fsmn_inner_dim=32, group_size=64)


@pytest.fixture(scope="module")
def ss_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return save_pretrained(build_model(TINY_SS), TINY_SS, tmp_path_factory.mktemp("tiny-ss"),
                           source={"kind": "test fixture, random weights"})


@pytest.fixture
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "a.wav", 0.1 * rng.standard_normal(8000), 16000, subtype="PCM_24")
    sf.write(root / "sub" / "b.flac", 0.1 * rng.standard_normal((15435, 2)), 22050)
    (root / "bad.wav").write_text("not audio")
    return root


def separate(capsys, *args):
    code = main(["separate", *map(str, args)])
    _, err = capsys.readouterr()
    return code, err


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_one_file_per_talker_with_the_inputs_format(tmp_path, capsys, inputs, ss_model_dir):
    out = tmp_path / "out"
    code, err = separate(capsys, inputs, "-o", out, "--checkpoint", ss_model_dir)
    assert code == 1  # bad.wav failed, the others were done
    assert errors(err) == [f"error: {inputs / 'bad.wav'}: not a readable audio file (Format not recognised.)"]
    assert "2 separated, 1 failed" in err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "a_s1.wav", "a_s2.wav", "sub/b_s1.flac", "sub/b_s2.flac"]
    for name in ("a_s1.wav", "a_s2.wav"):
        info = sf.info(out / name)
        assert (info.samplerate, info.frames, info.channels, info.format, info.subtype) == (16000, 8000, 1, "WAV", "PCM_24")
    for name in ("sub/b_s1.flac", "sub/b_s2.flac"):
        info = sf.info(out / name)
        assert (info.samplerate, info.frames, info.channels, info.format) == (22050, 15435, 2, "FLAC")
    # the files hold what the Python API returns (up to 24-bit quantisation)
    mixture, sr = sf.read(inputs / "a.wav", dtype="float32")
    talkers = Separator.from_pretrained(ss_model_dir)(mixture, sr)
    for k in range(2):
        written, _ = sf.read(out / f"a_s{k + 1}.wav", dtype="float32")
        np.testing.assert_allclose(written, talkers[k], rtol=0, atol=2e-7)


def test_rerun_skips_done_recordings_and_redoes_incomplete_ones(tmp_path, capsys, inputs, ss_model_dir):
    out = tmp_path / "out"
    inputs.joinpath("bad.wav").unlink()
    assert separate(capsys, inputs, "-o", out, "--checkpoint", ss_model_dir)[0] == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.*")}
    code, err = separate(capsys, inputs, "-o", out, "--checkpoint", ss_model_dir)
    assert code == 0 and "0 separated, 2 skipped" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.*")} == stamps
    (out / "a_s2.wav").unlink()  # an interrupted recording: one talker file missing
    code, err = separate(capsys, inputs, "-o", out, "--checkpoint", ss_model_dir)
    assert code == 0 and "1 separated, 1 skipped" in err and (out / "a_s2.wav").is_file()
    code, err = separate(capsys, inputs, "-o", out, "--checkpoint", ss_model_dir, "--overwrite")
    assert code == 0 and "2 separated, 0 failed" in err
    assert not list(out.rglob("*.tmp*")) and not list(out.rglob(".*"))  # no temporary files left


def test_list_inputs_and_outputs_that_would_replace_an_input(tmp_path, capsys, ss_model_dir):
    rng = np.random.default_rng(1)
    folder = tmp_path / "rec"
    folder.mkdir()
    for name in ("x.wav", "x_s1.wav"):
        sf.write(folder / name, 0.1 * rng.standard_normal(4000), 16000)
    (folder / "list.scp").write_text("x.wav\nx_s1.wav\n")
    code, err = separate(capsys, folder / "list.scp", "-o", folder, "--checkpoint", ss_model_dir)
    assert code == 1
    assert errors(err) == [f"error: {folder / 'x.wav'}: its output {folder / 'x_s1.wav'} would replace the input "
                           f"file {folder / 'x_s1.wav'}; choose an OUTDIR that holds no inputs"]
    assert (folder / "x_s1_s1.wav").is_file() and (folder / "x_s1_s2.wav").is_file()
    # two inputs given directly with the same name would write the same talker files
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        sf.write(tmp_path / d / "y.wav", 0.1 * rng.standard_normal(4000), 16000)
    code, err = separate(capsys, tmp_path / "d1" / "y.wav", tmp_path / "d2" / "y.wav", "-o", tmp_path / "o",
                         "--checkpoint", ss_model_dir)
    assert code == 1 and len(errors(err)) == 2 and "would also be the outputs of" in err
    assert not (tmp_path / "o" / "y_s1.wav").exists()


def test_model_problems_stop_before_any_work(tmp_path, capsys, inputs, ss_model_dir, model_dir):
    out = tmp_path / "out"
    for args, message in [
        (("--model", "default"), "is an enhancement model, not a separation model; give --model separation-default"),
        (("--checkpoint", model_dir), "mossformer2-se is an enhancement model, not a separation model"),
        (("--checkpoint", ss_model_dir, "--speakers", "3"), "the model separates 2 talkers but 3 were asked for"),
        (("--checkpoint", tmp_path / "missing"), "no such model directory"),
    ]:
        code, err = separate(capsys, inputs / "a.wav", "-o", out, *args)
        assert code == 2, args
        assert len(errors(err)) == 1 and message in err, (args, err)
    assert not list(out.iterdir())
    # and the other way round: a separation model given to enhance
    code = main(["enhance", str(inputs / "a.wav"), "-o", str(out), "--checkpoint", str(ss_model_dir)])
    assert code == 2
    assert "mossformer2-ss is a separation model, not an enhancement model" in capsys.readouterr().err
