

def test_written_files_get_the_usual_mode(tmp_path):
    """Atomic writes go through mkstemp (0600); the renamed result has the mode a plain open() would give."""
    import os

    from ckptmap.mapping import write_json_atomic

    path = tmp_path / "m.json"
    write_json_atomic(str(path), {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)
