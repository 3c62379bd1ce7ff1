"""What the job wrote, read back from the broker (``read_committed``), and the exactness checks
against the ground truth — one implementation for the chaos suite and the integration tests
(``tests/integration/outputs.py`` asserts on these).

Nothing here asks the job: only its output topics and its consumer group's committed offsets."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, TopicPartition

from pipeline.chaos import misses
from pipeline.chaos.fuzz import FUZZ_SERVICE_PREFIX
from pipeline.chaos.truth import Truth
from pipeline.codecs import avro
from pipeline.kafka import clients
from pipeline.readback import read_all


# ------------------------------------------------------------------------------ read-back
def kept_records(bootstrap: str, topic: str, timeout: float = 120) -> list[dict]:
    """Every KeptTrace record (Avro emit format); the key must be the trace ID."""
    out = []
    for _, _, key, value in read_all(bootstrap, topic, timeout=timeout):
        trace = avro.decode(avro.KEPT_TRACE, value)
        if key != trace["trace_id"]:
            raise AssertionError(f"a kept record keyed {key!r} holds trace {trace['trace_id'].hex()}")
        out.append(trace)
    return out


def record_span_ids(trace: dict) -> list[bytes]:
    return [s["span_id"] for b in trace["batches"] for s in b["spans"]]


def kept_span_occurrences(bootstrap: str, topic: str, timeout: float = 120) -> Counter:
    """(trace ID, span ID) → how many times the span appears in traces.kept."""
    seen: Counter = Counter()
    for trace in kept_records(bootstrap, topic, timeout):
        for span_id in record_span_ids(trace):
            seen[(trace["trace_id"], span_id)] += 1
    return seen


def sli_counts(bootstrap: str, topic: str, timeout: float = 120) -> tuple[Counter, Counter]:
    """(service, operation, kind, status) → spans and → errors, summed over every SliWindow partial."""
    spans, errors = Counter(), Counter()
    for _, _, _, value in read_all(bootstrap, topic, timeout=timeout):
        w = avro.decode(avro.SLI_WINDOW, value)
        key = (w["service"], w["operation"], w["span_kind"], w["status"])
        spans[key] += w["span_count"]
        errors[key] += w["error_count"]
    return spans, errors


def sli_totals(bootstrap: str, topic: str, timeout: float = 120) -> tuple[Counter, Counter]:
    """Span and error counts per service, summed over every SliWindow partial."""
    spans, errors = sli_counts(bootstrap, topic, timeout)
    by_service, err_by_service = Counter(), Counter()
    for key, n in spans.items():
        by_service[key[0]] += n
    for key, n in errors.items():
        err_by_service[key[0]] += n
    return by_service, +err_by_service


# what a decision decides: the verdict and what it stands for (adjusted count = 1 / probability).
# A record rewritten for a late span of a kept trace (more emitted offsets) has the same verdict.
Verdict = tuple[bool, str, float]


def judge_decisions(verdicts: list[Verdict]) -> str:
    """One trace's decision records: ``missing``, ``one``, ``rewritten`` (several, one verdict: the
    compacted log keeps the latest, and it says the same), ``multiple`` (they disagree on policy or
    probability: the kept spans carry different adjusted counts) or ``conflicting`` (on keep)."""
    if not verdicts:
        return "missing"
    if len(verdicts) == 1:
        return "one"
    distinct = set(verdicts)
    if len(distinct) == 1:
        return "rewritten"
    return "conflicting" if len({v[0] for v in distinct}) > 1 else "multiple"


def decisions(bootstrap: str, topic: str, timeout: float = 120) -> dict[bytes, list[Verdict]]:
    """Trace ID → the verdict (keep, policy, probability) of every decision record for it, in log order."""
    return {tid: [verdict(d) for d in records] for tid, records in decision_log(bootstrap, topic, timeout).items()}


def decision_log(bootstrap: str, topic: str, timeout: float = 120) -> dict[bytes, list[dict]]:
    """Trace ID → every decision record for it (decoded ``TraceDecision``), in log order."""
    out: dict[bytes, list[dict]] = defaultdict(list)
    for _, _, _, value in read_all(bootstrap, topic, timeout=timeout):
        d = avro.decode(avro.TRACE_DECISION, value)
        out[d["trace_id"]].append(d)
    return out


def verdict(d: dict) -> Verdict:
    return (d["keep"], d["policy"], d["probability"])


def dead_letters(bootstrap: str, topic: str, timeout: float = 120) -> list[dict]:
    return [avro.decode(avro.DEAD_LETTER, v) for _, _, _, v in read_all(bootstrap, topic, timeout=timeout)]


# ------------------------------------------------------------------------------ progress
def group_lag(bootstrap: str, group: str, topic: str, partitions: int) -> int | None:
    """Input records past the group's committed offsets (None: broker not answering).

    End offsets count transaction markers too (the job writes re-keyed copies into its input in
    transactions): a group that consumed everything sits one marker short of the end offset. So a
    small gap is counted record by record with a ``read_committed`` reader; a large one is taken
    as is (markers are a rounding error there)."""
    c = Consumer(
        {
            **clients.connection(bootstrap),
            "group.id": group,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            # polled twice a second: while the broker is away each one logged ~100 refused connects
            # (2,165 lines through make chaos's progress); None is the figure that says so
            "log_level": 2,
        }
    )
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=5)
        lag, recount = 0, []
        for tp in tps:
            low, high = c.get_watermark_offsets(tp, timeout=5)
            start = tp.offset if tp.offset >= 0 else low
            if 0 < high - start <= SMALL_GAP:
                recount.append(TopicPartition(topic, tp.partition, start))
            else:
                lag += max(high - start, 0)
        return lag + (_records_until_eof(c, recount) if recount else 0)
    except Exception:  # noqa: BLE001 - the broker may be down mid-scenario: no reading this time
        return None
    finally:
        c.close()


SMALL_GAP = 200


def _records_until_eof(c: Consumer, tps: list[TopicPartition]) -> int:
    c.assign(tps)
    open_parts = {tp.partition for tp in tps}
    n = 0
    deadline = time.monotonic() + 10
    while open_parts and time.monotonic() < deadline:
        for msg in c.consume(500, timeout=0.5):
            err = msg.error()
            if err is None:
                n += 1
            elif err.code() == KafkaError._PARTITION_EOF:
                open_parts.discard(msg.partition())
    if open_parts:
        raise TimeoutError("no end of partition seen")
    return n


def wait_committed(bootstrap: str, group: str, topic: str, partitions: int, timeout: float = 180.0) -> float:
    """Until the group has committed every input message; returns the seconds it took."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if group_lag(bootstrap, group, topic, partitions) == 0:
            return time.monotonic() - t0
        time.sleep(0.5)
    raise AssertionError(f"input offsets were not all committed within {timeout:.0f} s")


