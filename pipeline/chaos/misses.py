"""Why each error trace that was not kept was missed: its decision record (time, partition) against
when and where each of its messages was written (the suite's delivery reports, ``truth.Send``),
when its re-keyed copies reached the trace's partition (their Kafka timestamps), who read those
partitions then (the workers' logs and the harness's kills) and the broker's outages.

Judged from outside only, like the rest of the suite: nothing here asks the job.

**What the sampler does not promise** (README "Guarantees", "Sampling semantics") — such a trace is
counted apart, and checked for what is promised instead:

- ``held``: every on-time ERROR message of the trace reached the input topic ``HELD_S`` or more
  after its CreateTime — its producer held it (through a broker outage). The read times the
  decisions wait for are in Kafka time; a message stamped that long before it is in the log can be
  passed by them before it arrives ("Not covered" in Sampling semantics). Checked instead: the
  trace has one decision and none of its spans is in ``traces.kept`` (a late span of a dropped
  trace is dropped).
- ``bound``: the hard bound, which keeps a partition read far behind (a killed worker's, unread
  until the group moves it; its own, re-read from its low watermark after every move) from
  stalling decisions, let the trace go on what its reader had read. Shown from outside in one of
  two ways: (a) it was decided ``backlog_wait_factor`` × ``decision_wait`` or more after its first
  message reached its partition, and its ERROR spans reached that partition (a copy's timestamp is
  when it was re-keyed) only after the decision; or (b) it was decided that long after its partition
  was assigned to the reader that decided it — the bound counts from when that reader first read
  the trace, no earlier than the assignment — and at most ``BOUND_SLACK_S`` more (a decision the
  read times released at another moment is not excused): the ERROR spans were in the partition,
  but behind what the reader had read (a dropped trace with its ERROR span read would have been
  kept). Checked instead: not decided before that bound. A decision record that names its trigger
  (``trigger``, added to ``trace_decision.v1``) settles it: ``backlog_limit`` is the hard bound,
  any other trigger is not, and (a) and (b) are inferred only for records without one.
- ``buffer``: decided drop at the buffer bound (trigger ``backlog_bound`` or ``memory_bound``, read
  from the decision record): the input is paused there and the decision falls back to the worker's
  clock, so a trace whose messages straddle the pause can be decided before its tail — with its
  ERROR span — is read (README "Bounded memory", the stated fallback). Shown, not judged: the
  overload scenario judges ``memory_bound`` decisions on their own ("decisions forced early").

Every other miss is the job's — a drop with any other trigger (``decision_wait``, ``root_quiet``,
``backlog_read``, …) whose error is not shown held by its producer. The classes the report prints,
first match: ``held by its producer``, ``decided at the buffer bound before its error was read
(…)``, ``decided at the hard bound, error not read by then``, ``error arrived after the
decision`` (decided before the bound, its error not there yet: the read times let it go), ``error
arrived before the decision, above an aborted transaction`` (see ``ABORTED_BELOW``), ``error arrived
before the decision`` (it was there to be read), ``error copy not found``.

``ABORTED_BELOW``: the error's message sat in the trace's partition above a record of a transaction
that was aborted, written up to ``ABORTED_WINDOW_S`` before it — a worker killed mid-transaction,
whose transaction stayed open until fenced or timed out. While it was open the partition's
``read_committed`` end offset (its last stable offset) stayed below the error's message, though the
commit that wrote the message was visible; the group's read time takes that end offset as
"every copy those commits wrote lies below it" (``pipeline.kafka.read_times``, step 2). Shown, not
excused: it is the job's miss.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, TopicPartition
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from pipeline.chaos.truth import Send, digest
from pipeline.kafka import clients

# a message in the log this long after its CreateTime waited in its producer: the read times allow
# 1 s (pipeline.kafka.read_times.CAUGHT_UP_MARGIN_MS), and a delivery report seen on a loaded
# machine trails the write by up to about a second more
HELD_S = 2.0
# (b) of ``bound``: the hard bound fires when the reader has held the trace that long; it first read
# it after the assignment (the trace's oldest message is read first when it holds the committed
# offset, as the traces a worker holds across moves do) — a decision later than this after the
# bound is not taken for the bound
BOUND_SLACK_S = 30.0
ABORTED_BELOW = "error arrived before the decision, above an aborted transaction"
# a killed worker's transaction stays open until its restart fences it or the coordinator times it
# out (transaction.timeout.ms 10 s, checked every 10 s): what was written that long before the error
# may have held the partition's stable offset below it
ABORTED_WINDOW_S = 20.0
_LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ tailsift: partitions (assigned|revoked|lost): \[([\d, ]*)\]"
)


@dataclass
class Miss:
    trace_id: bytes
    cls: str
    line: str


class Owners:
    """Who read each input partition when: from the workers' "partitions assigned / revoked / lost"
    log lines and the harness's kills (a killed or exited worker owns nothing)."""

    def __init__(self, workers) -> None:  # noqa: ANN001 - fleet.Worker
        events: list[tuple[int, str, str, list[int]]] = []
        for w in workers:
            for t, kind in w.events:
                if kind in ("kill", "exit"):
                    events.append((t, w.name, "gone", []))
            if not Path(w.log_path).exists():
                continue
            for line in Path(w.log_path).read_text(errors="replace").splitlines():
                m = _LOG_LINE.match(line)
                if m:
                    t = int(datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp() * 1e9)
                    parts = [int(x) for x in m[3].replace(" ", "").split(",") if x]
                    events.append((t, w.name, m[2], parts))
        events.sort(key=lambda e: e[0])
        self._timeline: dict[int, list[tuple[int, str | None]]] = {}
        owned: dict[str, set[int]] = {}
        for t, name, kind, parts in events:
            mine = owned.setdefault(name, set())
            if kind == "assigned":
                for p in parts:
                    mine.add(p)
                    self._timeline.setdefault(p, []).append((t, name))
            else:
                for p in parts if kind != "gone" else list(mine):
                    if p in mine:
                        mine.discard(p)
                        self._timeline.setdefault(p, []).append((t, None))

    def at(self, partition: int, t_ns: int) -> str | None:
        owner = None
        for t, name in self._timeline.get(partition, ()):
            if t > t_ns:
                break
            owner = name
        return owner

    def since(self, partition: int, t_ns: int) -> tuple[str, int] | None:
        """Who read ``partition`` at ``t_ns`` and since when it held it (ns), None when nobody did."""
        held = None
        for t, name in self._timeline.get(partition, ()):
            if t > t_ns:
                break
            held = (name, t) if name is not None else None
        return held

    def unowned_s(self, partition: int, t0: int, t1: int) -> float:
        """Seconds of [t0, t1] in which nobody read ``partition``."""
        total, owner, since = 0, self.at(partition, t0), t0
        for t, name in self._timeline.get(partition, ()):
            if t <= t0:
                continue
            if t >= t1:
                break
            if owner is None:
                total += t - since
            owner, since = name, t
        if owner is None:
            total += t1 - since
        return total / 1e9


