"""pytest imports test modules by basename (tests/ has no packages): two files of one name under
tests/unit and tests/integration stop the whole session at collection ("import file mismatch") —
which a run of one directory at a time never shows, and CI's one session does."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1]
