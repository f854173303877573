"""atomic_write / atomic_path: the target holds the old content or the complete new one, never a part."""

import os

import pytest

from detlib.utils.atomic_write import atomic_path, atomic_write


def test_writes_the_complete_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with atomic_write(target, "w") as f:
        f.write("{}")
        assert not target.exists()  # nothing at the target while writing
    assert target.read_text() == "{}"
    assert os.listdir(target.parent) == ["out.json"]


def test_a_failed_write_keeps_the_old_content_and_removes_the_partial_file(tmp_path):
    target = tmp_path / "model.pth"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target) as f:
            f.write(b"new, but cut short")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.pth"]


def test_temporary_files_are_hidden_tmp_files_unless_the_extension_is_asked_for(tmp_path):
    target = tmp_path / "model.pt2"
    with atomic_path(target) as partial:
        name = os.path.basename(partial)
        assert name.startswith(".model.pt2.") and name.endswith(".tmp") and os.path.dirname(partial) == str(tmp_path)
    with atomic_path(target, keep_extension=True) as partial:
        assert partial.endswith(".tmp.pt2")
        with open(partial, "wb") as f:
            f.write(b"program")
    assert target.read_bytes() == b"program"


def test_refuses_a_read_mode_and_a_call_outside_a_with_block(tmp_path):
    with pytest.raises(ValueError, match="'r'"):
        atomic_write(tmp_path / "x", "r")
    with pytest.raises(ValueError, match="in a `with` block"):
        atomic_write(tmp_path / "x", lambda f: f.write(b"data"))  # the callback style writes nothing: refused