# ------------------------------------------------------------------------------ exactness
@dataclass
class Exactness:
    spans_produced: int = 0
    traces_produced: int = 0
    traces_kept: int = 0
    kept_spans: int = 0
    lost: int = 0  # spans of kept traces missing from traces.kept
    error_traces_not_kept: int = 0  # error traces with nothing in traces.kept
    error_traces_decided_drop: int = 0  # ... of them: decided drop (their error came after the decision)
    # error traces whose errors are all in spans the generator made late (a redelivered consumer
    # attempt): decided drop before those arrived, they are rightly not kept (a late span follows
    # its trace's decision); kept, they must be whole like any other
    error_late_dropped: int = 0
    # error traces the README does not promise to keep (pipeline.chaos.misses: what is checked
    # instead): every on-time error message held by its producer (a broker outage) ...
    error_held_dropped: int = 0
    # ... or decided at the hard bound (backlog_wait_factor x decision_wait), its error not read by then
    error_bound_dropped: int = 0
    # ... or decided at the buffer bound (its record's trigger: backlog_bound, memory_bound), where the
    # input is paused and a trace's tail may still be unread (README "Bounded memory")
    error_buffer_dropped: int = 0
    traces_with_loss: int = 0
    duplicated: int = 0  # occurrences beyond the first
    error_traces_incomplete: int = 0
    dropped_leaked: int = 0  # spans in traces.kept of a trace whose decision is drop
    unknown_kept: int = 0  # kept spans of good traces' IDs that were never produced
    decisions_missing: int = 0
    # the log is compacted (the latest record per trace stays), so a trace written several times with
    # the same verdict — late spans of a kept trace, a replay after a crash — has one decision; only
    # records that disagree are two decisions
    decisions_rewritten: int = 0  # traces with more than one record, all of the same verdict
    decisions_multiple: int = 0  # traces whose records disagree on keep, policy or probability
    decisions_conflicting: int = 0  # ... of them: on keep
    sli_mismatches: int = 0  # (service, operation, kind, status) keys with a wrong span or error count
    sli_span_delta: int = 0  # sum |output - truth| over keys of the good traffic's services
    hostile_sli_spans: int = 0  # spans counted under services the good traffic does not have
    deadletters: int = 0
    deadletter_reasons: Counter = field(default_factory=Counter)
    poison_missing: int = 0  # injected poison not dead-lettered
    good_deadlettered: int = 0  # dead letters pointing at messages that were not poison
    poison_reasons: dict = field(default_factory=dict)  # poison kind → Counter(reason)
    # error traces not kept → their decision records (empty: none), for ``pipeline.chaos.misses``
    missed: dict = field(default_factory=dict)
    excused: dict = field(default_factory=dict)  # ... of them: trace ID → "held" | "bound" | "buffer"
    copies: dict = field(default_factory=dict)  # ... their messages on their partitions (misses.copies)


