"""The RDB reader on hand-made files: lengths, encodings, LZF, damage and what it leaves to Redis."""

from __future__ import annotations

import struct

import pytest

from ansible_collections.runbook.ops.plugins.module_utils import _redis_rdb as rdb
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError


def string(data):
    return bytes([len(data)]) + data


def rdb_file(*body, version=10, crc=None):
    data = b"REDIS%04d" % version + b"".join(body) + b"\xff"
    return data + (crc(data).to_bytes(8, "little") if crc else b"\0" * 8)


def test_lengths_of_every_width():
    assert rdb._length(b"\x05", 0) == (5, 1)
    assert rdb._length(b"\x41\x02", 0) == (0x102, 2)
    assert rdb._length(b"\x80" + struct.pack(">I", 70000), 0) == (70000, 5)
    assert rdb._length(b"\x81" + struct.pack(">Q", 2 ** 40), 0) == (2 ** 40, 9)
    with pytest.raises(ValueError):
        rdb._length(b"\x82", 0)


def test_integer_and_lzf_key_names():
    assert rdb._string(b"\xc0\xf9", 0) == (b"-7", 2)
    assert rdb._string(b"\xc1" + struct.pack("<h", 12345), 0) == (b"12345", 3)
    assert rdb._string(b"\xc2" + struct.pack("<i", -70000), 0) == (b"-70000", 5)
    # "abcabcabcabc": 3 literal bytes, then a back reference of 9 bytes, 3 back
    lzf = bytes([2]) + b"abc" + bytes([(7 << 5), 9 - 2 - 7, 2])
    assert rdb.lzf_decompress(lzf, 12) == b"abcabcabcabc"
    encoded = b"\xc3" + bytes([len(lzf), 12]) + lzf
    assert rdb._string(encoded, 0) == (b"abcabcabcabc", len(encoded))
    with pytest.raises(ValueError):
        rdb.lzf_decompress(bytes([(1 << 5), 5]), 3)  # refers before the start


def test_records_carry_db_expiry_and_the_value_bytes():
    data = rdb_file(b"\xfa" + string(b"redis-ver") + string(b"7.0.15"), b"\xfe\x03", b"\xfb\x02\x01",
                    b"\xfc" + struct.pack("<Q", 1700000000000) + b"\x00" + string(b"k1") + string(b"v1"),
                    b"\x02" + string(b"s") + b"\x02" + string(b"a") + string(b"b"))
    file = rdb.RdbFile(data)
    records = list(file.records())
    assert [r[:4] for r in records] == [(3, b"k1", 1700000000000, 0), (3, b"s", rdb.NO_EXPIRY, 2)]
    assert data[records[1][4]:records[1][5]] == b"\x02" + string(b"a") + string(b"b")


def test_a_zero_checksum_is_not_checked_and_a_wrong_one_is_refused():
    crc = rdb.crc64()
    assert crc is not None, "anycrc is in requirements.txt"
    body = b"\x00" + string(b"k") + string(b"v")
    assert rdb.RdbFile(rdb_file(body)).check(crc) == {0: 1}
    good = rdb_file(body, crc=crc)
    assert rdb.RdbFile(good).check(crc) == {0: 1}
    bad = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(OpsError, match="RDB checksum does not match"):
        rdb.RdbFile(bad).check(crc)


@pytest.mark.parametrize("body, words", [
    (b"\x07" + string(b"k") + b"\x00", "module type"),
    (b"\xf7\x01\x02", "module data"),
    (b"\x40" + string(b"k"), "unknown"),
])
def test_what_only_redis_can_read_is_left_to_it(body, words):
    with pytest.raises(rdb.Unsupported, match=words):
        list(rdb.RdbFile(rdb_file(body)).records())


def test_a_file_cut_short_or_not_an_rdb():
    data = rdb_file(b"\x00" + string(b"key") + string(b"value" * 10))
    with pytest.raises(OpsError, match="truncated or damaged"):
        list(rdb.RdbFile(data[:20]).records())
    with pytest.raises(OpsError, match="not a Redis RDB"):
        rdb.RdbFile(b"hello world")
    with pytest.raises(rdb.Unsupported, match="newer"):
        rdb.RdbFile(b"REDIS0099\xff")


def test_expiry_at_epoch_zero_or_before_is_expired_and_none_is_not():
    data = rdb_file(b"\xfc" + struct.pack("<q", -5) + b"\x00" + string(b"old") + string(b"v"),
                    b"\xfc" + struct.pack("<q", 0) + b"\x00" + string(b"zero") + string(b"v"),
                    b"\x00" + string(b"none") + string(b"v"))
    expiries = [r[2] for r in rdb.RdbFile(data).records()]
    assert expiries == [-5, 0, rdb.NO_EXPIRY]
    assert [rdb.expired_by(e, 1000) for e in expiries] == [True, True, False]


