"""Schema governance: every schemas/*.avsc must stay backward compatible — a reader with the
current schema must read data written with every earlier recorded version.

Evolution rules (Avro schema resolution): add a field only with a default; remove a field only if
it had one; never change a field's type except by Avro promotion (int→long→float→double,
string↔bytes) or by widening a union; never remove enum symbols or rename without aliases.

Recorded samples: ``tests/data/schema_samples/<schema>/<fingerprint>.avro`` are Avro container
files (they embed their writer schema), one per schema version, of two or three small records
that reach every field and every union branch (``samples``: Avro resolution is lazy, so a field
no record reaches is never checked; ``test_the_samples_exercise_every_field_and_branch`` proves
each sample catches a field added without a default, a retyped field and a removed union branch
anywhere in the schema). A few KB each; no file under tests/data may exceed 256 KB. When a
schema changes, record a sample of the new version (the old ones stay) with

    .venv/bin/python -m tests.unit.test_schema_compat --record

and ``test_current_version_has_a_recorded_sample`` reminds you if you forget. Besides the
samples, the working copy is checked against the last committed version (``git show HEAD:``).
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = sorted((ROOT / "schemas").glob("*.avsc"))
SAMPLES = ROOT / "tests" / "data" / "schema_samples"


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def fp(schema: dict) -> str:
    return fingerprint(to_parsing_canonical_form(fastavro.parse_schema(schema)), "CRC-64-AVRO")


# Avro primitive type → a small value that differs per variant (ASCII bytes: the attribute unions
# list ``string`` before ``bytes``, and under schema resolution a writer's ``bytes`` resolves to
# the reader's first matching branch, ``string``, so non-UTF-8 bytes would not resolve. tailsift's
# own readers use the writer schema and are not affected; a consumer resolving attribute bytes
# values with another schema version would be — noted for the evolution rules).
_PRIMITIVES = {
    "null": lambda v: None,
    "boolean": lambda v: v % 2 == 1,
    "int": lambda v: v,
    "long": lambda v: 1_700_000_000_000_000_000 + v,
    "float": lambda v: v + 0.5,
    "double": lambda v: v + 0.25,
    "string": lambda v: f"s{v}",
    "bytes": lambda v: b"b%d" % v,
}


class _Covering:
    """Small records that exercise every field and every union branch of a schema.

    Avro schema resolution is lazy: a reader checks a field only when it reads a value of it, so
    a field inside an empty array, or a union branch no record takes, is never checked — a random
    sample must be large to reach them all (the first recorded ``KeptTrace`` sample was 13.6 MB).
    Here each array (and map) holds one element per variant its item type needs, and element
    ``j`` takes branch ``j`` of every union in it, so a few records reach every field and branch
    (``test_the_samples_exercise_every_field_and_branch`` proves it)."""

    def __init__(self, schema: dict):
        self.named: dict[str, dict] = {}
        fastavro.parse_schema(schema, named_schemas={})  # validates
        self._collect(schema, schema.get("namespace", ""))

    def _collect(self, t, ns: str) -> None:
        if isinstance(t, list):
            for b in t:
                self._collect(b, ns)
        elif isinstance(t, dict):
            kind = t["type"]
            if kind in ("record", "enum", "fixed"):
                ns = t.get("namespace", ns)
                self.named[t["name"]] = t
                self.named[f"{ns}.{t['name']}" if ns else t["name"]] = t
            for f in t.get("fields", ()):
                self._collect(f["type"], ns)
            for k in ("items", "values"):
                if k in t:
                    self._collect(t[k], ns)
            if isinstance(kind, (dict, list)):
                self._collect(kind, ns)

    def _resolve(self, t):
        if isinstance(t, str) and t in self.named:
            return self.named[t]
        if isinstance(t, dict) and isinstance(t["type"], (dict, list)):
            return t["type"]
        if isinstance(t, dict) and t["type"] in _PRIMITIVES and len(t) == 1:
            return t["type"]
        return t

    def variants(self, t) -> int:
        """How many elements an array of ``t`` needs so that every union branch directly inside
        ``t`` (not inside a further array or map, which cover themselves) is taken once."""
        t = self._resolve(t)
        if isinstance(t, list):
            return max(len(t), *(self.variants(b) for b in t))
        if isinstance(t, dict) and t["type"] == "record":
            return max([1, *(self.variants(f["type"]) for f in t["fields"])])
        return 1

    def value(self, t, v: int):
        t = self._resolve(t)
        if isinstance(t, list):
            return self.value(t[v % len(t)], v)
        if isinstance(t, str):
            return _PRIMITIVES[t](v)
        kind = t["type"]
        if kind == "record":
            return {f["name"]: self.value(f["type"], v) for f in t["fields"]}
        if kind == "enum":
            return t["symbols"][v % len(t["symbols"])]
        if kind == "fixed":
            return bytes([v % 256]) * t["size"]
        if kind == "array":
            return [self.value(t["items"], j) for j in range(self.variants(t["items"]))]
        if kind == "map":
            return {f"k{j}": self.value(t["values"], j) for j in range(self.variants(t["values"]))}
        return _PRIMITIVES[kind](v)


def samples(schema: dict) -> list:
    """Two or more small records (as many as the top-level unions need) covering every field."""
    covering = _Covering(schema)
    return [covering.value(schema, v) for v in range(max(2, covering.variants(schema)))]


def readable_by(writer: dict, reader: dict) -> None:
    """Raise if data written with ``writer`` cannot be read with ``reader``."""
    records = samples(writer)
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(writer), records)
    buf.seek(0)
    assert len(list(fastavro.reader(buf, reader_schema=fastavro.parse_schema(reader)))) == len(records)


def record(path: Path) -> Path:
    schema = load(path)
    out = SAMPLES / path.stem / f"{fp(schema)}.avro"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as fh:
            fastavro.writer(fh, fastavro.parse_schema(schema), samples(schema))
    return out


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.stem)
def test_recorded_samples_of_every_version_read_with_the_current_schema(path):
    reader = fastavro.parse_schema(load(path))
    samples = sorted((SAMPLES / path.stem).glob("*.avro"))
    assert samples, f"no recorded samples for {path.name}: run python -m tests.unit.test_schema_compat --record"
    for sample in samples:
        with open(sample, "rb") as fh:
            assert list(fastavro.reader(fh, reader_schema=reader)), sample.name


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.stem)
def test_current_version_has_a_recorded_sample(path):
    assert (SAMPLES / path.stem / f"{fp(load(path))}.avro").exists(), (
        f"{path.name} changed: record a sample of the new version (python -m tests.unit.test_schema_compat --record)"
    )


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.stem)
def test_working_copy_reads_the_last_committed_version(path):
    rel = path.relative_to(ROOT).as_posix()
    got = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=ROOT, capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"{rel} is not committed yet")
    readable_by(json.loads(got.stdout), load(path))


def test_the_check_catches_a_breaking_change():
    old = load(ROOT / "schemas" / "dead_letter.v1.avsc")
    compatible = {**old, "fields": old["fields"] + [{"name": "added", "type": "string", "default": ""}]}
    readable_by(old, compatible)
    breaking = {**old, "fields": old["fields"] + [{"name": "added", "type": "string"}]}  # no default
    with pytest.raises(Exception):
        readable_by(old, breaking)
    retyped = {**old, "fields": [{**f, "type": "int"} if f["name"] == "detail" else f for f in old["fields"]]}
    with pytest.raises(Exception):
        readable_by(old, retyped)


_RETYPED = {"type": "enum", "name": "RetypedForTheTest", "symbols": ["X"]}  # nothing resolves to it


def _places(node, path=()):
    """Paths (into the schema JSON) of every record definition, field and union."""
    if isinstance(node, list):
        yield "union", path
        for i, branch in enumerate(node):
            yield from _places(branch, (*path, i))
    elif isinstance(node, dict):
        if node.get("type") == "record":
            yield "record", path
            for i, f in enumerate(node["fields"]):
                yield "field", (*path, "fields", i)
                yield from _places(f["type"], (*path, "fields", i, "type"))
        for k in ("items", "values"):
            if k in node:
                yield from _places(node[k], (*path, k))
        if isinstance(node.get("type"), (dict, list)):
            yield from _places(node["type"], (*path, "type"))


def mistakes(schema: dict):
    """(what, reader schema): each one mistake the compatibility check must catch — a field added
    without a default to each record, each field retyped, each union branch removed."""
    for kind, path in _places(schema):
        variants = [None] if kind != "union" else _unpromotable(_at(schema, path))
        for branch in variants:
            # Without defaults: the sample's writer has every field, so a reader never uses them,
            # and a retyped field's old default would make the mutant an invalid schema.
            mutant = _without_defaults(copy.deepcopy(schema))
            node = _at(mutant, path)
            if kind == "record":
                node["fields"].append({"name": "added_without_default", "type": "string"})
                what = f"{node['name']}: a field added without a default"
            elif kind == "field":
                node["type"] = _RETYPED
                what = f"{'.'.join(map(str, path))} ({node['name']}) retyped"
            else:
                what = f"{'.'.join(map(str, path))}: union without {json.dumps(node[branch])[:40]}"
                del node[branch]
            yield what, mutant


# Avro promotions: a writer's value of the key type resolves to a reader branch of these types, so
# removing its branch while one of them stays is a compatible change, not a mistake.
_PROMOTES = {"int": {"long", "float", "double"}, "long": {"float", "double"}, "float": {"double"}}
_PROMOTES |= {"string": {"bytes"}, "bytes": {"string"}}


def _unpromotable(union: list) -> list[int]:
    """Indexes of the branches whose removal breaks readers (no other branch takes their values)."""
    names = {b for b in union if isinstance(b, str)}
    return [i for i, b in enumerate(union) if not (isinstance(b, str) and _PROMOTES.get(b, set()) & names)]


def _without_defaults(node):
    if isinstance(node, list):
        for branch in node:
            _without_defaults(branch)
    elif isinstance(node, dict):
        for f in node.get("fields", ()):
            f.pop("default", None)
            _without_defaults(f["type"])
        for k in ("items", "values", "type"):
            if isinstance(node.get(k), (dict, list)):
                _without_defaults(node[k])
    return node


def _at(schema, path):
    for part in path:
        schema = schema[part]
    return schema


def missed_mistakes(schema: dict, sample: bytes) -> tuple[list[str], int]:
    """The mistakes (see ``mistakes``) that reading ``sample`` with the mistaken schema does not
    catch, and how many it catches. Mistakes that are not valid schemas (retyping the one
    definition of a named type used elsewhere) are left out."""
    missed, caught = [], 0
    for what, reader in mistakes(schema):
        try:
            parsed = fastavro.parse_schema(reader)
        except Exception:  # noqa: BLE001 - not a valid schema: not a mistake a writer could make
            continue
        try:
            list(fastavro.reader(io.BytesIO(sample), reader_schema=parsed))
        except Exception:  # noqa: BLE001 - any resolution error is the catch we want
            caught += 1
            continue
        missed.append(what)
    return missed, caught


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.stem)
def test_the_samples_exercise_every_field_and_branch(path):
    """A small sample keeps the check's power only if its records reach every field: Avro
    resolution checks a field when it reads a value of it, so a retyped field inside an array that
    is empty in every sample record would pass. Each mistake — a field added without a default to
    any record, any field retyped, any union branch removed — must make reading the recorded
    sample of the current version fail."""
    sample = SAMPLES / path.stem / f"{fp(load(path))}.avro"
    missed, caught = missed_mistakes(load(path), sample.read_bytes())
    assert not missed, f"{sample.name} reads despite: {missed}"
    assert caught >= 5


def test_the_exercise_check_fails_on_a_sample_that_misses_fields():
    """A KeptTrace sample whose records have no batches (as a small random sample may) cannot
    catch a mistake inside SpanBatch or Span: the check above says so."""
    schema = load(ROOT / "schemas" / "kept_trace.v1.avsc")
    records = [{**r, "batches": []} for r in samples(schema)]
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), records)
    missed, _ = missed_mistakes(schema, buf.getvalue())
    assert "SpanBatch: a field added without a default" in missed
    assert "Span: a field added without a default" in missed
    assert any("(service) retyped" in m for m in missed)


def test_recorded_samples_are_small():
    """The samples are a few records each (the first KeptTrace sample was 13.6 MB of random data)."""
    for sample in SAMPLES.glob("*/*.avro"):
        with open(sample, "rb") as fh:
            assert len(list(fastavro.reader(fh))) <= 8, sample


if __name__ == "__main__" and "--record" in sys.argv:
    for p in SCHEMAS:
        print(record(p).relative_to(ROOT))
