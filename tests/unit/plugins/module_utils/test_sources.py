"""Reading backups whoever made them: layer detection, openssl key derivations, checksums, truncation."""

from __future__ import annotations

import gzip
import os
import subprocess

import pytest
import zstandard

from ansible_collections.runbook.ops.plugins.module_utils import _sources as src
from ansible_collections.runbook.ops.plugins.module_utils._artifacts import codec
from ansible_collections.runbook.ops.plugins.module_utils._errors import OpsError

SQL = ("--\n-- PostgreSQL database dump\n--\n" + "INSERT INTO t VALUES (1, 'Zoë');\n" * 20000 +
       "--\n-- PostgreSQL database dump complete\n--\n").encode()


def plaintext(path, **secrets):
    source = src.Source(str(path), str(path))
    data = b"".join(source.plaintext(codec.Secrets(secrets or None)))
    return data, source


def test_pigz_style_concatenated_gzip_members_and_multi_frame_zstd_decode_whole(tmp_path):
    half = len(SQL) // 2
    (tmp_path / "a.sql.gz").write_bytes(gzip.compress(SQL[:half]) + gzip.compress(SQL[half:]))
    frames = zstandard.ZstdCompressor().compress(SQL[:half]) + zstandard.ZstdCompressor().compress(SQL[half:])
    (tmp_path / "a.sql.zst").write_bytes(frames)
    for name, layer in (("a.sql.gz", "gzip"), ("a.sql.zst", "zstd")):
        data, source = plaintext(tmp_path / name)
        assert data == SQL and source.layers == [layer]
        assert codec.content_kind(data[:4096]) == "text"


@pytest.mark.parametrize("kdf, expected", [(["-pbkdf2"], "pbkdf2-sha256 (10000 iterations)"),
                                           (["-pbkdf2", "-iter", "10000"], "pbkdf2-sha256 (10000 iterations)"),
                                           (["-md", "md5"], "EVP_BytesToKey-md5"),
                                           ([], "EVP_BytesToKey-sha256")])
def test_openssl_enc_files_decrypt_with_each_key_derivation(tmp_path, kdf, expected):
    (tmp_path / "b.sql.gz").write_bytes(gzip.compress(SQL))
    env = dict(os.environ, PASS="s3cret phrase")
    subprocess.run(["openssl", "enc", "-aes-256-cbc", "-salt", *kdf, "-pass", "env:PASS", "-in", str(tmp_path / "b.sql.gz"),
                    "-out", str(tmp_path / "b.sql.gz.enc")], env=env, check=True, capture_output=True)
    data, source = plaintext(tmp_path / "b.sql.gz.enc", passphrase="s3cret phrase")
    assert data == SQL
    assert source.layers == ["openssl-aes-256-cbc/" + expected, "gzip"]
    with pytest.raises(OpsError, match="wrong passphrase"):
        plaintext(tmp_path / "b.sql.gz.enc", passphrase="not it")


def test_truncated_gzip_and_zstd_are_refused(tmp_path):
    (tmp_path / "c.sql.gz").write_bytes(gzip.compress(SQL)[:-100])
    (tmp_path / "c.sql.zst").write_bytes(zstandard.ZstdCompressor().compress(SQL)[:-100])
    for name in ("c.sql.gz", "c.sql.zst"):
        with pytest.raises(OpsError, match="truncated|damaged"):
            plaintext(tmp_path / name)


def test_a_sidecar_mismatch_is_reported_as_a_checksum_failure(tmp_path):
    path = tmp_path / "d.sql.gz"
    path.write_bytes(gzip.compress(SQL))
    (tmp_path / "d.sql.gz.md5").write_text("0123456789abcdef0123456789abcdef  d.sql.gz\n")
    with pytest.raises(OpsError, match="checksum mismatch .* md5 .* sidecar"):
        plaintext(path)
    source = src.Source(str(path), str(path))
    assert source.checksum_origin == "sidecar" and source.expected == {"md5": "0123456789abcdef0123456789abcdef"}


def test_content_kinds():
    assert codec.content_kind(b"PGDMP\x01\x0e\x00") == "custom"
    assert codec.content_kind(b"REDIS0011") == "rdb"
    assert codec.content_kind(b"x" * 257 + b"ustar\x0000" + b"\0" * 100) == "tar"
    assert codec.content_kind(os.urandom(4096)) is None
    assert codec.content_kind(b"") is None