@pytest.mark.parametrize("version, readable", [("7.0.15", 10), ("7.2.4", 11), ("7.4.1", 12), ("8.0.0", 12),
                                               ("6.2.14", 9), ("5.0.7", 9), ("4.0.14", 0), ("garbage", 0)])
def test_the_rdb_version_a_server_reads(version, readable):
    assert rdb.version_of_server(version) == readable


def key(name, value=b"v" * 50, kind=b"\x00"):
    return kind + string(name) + string(value)


def function_library(name):
    return b"\xf5" + string(b"#!lua name=" + name)


@pytest.fixture
def split_small(monkeypatch):
    """check() on two cores for files of any size, with a short proof of a boundary: what big files get."""
    monkeypatch.setattr(rdb, "SPLIT_AT", 0)
    monkeypatch.setattr(rdb, "SYNC_PROOF", 300)


def three_dbs():
    """db 0, then db 3 across the middle (the child starts inside it), then db 7, functions in both halves."""
    return [b"\xfe\x00", function_library(b"a")] + [key(b"a%d" % i) for i in range(20)] + [b"\xfe\x03"] + \
        [key(b"b%d" % i) for i in range(60)] + [function_library(b"b"), b"\xfe\x07"] + [key(b"c%d" % i) for i in range(10)]


def test_the_check_on_two_cores_counts_what_one_walk_counts(split_small):
    crc = rdb.crc64()
    data = rdb_file(*three_dbs(), crc=crc)
    whole = rdb.RdbFile(data)
    assert whole._count()[0] == {0: 20, 3: 60, 7: 10}
    halves = rdb.RdbFile(data)
    assert halves.check(crc) == {0: 20, 3: 60, 7: 10}
    assert halves.halves and halves.checksummed and halves.functions == 2 and halves.end == len(data) - 8


def test_damage_or_an_unknown_type_in_the_second_half_is_reported(split_small):
    body = three_dbs()
    cut = rdb_file(*body)
    with pytest.raises(OpsError, match="truncated or damaged"):
        rdb.RdbFile(cut[:len(cut) * 3 // 4] + b"\xff" + b"\0" * 8).check(rdb.crc64())
    with pytest.raises(rdb.Unsupported, match="module type"):
        rdb.RdbFile(rdb_file(*(body[:-3] + [b"\x07" + string(b"mod") + b"\x00"] + body[-3:]))).check(rdb.crc64())


def test_a_value_that_looks_like_records_past_the_middle_does_not_fool_the_split(split_small):
    """The child's guess lands inside a value that holds RDB records of its own: this walk never lands on it,
    so it counts the second half itself."""
    fake = b"".join(key(b"f%d" % i, b"x" * 20) for i in range(40))  # 40 records' worth, inside one string value
    body = [key(b"a%d" % i) for i in range(10)] + [b"\x00" + string(b"big") + b"\x80" + struct.pack(">I", len(fake)) + fake] + \
        [key(b"z%d" % i) for i in range(3)]
    data = rdb_file(*body)
    start = data.index(fake)
    assert start < len(data) // 2 < start + len(fake) - 400  # the middle, and a proof's worth after it, are in the value
    file = rdb.RdbFile(data)
    assert file.check(rdb.crc64()) == {0: 14} and not file.halves


def test_a_db_selected_again_after_the_middle_adds_up(split_small):
    data = rdb_file(b"\xfe\x00", *[key(b"a%d" % i) for i in range(40)], b"\xfe\x00", *[key(b"b%d" % i) for i in range(10)])
    file = rdb.RdbFile(data)
    assert file.check(rdb.crc64()) == {0: 50} and file.halves


def test_a_key_name_whose_lzf_does_not_expand_is_damage_before_anything_is_written():
    lzf = bytes([(1 << 5), 5])  # a back reference before the start
    data = rdb_file(key(b"fine"), b"\x00\xc3" + bytes([len(lzf), 3]) + lzf + string(b"v"))
    with pytest.raises(OpsError, match="truncated or damaged"):
        rdb.RdbFile(data).check(rdb.crc64())


def test_a_value_that_sends_the_boundary_search_astray_costs_no_more_than_the_first_walk(monkeypatch):
    """Zero bytes parse as empty records: a fake list header in every block makes each guess walk far. The
    child gets as long as this process's own walk to name its boundary, then this walk goes on alone."""
    monkeypatch.setattr(rdb, "SPLIT_AT", 0)
    block = b"\x00" * 65000 + b"\x82"
    value = block * 64
    data = b"REDIS0010" + b"\x00" + string(b"k") + b"\x80" + struct.pack(">I", len(value)) + value + b"\xff" + b"\0" * 8
    file = rdb.RdbFile(data)
    assert file.check(rdb.crc64()) == {0: 1} and not file.halves