EXCUSED = {
    "held": "held by its producer",
    "bound": "decided at the hard bound, error not read by then",
    "buffer": "decided at the buffer bound before its error was read (stated fallback, README 'Bounded memory')",
}
# the decision points at the buffer bound, where the input is paused (operators.assemble)
BUFFER_BOUND_TRIGGERS = ("backlog_bound", "memory_bound")
HARD_BOUND_TRIGGER = "backlog_limit"


def trigger_of(records: list[dict]) -> str:
    """The trigger of a trace's first decision ("" when its record predates the field)."""
    return min(records, key=lambda r: r["decided_at_unix_nano"]).get("trigger", "") if records else ""


def copies(bootstrap: str, topic: str, wanted: dict[int, set[bytes]], timeout: float = 120) -> dict[bytes, list]:
    """Per trace ID, the committed messages that hold its spans on the partitions asked
    (``wanted``: partition → trace IDs): (partition, offset, CreateTime ms, value digest, the IDs
    of its spans of the trace in it — empty where the value is not OTLP protobuf) — its own messages
    and the job's re-keyed copies of the others. Found by key (a message keyed by the trace: its
    own, or the copy of a trace re-keyed alone) or by content: the job writes one copy per
    destination partition, and a copy of several traces carries no key (README "Re-keying")."""
    out: dict[bytes, list] = {}
    for msg in _read_partitions(bootstrap, topic, set(wanted), "read_committed", timeout):
        key, value = msg.key(), msg.value() or b""
        for tid in wanted.get(msg.partition(), ()):
            # an OTLP message carries a span's trace ID as its 16 raw bytes: a cheap filter first
            if tid != key and tid not in value:
                continue
            ids = _span_ids(value, tid)
            if ids or tid == key:
                out.setdefault(tid, []).append((msg.partition(), msg.offset(), msg.timestamp()[1], digest(value), ids))
    return out