def check(
    bootstrap: str,
    topics,
    truth: Truth,
    errors_kept: bool = True,
    input_topic: str | None = None,
    hard_bound_ns: int | None = None,
    owners: misses.Owners | None = None,
) -> Exactness:
    """Every figure of the exactness checks, computed from the topics against ``truth``.
    ``topics``: the job config's TopicsConfig. ``hard_bound_ns``: the job's backlog_wait_factor x
    decision_wait — an error trace decided at it before its error arrived is not promised to be
    kept (``pipeline.chaos.misses``); None: every error trace is. ``owners``: who read which input
    partition when (``misses.Owners``), to show a decision at its reader's hard bound."""
    ex = Exactness(spans_produced=truth.spans, traces_produced=len(truth.traces))
    seen = kept_span_occurrences(bootstrap, topics.traces_kept.name)
    kept: dict[bytes, set[bytes]] = defaultdict(set)
    for (tid, sid), n in seen.items():
        ex.duplicated += n - 1
        kept[tid].add(sid)
    ex.kept_spans = sum(seen.values())
    log = decision_log(bootstrap, topics.decisions.name)
    for tid, t in truth.traces.items():
        want = None
        got = kept.get(tid)
        records = log.get(tid, [])
        verdicts = [verdict(d) for d in records]
        flags = [v[0] for v in verdicts]
        judged = judge_decisions(verdicts)
        ex.decisions_missing += judged == "missing"
        ex.decisions_rewritten += judged == "rewritten"
        ex.decisions_multiple += judged in ("multiple", "conflicting")
        ex.decisions_conflicting += judged == "conflicting"
        if got is not None:
            want = t.span_set()
            ex.lost += len(want - got)
            ex.traces_with_loss += bool(want - got)
            ex.unknown_kept += len(got - want)
            if t.has_error and want - got:
                ex.error_traces_incomplete += 1
        elif t.has_error and t.error_late_only and flags and not any(flags):
            ex.error_late_dropped += 1
        elif t.has_error and errors_kept:
            ex.error_traces_not_kept += 1
            ex.error_traces_decided_drop += bool(flags) and not any(flags)
            ex.missed[tid] = records
        if got and flags and not any(flags):
            ex.dropped_leaked += len(got)
        ex.traces_kept += bool(got)
    input_topic = input_topic or topics.spans_raw.name
    if ex.missed and truth.sends:  # what the sampler does not promise, counted apart
        wanted: dict[int, set[bytes]] = defaultdict(set)
        for tid, records in ex.missed.items():
            if records:
                wanted[records[0]["input_partition"]].add(tid)
        ex.copies = misses.copies(bootstrap, input_topic, wanted)
        for tid, records in ex.missed.items():
            why = misses.excuse(records, truth.sends.get(tid, []), ex.copies.get(tid, []), hard_bound_ns, owners)
            if why is not None:
                ex.excused[tid] = why
                ex.error_traces_not_kept -= 1
                ex.error_traces_decided_drop -= 1
                ex.error_held_dropped += why == "held"
                ex.error_bound_dropped += why == "bound"
                ex.error_buffer_dropped += why == "buffer"
    spans, errors = sli_counts(bootstrap, topics.sli_windows.name)
    good_services = {k[0] for k in truth.sli_spans}
    for key in set(spans) | set(truth.sli_spans):
        if key[0] not in good_services:
            ex.hostile_sli_spans += spans[key]
            continue
        if spans[key] != truth.sli_spans[key] or errors[key] != truth.sli_errors[key]:
            ex.sli_mismatches += 1
            ex.sli_span_delta += abs(spans[key] - truth.sli_spans[key])
    dls = dead_letters(bootstrap, topics.deadletter.name)
    ex.deadletters = len(dls)
    ex.deadletter_reasons = Counter(d["reason"] for d in dls)
    at = {(d["partition"], d["offset"]): d["reason"] for d in dls if d["source_topic"] == input_topic}
    for pos, kind in truth.poison.items():
        reason = at.pop(pos, None)
        if reason is None:
            ex.poison_missing += 1
            reason = "(not dead-lettered)"
        ex.poison_reasons.setdefault(kind, Counter())[reason] += 1
    ex.poison_missing += truth.poison_sent - len(truth.poison)  # sent but never acknowledged
    for d in dls:  # mutations taken as data: a corrupt detail of a kept trace is reported, not refused
        if d["reason"] == "detail_decode_error" and d["value_sha256"] in truth.mutations:
            at.pop((d["partition"], d["offset"]), None)
    ex.good_deadlettered = len(at)
    return ex


def is_hostile_service(service: str) -> bool:
    return service.startswith(FUZZ_SERVICE_PREFIX)
