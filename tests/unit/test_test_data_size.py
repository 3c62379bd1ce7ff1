"""The repository stays small: no file under tests/data may exceed 256 KB. (A recorded Avro
sample once took 13.6 MB — nearly all of the repository — and every schema version would have
added another; record a few covering records instead, see test_schema_compat.)"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"
LIMIT = 256 * 1024


def oversized(root: Path) -> list[str]:
    return sorted(
        f"{p.relative_to(root)}: {p.stat().st_size:,} B"
        for p in root.rglob("*")
        if p.is_file() and p.stat().st_size > LIMIT
    )


def test_no_file_under_tests_data_exceeds_256_kb():
    assert DATA.is_dir()
    too_big = oversized(DATA)
    assert not too_big, f"files over {LIMIT:,} B under tests/data: {too_big}"


def test_the_check_sees_a_large_file(tmp_path):
    (tmp_path / "ok.bin").write_bytes(b"x" * LIMIT)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "big.bin").write_bytes(b"x" * (LIMIT + 1))
    assert oversized(tmp_path) == [f"sub/big.bin: {LIMIT + 1:,} B"]
