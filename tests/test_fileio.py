"""pipeline.fileio: the read-ahead's prefetch reads a byte range into the page cache and says how much it read."""

import os

import pytest

from ckptmap.pipeline import fileio


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "shard.bin"
    path.write_bytes(bytes(range(256)) * 1000)  # 256000 bytes
    return str(path)


def test_prefetch_reads_the_range(data_file):
    assert fileio.prefetch(data_file, 1000, 5000) == 5000
    assert fileio.prefetch(data_file, 0, os.path.getsize(data_file)) == 256000


def test_prefetch_past_the_end_reads_what_is_there(data_file):
    assert fileio.prefetch(data_file, 250000, 10000) == 6000
    assert fileio.prefetch(data_file, 300000, 10) == 0


def test_prefetch_of_nothing_or_a_missing_file_is_zero(data_file, tmp_path):
    assert fileio.prefetch(data_file, 0, 0) == 0
    assert fileio.prefetch(str(tmp_path / "gone.bin"), 0, 100) == 0


def test_prefetch_falls_back_to_pread_where_sendfile_is_refused(data_file, monkeypatch):
    calls = []

    def refused(*args):
        calls.append(args)
        raise OSError(22, "Invalid argument")
    monkeypatch.setattr(os, "sendfile", refused)
    monkeypatch.setattr(fileio, "PREFETCH_BLOCK", 4096)  # several reads
    assert fileio.prefetch(data_file, 100, 20000) == 20000
    assert calls  # it tried sendfile first


def test_prefetch_finishes_with_pread_after_a_short_sendfile(data_file, monkeypatch):
    real = os.sendfile

    def one_block_then_refuse(out, fd, offset, count, _state={"n": 0}):
        _state["n"] += 1
        if _state["n"] > 1:
            raise OSError(22, "Invalid argument")
        return real(out, fd, offset, count)
    monkeypatch.setattr(os, "sendfile", one_block_then_refuse)
    monkeypatch.setattr(fileio, "PREFETCH_BLOCK", 4096)
    assert fileio.prefetch(data_file, 0, 50000) == 50000