def _span_ids(value: bytes, trace_id: bytes) -> frozenset[bytes]:
    """The IDs of ``trace_id``'s spans in an OTLP protobuf request (empty when it is not one)."""
    try:
        req = ExportTraceServiceRequest.FromString(value)
    except Exception:  # noqa: BLE001 - an Avro SpanBatch or hostile bytes: no OTLP spans
        return frozenset()
    return frozenset(
        sp.span_id for rs in req.resource_spans for ss in rs.scope_spans for sp in ss.spans if sp.trace_id == trace_id
    )


def _holds(entry: tuple, s: Send) -> bool:
    """Whether the message ``entry`` (``copies``) holds the spans ``s`` wrote: the same bytes (its own
    message, an Avro copy, a single-trace OTLP message moved whole), or every span of it (an OTLP
    copy, of one trace or of several bound for one partition)."""
    return entry[3] == s.digest or (bool(s.span_ids) and s.span_ids <= entry[4])


def aborted(bootstrap: str, topic: str, partitions: set[int], timeout: float = 120) -> dict[int, list[tuple[int, int]]]:
    """Per partition, the records of aborted (or still open) transactions: (offset, CreateTime ms) —
    in the log (``read_uncommitted``) but not among what ``read_committed`` readers get."""
    if not partitions:
        return {}
    committed = {p: set() for p in partitions}
    every: dict[int, list[tuple[int, int]]] = {p: [] for p in partitions}
    for level in ("read_committed", "read_uncommitted"):
        for msg in _read_partitions(bootstrap, topic, partitions, level, timeout):
            if level == "read_committed":
                committed[msg.partition()].add(msg.offset())
            elif msg.offset() not in committed[msg.partition()]:
                every[msg.partition()].append((msg.offset(), msg.timestamp()[1]))
    return every


