"""The one list-file parser (steadyvoice.listfile) and the two commands that read lists through it."""

from pathlib import Path

import pytest

from steadyvoice.data.lists import collect_paths, read_pair_list
from steadyvoice.errors import DataError, Problem
from steadyvoice.listfile import ListFileError, read_list, resolve_listed


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_comments_blank_lines_and_line_numbers(tmp_path):
    lst = tmp_path / "lists" / "a.scp"
    touch(lst)
    lst.write_text("# header\n\n   \n  # indented comment\nclips/one.wav 1.5\n\tclips/two.wav\n")
    entries = read_list(lst)
    assert [(e.line, e.path, e.fields) for e in entries] == [
        (5, lst.parent / "clips" / "one.wav", ("clips/one.wav", "1.5")),
        (6, lst.parent / "clips" / "two.wav", ("clips/two.wav",)),
    ]


def test_a_hash_inside_a_line_is_not_a_comment(tmp_path):
    lst = tmp_path / "a.txt"
    lst.write_text("take#2.wav\nthree.wav # note\n")
    entries = read_list(lst)
    assert [e.path.name for e in entries] == ["take#2.wav", "three.wav"]
    assert entries[1].fields == ("three.wav", "#", "note")  # extra columns: a single-path list ignores them


def test_relative_paths_are_relative_to_the_list_not_the_working_directory(tmp_path, monkeypatch):
    lst = tmp_path / "deep" / "dir" / "a.scp"
    touch(lst)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    lst.write_text(f"x.wav\n../y.wav\n{tmp_path / 'abs.wav'}\n~/z.wav\n~nosuchuser/w.wav\n")
    assert [e.path for e in read_list(lst)] == [
        lst.parent / "x.wav", lst.parent / ".." / "y.wav", tmp_path / "abs.wav", tmp_path / "home" / "z.wav",
        lst.parent / "~nosuchuser" / "w.wav",  # an unknown ~user stays a relative path (pathlib would raise)
    ]
    assert resolve_listed(lst, "q.wav") == lst.parent / "q.wav"


def test_a_whole_line_naming_an_existing_file_is_one_path(tmp_path):
    spaced = touch(tmp_path / "two words.wav")
    lst = tmp_path / "a.scp"
    lst.write_text("two words.wav\nmissing words.wav\n")
    first, second = read_list(lst)
    assert (first.path, first.fields) == (spaced, ("two words.wav",))
    assert (second.path, second.fields) == (tmp_path / "missing", ("missing", "words.wav"))  # not a file: columns


def test_byte_order_mark_and_crlf(tmp_path):
    lst = tmp_path / "a.txt"
    lst.write_bytes(b"\xef\xbb\xbfa.wav\r\n# c\r\nb.wav\r\n")
    assert [(e.line, e.path.name) for e in read_list(lst)] == [(1, "a.wav"), (3, "b.wav")]


def test_unreadable_list_names_the_file(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ListFileError) as info:
        read_list(bad)
    assert info.value.problem == Problem(bad, "cannot read list file (not a UTF-8 text file)")
    assert str(info.value) == f"{bad}: cannot read list file (not a UTF-8 text file)"
    assert isinstance(info.value, DataError)
    with pytest.raises(ListFileError, match=r"nope\.scp: cannot read list file \(No such file or directory\)"):
        read_list(tmp_path / "nope.scp")


# ---- the training side: the same rules through steadyvoice.data.lists


def test_training_lists_use_the_same_rules(tmp_path, monkeypatch):
    lst = tmp_path / "lists" / "clean.txt"
    touch(lst)
    monkeypatch.chdir(tmp_path)
    lst.write_text("# clean speech\nspk1/a#1.wav 2.0\n\nspk2/b.wav\n")
    assert collect_paths([str(lst)], "clean") == [lst.parent / "spk1" / "a#1.wav", lst.parent / "spk2" / "b.wav"]


def test_pair_list_errors_name_the_file_and_line(tmp_path):
    lst = tmp_path / "pairs.scp"
    lst.write_text("# noisy clean duration\nn1.wav c1.wav 1.2\n\nn2.wav\n")
    with pytest.raises(DataError, match=rf"^{lst}, line 4: 1 field\(s\); a pair list line is"):
        read_pair_list(str(lst))
    lst.write_text("n1.wav c/1.wav\n")
    assert read_pair_list(str(lst)) == [(tmp_path / "n1.wav", tmp_path / "c" / "1.wav")]
