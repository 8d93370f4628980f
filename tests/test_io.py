import pytest

from mochi.errors import MochiError
from mochi.io import atomic_open, atomic_write_json, current_umask, read_jsonl, sha256_file


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fh:
            fh.write("half")
            raise RuntimeError("boom")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_sha256_file(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    # Results are read by colleagues: the mode is what any new file gets, not mkstemp's 0600.
    import os

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_json(tmp_path / "r.json", {"a": 1})
        plain = tmp_path / "plain"
        plain.write_text("x")
    finally:
        os.umask(old)
    mode = (tmp_path / "r.json").stat().st_mode & 0o777
    assert mode == 0o666 & ~umask == plain.stat().st_mode & 0o777


def _failing(exc):
    def fail(*args, **kwargs):
        raise exc

    return fail


@pytest.mark.parametrize(
    "exc, message",
    [
        (OSError(28, "No space left on device"), "no space left on its disk"),
        (OSError(30, "Read-only file system"), "read-only or not yours"),
    ],
)
def test_a_failed_write_keeps_the_previous_file_and_says_why(tmp_path, monkeypatch, exc, message):
    import os

    from mochi.errors import MochiError

    target = tmp_path / "record.json"
    atomic_write_json(target, {"good": 1})
    monkeypatch.setattr(os, "fsync", _failing(exc))
    with pytest.raises(MochiError, match=f"cannot write {target}: .*{message}.*previous file .* unchanged"):
        atomic_write_json(target, {"new": 2})
    assert target.read_text() == '{\n  "good": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_torch_save_cut_short_by_a_full_disk_is_named(tmp_path, monkeypatch):
    import torch

    from mochi.errors import MochiError
    from mochi.io import atomic_torch_save

    monkeypatch.setattr(
        torch, "save", _failing(RuntimeError("[enforce fail at inline_container.cc] unexpected pos 64"))
    )
    with pytest.raises(MochiError, match="most likely a full disk.*nothing was written"):
        atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "ckpt.pth")
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_folder_is_named(tmp_path, monkeypatch):
    import tempfile

    from mochi.errors import MochiError

    monkeypatch.setattr(tempfile, "mkstemp", _failing(PermissionError(13, "Permission denied")))
    with pytest.raises(MochiError, match="cannot write .*x.json: Permission denied .*writable folder"):
        atomic_write_json(tmp_path / "x.json", {})


def test_read_jsonl_drops_only_a_torn_last_line(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3, "b"')  # killed mid-write
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert "torn last line" in caplog.text
    path.write_text('{"a": 1}\n{broken\n{"a": 3}\n')
    with pytest.raises(MochiError, match="metrics.jsonl line 2 is not JSON"):
        read_jsonl(path)
