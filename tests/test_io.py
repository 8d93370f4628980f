import pytest

from mochi.io import atomic_open, atomic_write_json, current_umask, sha256_file


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
