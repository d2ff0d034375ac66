"""Checksums of format version 3 (XXH3-128, named per file), older SHA-256 checkpoints, and the tensor files.

New checkpoints name the algorithm of every file in the manifest; checkpoints of versions 1 and 2 (SHA-256,
no name) still verify and load; a manifest naming an algorithm this version does not know is a clear error.
The safetensors files are written and read by steadyvoice.checkpoint.tensorfile: the library reads what it
writes and the other way round.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ckpt_toy import ToyTrainer, assert_same_state, seed_all
from steadyvoice.checkpoint import Checkpointer, verify_checkpoint
from steadyvoice.checkpoint.api import load_checkpoint
from steadyvoice.checkpoint.config import CheckpointConfig
from steadyvoice.checkpoint.format import MANIFEST_FILE, CorruptCheckpointError, canonical_json, pretty_json, read_manifest
from steadyvoice.checkpoint.tensorfile import read_tensors, write_tensors
from steadyvoice.cli import main as cli
from steadyvoice.errors import CheckpointError

SYNC = CheckpointConfig(keep_last=3, async_save=False)
V1 = Path(__file__).resolve().parent / "data" / "checkpoint_v1" / "step-00000010"
FILES = ["model.safetensors", "optimizer.safetensors", "state.json", "state.safetensors"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run with one checkpoint (step 3) and the trainer state it holds."""
    run = tmp_path_factory.mktemp("saved")
    seed_all(0)
    trainer = ToyTrainer()
    for _ in range(3):
        trainer.train_step()
    ckpt = Checkpointer(run, SYNC)
    trainer.save(ckpt, reason="periodic")
    ckpt.close()
    return run / "checkpoints" / "step-00000003", trainer.state_dict()


def _copy(step_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run" / "checkpoints" / step_dir.name
    shutil.copytree(step_dir, dest)
    return dest


def _rewrite_manifest(step_dir: Path, change) -> None:
    """Edit manifest.json and recompute its own digest (what a writer of that manifest would have written)."""
    data = json.loads((step_dir / MANIFEST_FILE).read_text())
    change(data)
    body = {k: v for k, v in data.items() if k != "digest"}
    data["digest"] = hashlib.sha256(canonical_json(body)).hexdigest()
    (step_dir / MANIFEST_FILE).write_bytes(pretty_json(data))


def _flip(path: Path, where: str) -> None:
    data = bytearray(path.read_bytes())
    data[{"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]] ^= 0x01
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------- format version 3
def test_new_checkpoint_names_xxh3_for_every_file_and_round_trips(saved):
    step_dir, expected = saved
    raw = json.loads((step_dir / MANIFEST_FILE).read_text())
    assert raw["format_version"] == 3
    assert sorted(raw["files"]) == FILES
    for entry in raw["files"].values():
        assert set(entry) == {"size", "algorithm", "checksum"} and entry["algorithm"] == "xxh3_128"
    seed_all(99)
    fresh = ToyTrainer(seed=7)
    assert Checkpointer(step_dir.parent.parent, SYNC).restore(fresh.parts)
    assert_same_state(fresh.state_dict(), expected)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("name", FILES)
def test_a_flipped_byte_in_any_file_is_reported(saved, tmp_path, name, where):
    step_dir = _copy(saved[0], tmp_path)
    _flip(step_dir / name, where)
    (report,) = verify_checkpoint(step_dir)
    assert [str(p) for p in report.problems] == [
        f"{step_dir / name}: XXH3-128 checksum mismatch: the file is damaged (bit flip, partial overwrite) or was replaced"]
    with pytest.raises(CorruptCheckpointError, match=f"{name}: XXH3-128 checksum mismatch"):
        load_checkpoint(step_dir)  # the loader checks the bytes it parses, not only verify


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_file_read_in_many_chunks_is_checksummed_whole(saved, tmp_path, monkeypatch, where):
    """The loader checksums each chunk on a second thread while it reads the next: with chunks of 7 bytes
    (files of 100 chunks and more) the load still gives the saved state, and a flipped byte anywhere is caught."""
    import steadyvoice.checkpoint.format as fmt

    monkeypatch.setattr(fmt, "READ_CHUNK", 7)
    step_dir, expected = saved
    assert (step_dir / "model.safetensors").stat().st_size > 100 * fmt.READ_CHUNK  # 736 bytes
    seed_all(99)
    fresh = ToyTrainer(seed=7)
    assert Checkpointer(step_dir.parent.parent, SYNC).restore(fresh.parts)
    assert_same_state(fresh.state_dict(), expected)
    damaged = _copy(step_dir, tmp_path)
    _flip(damaged / "model.safetensors", where)
    with pytest.raises(CorruptCheckpointError, match="model.safetensors: XXH3-128 checksum mismatch"):
        load_checkpoint(damaged)


def test_a_manifest_naming_an_unknown_algorithm_is_a_clear_error(saved, tmp_path, capsys):
    step_dir = _copy(saved[0], tmp_path)
    _rewrite_manifest(step_dir, lambda m: m["files"]["model.safetensors"].update(algorithm="md5"))
    message = (f"{step_dir / MANIFEST_FILE}: names a checksum algorithm this SteadyVoice does not know ('md5' for "
               "model.safetensors; it knows sha256, xxh3_128): upgrade steadyvoice to verify this checkpoint")
    with pytest.raises(CorruptCheckpointError) as info:
        read_manifest(step_dir)
    assert str(info.value) == message
    with pytest.raises(CorruptCheckpointError):
        load_checkpoint(step_dir)
    assert cli(["ckpt", "verify", str(step_dir)]) == 1
    assert capsys.readouterr().out.strip() == f"INVALID  {message}"


# ------------------------------------------------------------------------------- SHA-256 (versions 1 and 2)
def _as_version_2(step_dir: Path) -> None:
    """Rewrite a checkpoint as version 2 wrote it: state.json says 2, the manifest lists a SHA-256 per file."""
    state = json.loads((step_dir / "state.json").read_text())
    state["format_version"] = 2
    (step_dir / "state.json").write_bytes(pretty_json(state))

    def to_v2(m):
        m["format_version"] = 2
        m["files"] = {name: {"size": (step_dir / name).stat().st_size,
                             "sha256": hashlib.sha256((step_dir / name).read_bytes()).hexdigest()} for name in m["files"]}

    _rewrite_manifest(step_dir, to_v2)


def test_a_version_2_sha256_checkpoint_verifies_loads_and_detects_damage(saved, tmp_path):
    step_dir = _copy(saved[0], tmp_path)
    _as_version_2(step_dir)
    manifest = read_manifest(step_dir)
    assert manifest.format_version == 2 and {e.algorithm for e in manifest.files.values()} == {"sha256"}
    assert all(r.valid for r in verify_checkpoint(step_dir))
    fresh = ToyTrainer(seed=7)
    assert Checkpointer(step_dir.parent.parent, SYNC).restore(fresh.parts)
    assert_same_state(fresh.state_dict(), saved[1])
    _flip(step_dir / "optimizer.safetensors", "middle")
    (report,) = verify_checkpoint(step_dir)
    assert [p.message for p in report.problems] == [
        "SHA-256 checksum mismatch: the file is damaged (bit flip, partial overwrite) or was replaced"]


def test_the_version_1_fixture_verifies_and_a_flipped_byte_in_it_is_reported(tmp_path):
    assert read_manifest(V1).format_version == 1 and all(r.valid for r in verify_checkpoint(V1))
    step_dir = _copy(V1, tmp_path)
    _flip(step_dir / "model.safetensors", "last")
    with pytest.raises(CorruptCheckpointError, match="model.safetensors: SHA-256 checksum mismatch"):
        load_checkpoint(step_dir)


# ------------------------------------------------------------------------------- tensor files
def _mixed_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(5, 3, generator=g),
        "half": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(3, 2, generator=g).bfloat16(),
        "f64": torch.randn(2, generator=g, dtype=torch.float64),
        "step": torch.tensor(3.0),  # 0-d
        "index": torch.arange(5, dtype=torch.int64),
        "rng": torch.get_rng_state(),  # uint8
        "mask": torch.tensor([True, False, True]),
        "keys": torch.from_numpy(np.arange(4, dtype=np.uint32)),
        "empty": torch.zeros(0, 3),
    }


class _Bytes:
    def __init__(self):
        self.parts = []

    def write(self, data):
        self.parts.append(bytes(memoryview(data).cast("B")))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k])
                                        for k in a)