def _read_partitions(bootstrap: str, topic: str, partitions: set[int], isolation: str, timeout: float):
    c = Consumer(
        {
            **clients.connection(bootstrap),
            "group.id": "tailsift-chaos-misses",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": isolation,
        }
    )
    try:
        c.assign([TopicPartition(topic, p, 0) for p in sorted(partitions)])
        open_parts = set(partitions)
        deadline = time.monotonic() + timeout
        while open_parts and time.monotonic() < deadline:
            for msg in c.consume(1000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        open_parts.discard(msg.partition())
                    continue
                yield msg
        if open_parts:
            raise TimeoutError(f"{topic}: partitions {sorted(open_parts)} not read to their end in {timeout:.0f} s")
    finally:
        c.close()


def aborted_below(s: Send, home: int, found: list, aborted_here: list[tuple[int, int]]) -> tuple[int, int, int] | None:
    """For the ERROR message ``s``: (its offset on the trace's partition, the offset of an aborted
    record below it written at most ``ABORTED_WINDOW_S`` before it, seconds between), or None."""
    if s.partition == home:
        at = [(s.offset, s.created_ms)]
    else:
        at = [(e[1], e[2]) for e in found if e[0] == home and _holds(e, s) and e[1] != s.offset]
    for off, ts in sorted(at, key=lambda a: a[1])[:1]:
        below = [(o, t) for o, t in aborted_here if o < off and 0 <= ts - t <= ABORTED_WINDOW_S * 1000]
        if below:
            o, t = max(below)
            return off, o, ts - t
    return None


def excuse(
    records: list[dict], sends: list[Send], found: list, hard_bound_ns: int | None, owners: Owners | None = None
) -> str | None:
    """``held``, ``buffer`` or ``bound`` when the README does not promise to keep this error trace
    (module docstring), else None. ``found``: its messages on its partition (``copies``); ``records``: its
    decision records (all of them drop: a kept one would have put it in traces.kept); ``owners``:
    who read which partition when (None: not known, (b) of ``bound`` is not shown)."""
    if not records or any(r["keep"] for r in records):
        return None
    decided = min(r["decided_at_unix_nano"] for r in records)
    home = records[0]["input_partition"]
    errors = [s for s in sends if s.error and not s.late]
    if not errors or any(not s.acked_ns for s in errors):
        return None
    if all(s.acked_ns - s.created_ms * 1_000_000 >= HELD_S * 1e9 for s in errors):
        return "held"
    trigger = trigger_of(records)
    if trigger in BUFFER_BOUND_TRIGGERS:
        return "buffer"
    if trigger:  # the record says which decision point it was: no need to infer the hard bound
        return "bound" if trigger == HARD_BOUND_TRIGGER and hard_bound_ns is not None else None
    arrivals = [_arrival(s, home, found) for s in sends if s.acked_ns]
    error_at = [_arrival(s, home, found) for s in errors]
    if None in error_at or not arrivals:
        return None  # a copy not found: nothing to show it came late
    first = min(a for a in arrivals if a is not None)
    if hard_bound_ns is not None and min(error_at) > decided and decided - first >= hard_bound_ns:
        return "bound"
    held = reader_held_ns(owners, home, decided)
    if hard_bound_ns is not None and held is not None and 0 <= held - hard_bound_ns <= BOUND_SLACK_S * 1e9:
        return "bound"
    return None


def reader_held_ns(owners: Owners | None, partition: int, t_ns: int) -> int | None:
    """How long the reader of ``partition`` at ``t_ns`` had held it (ns), None when not known."""
    held = owners.since(partition, t_ns) if owners is not None else None
    return t_ns - held[1] if held is not None else None


def _arrival(s: Send, home: int, found: list) -> int | None:
    """When ``s`` reached the trace's partition (ns): written there, or its copy's timestamp (when
    the job re-keyed it; visible no earlier); None when no copy is found."""
    if s.partition == home:
        return s.acked_ns
    at = [e[2] * 1_000_000 for e in found if e[0] == home and _holds(e, s) and e[1] != s.offset]
    return min(at) if at else None


def classify(
    missed: dict[bytes, list[dict]],
    sends: dict[bytes, list[Send]],
    found: dict[bytes, list],
    owners: Owners,
    outages: list[tuple[int, int]],
    hard_bound_ns: int,
    aborted_records: dict[int, list[tuple[int, int]]] | None = None,
) -> list[Miss]:
    """``aborted_records``: per partition, the records of aborted transactions (``aborted``)."""
    out = []
    for tid, records in missed.items():
        out.append(
            _one(
                tid,
                records,
                sends.get(tid, []),
                found.get(tid, []),
                owners,
                outages,
                hard_bound_ns,
                aborted_records or {},
            )
        )
    return out


def _one(tid, records, sends, found, owners: Owners, outages, hard_bound_ns: int, aborted_records: dict) -> Miss:
    name = tid.hex()[:12]
    if not records:
        return Miss(tid, "no decision record", f"{name}: no decision record")
    d = min(records, key=lambda r: r["decided_at_unix_nano"])
    decided, home = d["decided_at_unix_nano"], d["input_partition"]
    written = [s for s in sends if s.acked_ns]
    errors = [s for s in written if s.error]
    if not errors:
        return Miss(tid, "error span never acknowledged", f"{name}: no ERROR message acknowledged")
    first_created = min(s.created_ms for s in written) * 1_000_000

    def rel(t: int) -> str:
        return f"{(t - first_created) / 1e9:+.1f}s"

    def show(s: Send) -> str:
        where = "re-keyed from" if s.partition != home else "own"
        arrived = _arrival(s, home, found)
        here = f", on p{home} {rel(arrived)}" if s.partition != home and arrived is not None else ""
        held = (s.acked_ns - s.created_ms * 1_000_000) / 1e9
        during = any(a <= s.acked_ns and s.created_ms * 1_000_000 <= b for a, b in outages)
        reader = owners.at(s.partition, s.acked_ns)
        idle = owners.unowned_s(s.partition, s.acked_ns, decided) if s.acked_ns < decided else 0.0
        return (
            f"{'ERROR ' if s.error else ''}{'late ' if s.late else ''}{where} p{s.partition}@{s.offset} "
            f"created {rel(s.created_ms * 1_000_000)} written {rel(s.acked_ns)}{here} (held {held:.1f}s"
            f"{', across an outage' if during else ''}; reader {reader or '-'}"
            f"{f', unread {idle:.1f}s before the decision' if idle >= 0.5 else ''})"
        )

    why = excuse(records, sends, found, hard_bound_ns, owners)
    error_at = [_arrival(s, home, found) for s in errors if not s.late]
    if why is not None:
        cls = EXCUSED[why]
    elif None in error_at or not error_at:
        cls = "error copy not found"
    elif min(error_at) > decided:
        cls = "error arrived after the decision"
    else:
        cls = "error arrived before the decision"
    below = ""
    if cls == "error arrived before the decision":
        for e in errors:
            if e.late:
                continue
            hit = aborted_below(e, home, found, aborted_records.get(home, []))
            if hit is not None:
                cls = ABORTED_BELOW
                below = (
                    f"; its ERROR at p{home}@{hit[0]} sat above p{home}@{hit[1]}, a record of a transaction"
                    f" aborted later, written {hit[2] / 1000:.1f}s before it"
                )
                break
    held = reader_held_ns(owners, home, decided)
    line = (
        f"{name} p{home} decided {rel(decided)} (reader {owners.at(home, decided) or '-'}"
        + (f", who had held p{home} {held / 1e9:.1f}s" if held is not None else "")
        + ", "
        f"{len(records)} record(s), {d['policy'] or '-'}/{d['reason']}, trigger {d.get('trigger') or '-'}): {cls}; "
        + "; ".join(show(s) for s in sorted(sends, key=lambda s: s.created_ms))
        + below
    )
    return Miss(tid, cls, line)


def report(misses: list[Miss], res, path: Path | None, shown: int = 40) -> None:  # noqa: ANN001 - ScenarioResult
    """Counts per class as figures (shown, not judged: the judged figure is "error traces not
    kept"), the first ``shown`` traces in the notes, all of them in ``path``."""
    counts = Counter(m.cls for m in misses)
    for cls, n in sorted(counts.items()):
        res.add(f"  not kept, why: {cls}", n)
    lines = [m.line for m in sorted(misses, key=lambda m: (m.cls, m.line))]
    if path is not None and lines:
        path.write_text("\n".join(lines) + "\n")
        res.notes.append(f"every missed error trace, classified: {path}")
    for line in lines[:shown]:
        res.notes.append(line)
