"""steadyvoice.fileio: atomic replace (text, bytes, file object, file name), failure clean-up, write_all, fsync_dir."""

import errno
import os
import stat

import pytest

from steadyvoice import fileio
from steadyvoice.fileio import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_path,
    atomic_write_text,
    fsync_dir,
    write_all,
)


def disk_full():
    return OSError(errno.ENOSPC, "No space left on device")


def test_text_and_bytes_create_and_replace(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "héllo\nwörld\n")
    assert path.read_bytes() == "héllo\nwörld\n".encode("utf-8")
    atomic_write_text(path, "a\r\nb\n", newline="")  # newline="" writes the text as given
    assert path.read_bytes() == b"a\r\nb\n"
    atomic_write_text(path, "x", encoding="latin-1")
    assert path.read_bytes() == b"x"
    atomic_write_bytes(path, b"\x00\x01\xff" * 1000)
    assert path.read_bytes() == b"\x00\x01\xff" * 1000
    atomic_write_bytes(path, memoryview(bytearray(b"mv")))
    assert path.read_bytes() == b"mv"
    atomic_write_bytes(path, b"")
    assert path.read_bytes() == b""
    assert os.listdir(tmp_path) == ["a.txt"]  # no temp file left behind
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # what open() would give, not mkstemp's 0600


def test_file_object_and_file_name_writers(tmp_path):
    path = tmp_path / "b.bin"
    atomic_write(path, lambda fh: fh.write(b"binary"))
    assert path.read_bytes() == b"binary"
    atomic_write(path, lambda fh: fh.write("text ✓"), mode="w")  # text mode defaults to UTF-8
    assert path.read_text(encoding="utf-8") == "text ✓"
    seen = []

    def by_name(tmp):
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp.name.startswith(".b.bin.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"named")

    atomic_write_path(path, by_name)
    assert path.read_bytes() == b"named" and not seen[0].exists()
    assert os.listdir(tmp_path) == ["b.bin"]
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w', not 'a'"):
        atomic_write(path, lambda fh: None, mode="a")
    assert os.listdir(tmp_path) == ["b.bin"]


@pytest.mark.parametrize("exc", [disk_full(), KeyboardInterrupt(), RuntimeError("encoder failed")])
def test_failure_mid_write_keeps_the_old_file_and_removes_the_temp_file(tmp_path, exc):
    path = tmp_path / "keep.txt"
    atomic_write_text(path, "old contents\n")

    def half_then_fail(fh):
        fh.write(b"new cont")
        fh.flush()  # the partial data really is in the temp file
        raise exc

    with pytest.raises(type(exc)) as info:
        atomic_write(path, half_then_fail)
    assert info.value is exc  # propagated unchanged: each caller maps it to its own error
    assert path.read_text() == "old contents\n"
    assert os.listdir(tmp_path) == ["keep.txt"]

    def name_then_fail(tmp):
        tmp.write_bytes(b"partial")
        raise exc

    with pytest.raises(type(exc)):
        atomic_write_path(path, name_then_fail)
    assert path.read_text() == "old contents\n"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_failed_fsync_or_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "keep.bin"
    atomic_write_bytes(path, b"old")

    def boom(*args, **kwargs):
        raise disk_full()

    monkeypatch.setattr(fileio.os, "fsync", boom)
    for write in (lambda: atomic_write_text(path, "new"), lambda: atomic_write_bytes(path, b"new"),
                  lambda: atomic_write_path(path, lambda tmp: tmp.write_bytes(b"new"))):
        with pytest.raises(OSError, match="No space left on device") as info:
            write()
        assert info.value.errno == errno.ENOSPC and info.value.strerror == "No space left on device"
        assert path.read_bytes() == b"old"
        assert os.listdir(tmp_path) == ["keep.bin"]
    monkeypatch.undo()
    monkeypatch.setattr(fileio.os, "write", boom)
    with pytest.raises(OSError, match="No space left on device"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["keep.bin"]


def test_missing_parent_directory_is_an_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "no" / "such" / "dir.txt", "x")  # callers create the parent
    assert os.listdir(tmp_path) == []


def test_write_all_continues_short_writes_and_raises_enospc(tmp_path, monkeypatch):
    real_write = os.write
    calls = []

    def short(fd, data):
        calls.append(len(data))
        return real_write(fd, bytes(data)[:3])  # at most 3 bytes per call

    path = tmp_path / "short.bin"
    monkeypatch.setattr(fileio.os, "write", short)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        write_all(fd, b"0123456789")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"0123456789" and calls == [10, 7, 4, 1]

    def full(fd, data):
        real_write(fd, bytes(data)[: len(data) // 2])
        raise disk_full()

    monkeypatch.setattr(fileio.os, "write", full)
    fd = os.open(path, os.O_WRONLY)
    try:
        with pytest.raises(OSError) as info:
            write_all(fd, b"abcdef")
    finally:
        os.close(fd)
    assert info.value.errno == errno.ENOSPC


def test_fsync_dir(tmp_path):
    fsync_dir(tmp_path)
    fsync_dir(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")


def test_new_files_get_the_mode_open_would_give(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    target = tmp_path / "perm.txt"
    fileio.atomic_write_text(target, "x")
    assert (target.stat().st_mode & 0o777) == (0o666 & ~mask)


def test_a_file_name_writer_that_makes_its_own_file_still_gets_the_mode(tmp_path):
    import torch
    from safetensors.torch import save_file

    mask = os.umask(0o022)
    os.umask(mask)
    target = tmp_path / "model.safetensors"
    fileio.atomic_write_path(target, lambda tmp: save_file({"w": torch.zeros(2)}, str(tmp)))
    assert (target.stat().st_mode & 0o777) == (0o666 & ~mask)  # safetensors alone leaves 0600