def test_tensor_files_written_here_are_read_by_safetensors_and_back(tmp_path):
    tensors = _mixed_tensors()
    out = _Bytes()
    write_tensors(out, tensors, {"format": "x"})
    path = tmp_path / "ours.safetensors"
    path.write_bytes(b"".join(out.parts))
    assert _equal(load_file(path), tensors)  # the library reads our files
    save_file(tensors, tmp_path / "theirs.safetensors", metadata={"format": "x"})
    for name in ("ours.safetensors", "theirs.safetensors"):  # and we read the library's
        buf = np.frombuffer(bytearray((tmp_path / name).read_bytes()), dtype=np.uint8)
        got = read_tensors(tmp_path / name, buf)
        assert _equal(got, tensors), name
        lo, hi = buf.ctypes.data, buf.ctypes.data + len(buf)
        for key, t in got.items():
            if t.numel():  # views of the verified bytes, each on its own storage (offset 0), as the library's
                assert lo <= t.data_ptr() < hi and t.storage_offset() == 0, key
    torch.set_rng_state(got["rng"])  # what a storage offset would break


def test_a_tensor_file_out_of_the_plain_layout_goes_to_the_library(tmp_path):
    value = torch.arange(4, dtype=torch.float32)
    header = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    header += b" " * ((2 - len(header)) % 8)  # the tensor bytes start at 2 mod 8: not aligned for a view
    raw = len(header).to_bytes(8, "little") + header + value.numpy().tobytes()
    got = read_tensors(tmp_path / "f", np.frombuffer(bytearray(raw), dtype=np.uint8))
    assert torch.equal(got["x"], value)
    with pytest.raises(CorruptCheckpointError, match=r"f: is not a valid safetensors file \("):
        read_tensors(tmp_path / "f", np.frombuffer(bytearray(raw[:-4]), dtype=np.uint8))


def test_a_tensor_type_safetensors_lacks_fails_the_save_and_leaves_nothing(tmp_path):
    seed_all(0)
    trainer = ToyTrainer()
    trainer.train_step()
    trainer.parts["odd"] = type("Odd", (), {"state_dict": lambda self: {"z": torch.zeros(2, dtype=torch.complex128)},
                                            "load_state_dict": lambda self, state: None})()
    ckpt = Checkpointer(tmp_path, CheckpointConfig(keep_last=3, async_save=True))
    trainer.save(ckpt)
    with pytest.raises(CheckpointError, match=r"cannot store tensor 'odd/z': safetensors has no type for torch.complex128"):
        ckpt.close()  # raised by the background writer, in the training thread
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no temporary directory left behind
