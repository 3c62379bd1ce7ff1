"""``tailsift simulate``'s replay through the real job core, on generated traffic with known
ground truth (no Kafka: the messages a capture file would hold, built in memory)."""

from __future__ import annotations

import json

import pytest

from operators.policies.probabilistic import ProbabilisticPolicy
from operators.trace import TraceView
from pipeline import config as config_mod
from pipeline.capture import Message
from pipeline.codecs import avro
from pipeline.generator import GeneratorConfig, TraceGenerator
from pipeline.kafka.partitioner import canonical_partition
from pipeline.simulate.main import render
from pipeline.simulate.replay import Replay, SimConfig, merged

T0 = 1_800_000_000_000_000_000
PARTITIONS = 4
CANARIES = {"user.email": "canary.simulate@example.org", "user.id": "canary-user-77413"}
ERRORS = {"name": "errors", "type": "status_code"}
SLOW = {"name": "slow", "type": "latency", "threshold_ms": 1000}
BASELINE = {"name": "baseline", "type": "probabilistic", "sampling_percentage": 5}
# long enough for every span of a generated trace (async e-mail retries included) to arrive first
WHOLE_TRACES = {"decision_wait_ms": 60_000, "root_quiet_gap_ms": 0}


def traffic(n=300, seed=11, every_ms=40):
    gen = TraceGenerator(GeneratorConfig(seed=seed, error_rate=0.06, slow_rate=0.04, canaries=CANARIES))
    traces, parts = [], {p: [] for p in range(PARTITIONS)}
    for i in range(n):
        tr = gen.trace(T0 + i * every_ms * 1_000_000)
        traces.append(tr)
        p = canonical_partition(tr.trace_id, PARTITIONS)
        for value, at in zip(tr.encoded, tr.export_ns):
            parts[p].append((at, tr.trace_id, value))
    messages = {
        p: [
            Message(p, off, at // 1_000_000, tid, v)
            for off, (at, tid, v) in enumerate(sorted(rows, key=lambda r: r[0]))
        ]
        for p, rows in parts.items()
    }
    return traces, messages


def cfg(policies, **assemble):
    return config_mod.parse({"sampling": {"policies": policies}, "assemble": assemble}, "<test>")


def simulate(messages, *configs, slow_ms=(1000.0,), diff_limit=1000):
    names = ("candidate", "current")
    replay = Replay(
        [SimConfig(names[i], f"{names[i]}.yaml", c) for i, c in enumerate(configs)], list(slow_ms), diff_limit
    )
    replay.feed(merged({p: list(ms) for p, ms in messages.items()}))
    replay.finish()
    return replay.result("memory")


@pytest.fixture(scope="module")
def generated():
    return traffic()


@pytest.fixture(scope="module")
def compared(generated):
    """Candidate (errors, latency, 5 %) against current (errors, 5 %), whole traces."""
    _, messages = generated
    return simulate(messages, cfg([ERRORS, SLOW, BASELINE], **WHOLE_TRACES), cfg([ERRORS, BASELINE], **WHOLE_TRACES))


def baseline_picks(traces) -> set[bytes]:
    policy = ProbabilisticPolicy("baseline", 5)
    picked = set()
    for tr in traces:
        spans = [s for b in tr.batches for s in b["spans"]]
        if policy.evaluate(TraceView(tr.trace_id, spans)).sampled:
            picked.add(tr.trace_id)
    return picked


def test_counts_and_recall_equal_the_generators_ground_truth(generated):
    traces, messages = generated
    out = simulate(messages, cfg([ERRORS, SLOW, BASELINE], **WHOLE_TRACES), slow_ms=(1000.0, 300.0))
    (c,) = out["configs"]
    errors = {t.trace_id for t in traces if t.has_error}
    slow = {t.trace_id for t in traces if t.duration_ns >= 1_000_000_000}
    slow300 = {t.trace_id for t in traces if t.duration_ns >= 300_000_000}
    spans = sum(t.span_count for t in traces)
    assert errors and slow and len(slow300) > len(slow)
    assert out["input"]["messages"] == sum(len(m) for m in messages.values())
    assert out["input"]["spans"] == spans and out["input"]["invalid_messages"] == 0
    assert (c["traces_seen"], c["spans_seen"], c["undecided"]) == (len(traces), spans, 0)
    assert c["recall"]["error"] == {"seen": len(errors), "kept": len(errors)}
    assert c["recall"]["slow"]["1000"] == {"seen": len(slow), "kept": len(slow)}
    # below the latency policy's threshold only what the other policies picked is kept
    kept = errors | slow | baseline_picks(traces)
    assert c["recall"]["slow"]["300"] == {"seen": len(slow300), "kept": len(slow300 & kept)}
    assert c["kept_traces"] == len(kept)
    assert sum(c["keep_share_by_policy"].values()) == len(kept)
    kept_spans = sum(t.span_count for t in traces if t.trace_id in kept)
    assert c["kept_spans"] == kept_spans
    assert sum(r["kept_spans"] for r in c["timeline"]) == kept_spans
    assert sum(r["input_spans"] for r in c["timeline"]) == spans
    roots = {}
    for t in traces:
        s = roots.setdefault(t.root_service, {"traces": 0, "kept": 0})
        s["traces"] += 1
        s["kept"] += t.trace_id in kept
    assert c["per_service"] == dict(sorted(roots.items()))
    assert [e["why"] for e in c["examples"]] == ["error", "slow", "rare"]
    assert (
        out["input"]["first_event_ms"]
        == min(s["start_time_unix_nano"] for t in traces for b in t.batches for s in b["spans"]) // 1_000_000
    )


def test_against_lists_exactly_the_slow_traces_only_the_latency_policy_keeps(generated, compared):
    traces, _ = generated
    out = compared
    picked = baseline_picks(traces)
    expected = sorted(
        t.trace_id.hex()
        for t in traces
        if t.duration_ns >= 1_000_000_000 and not t.has_error and t.trace_id not in picked
    )
    assert expected
    diff = out["diff"]
    assert [e["trace_id"] for e in diff["only_candidate"]] == expected
    assert diff["only_current"] == [] and diff["more"] == 0
    by_id = {t.trace_id.hex(): t for t in traces}
    for e in diff["only_candidate"]:
        assert (e["policy"], e["reason"]) == ("slow", "latency>=1000ms")
        assert e["root_service"] == by_id[e["trace_id"]].root_service and e["root_operation"]
    cand, cur = out["configs"]
    assert cand["kept_traces"] - cur["kept_traces"] == len(expected)


def test_the_difference_is_capped_with_a_count_of_the_rest(generated, compared):
    _, messages = generated
    out = simulate(
        messages, cfg([ERRORS, SLOW, BASELINE], **WHOLE_TRACES), cfg([ERRORS, BASELINE], **WHOLE_TRACES), diff_limit=3
    )
    full = compared
    assert [e["trace_id"] for e in out["diff"]["only_candidate"]] == [
        e["trace_id"] for e in full["diff"]["only_candidate"][:3]
    ]
    assert out["diff"]["more"] == len(full["diff"]["only_candidate"]) - 3


def test_two_runs_give_byte_identical_figures_with_time_dependent_policies(generated):
    """Rate caps and adaptive samplers read the decision time the job passes them: in a replay that
    is the simulated event-time clock, so the figures do not depend on how fast the replay ran."""
    _, messages = generated
    rate = {"name": "rate", "type": "rate_limiting", "traces_per_second": 5}
    ema = {"name": "ema", "type": "ema_dynamic", "goal_sample_rate": 20, "field_list": ["service.name", "name"]}
    runs = [simulate(messages, cfg([ERRORS, rate]), cfg([ERRORS, ema], decision_wait_ms=2_000)) for _ in range(2)]
    a, b = (json.dumps(r, indent=1) for r in runs)
    assert a == b and render(runs[0]) == render(runs[1])
    # ~12 s of event time replayed in well under that much CPU: a wall clock would have let the
    # bucket refill hardly at all; event time gives about 5 traces/s plus the burst of 10
    seconds = (runs[0]["input"]["last_event_ms"] - runs[0]["input"]["first_event_ms"]) / 1000
    by_rate = runs[0]["configs"][0]["keep_share_by_policy"].get("rate", 0)
    assert 5 * (seconds - 5) < by_rate <= 5 * seconds + 10


def test_hostile_messages_are_counted_and_dead_lettered_by_each_config_never_a_crash(generated):
    """Garbage, a tombstone, and a valid batch of a new trace stamped a day ahead: the last one must
    not move the simulated clock (every buffered trace would be decided at once, and the message
    itself accepted); the job dead-letters it as invalid_timestamp, as a live worker would."""
    traces, messages = generated
    bad = {p: list(ms) for p, ms in messages.items()}
    tail = bad[0][-1]
    future = avro.decode_batch(tail.value)
    future["trace_id"] = b"\x7f" * 16
    for span in future["spans"]:
        span["start_time_unix_nano"] += 86_400 * 10**9
        span["end_time_unix_nano"] += 86_400 * 10**9
    bad[0] += [
        Message(0, tail.offset + 1, tail.timestamp_ms, b"k" * 16, b"\xff\x00garbage"),
        Message(0, tail.offset + 2, tail.timestamp_ms, b"k" * 16, None),
        Message(0, tail.offset + 3, tail.timestamp_ms, b"\x7f" * 16, avro.encode_span_batch(future)),
    ]
    out = simulate(bad, cfg([ERRORS, SLOW, BASELINE], **WHOLE_TRACES), cfg([ERRORS]))
    assert out["input"]["invalid_messages"] == 3
    assert out["input"]["last_event_ms"] < T0 // 1_000_000 + 3_600_000
    for c in out["configs"]:
        assert c["traces_seen"] == len(traces) and c["undecided"] == 0
        assert c["dead_lettered"] == {"decode_error": 1, "empty_value": 1, "invalid_timestamp": 1}


def test_input_with_nothing_decodable_gives_empty_figures_and_its_dead_letters():
    junk = {0: [Message(0, i, 1_000, b"k", b"\x01\x02junk") for i in range(5)]}
    out = simulate(junk, cfg([ERRORS]))
    (c,) = out["configs"]
    assert out["input"]["messages"] == 5 and out["input"]["invalid_messages"] == 5
    assert (c["traces_seen"], c["kept_traces"], c["timeline"]) == (0, 0, [])
    assert c["dead_lettered"] == {"decode_error": 5}


def test_the_json_holds_no_raw_attribute_value(compared):
    out = compared
    text = json.dumps(out)
    assert all(c["examples"] for c in out["configs"])
    for value in CANARIES.values():
        assert value not in text
    for c in out["configs"]:
        for e in c["examples"]:
            for s in e["spans"]:
                assert set(s["sampling"]) <= {
                    "sampling.policy",
                    "sampling.reason",
                    "sampling.adjusted_count",
                    "sampling.late",
                    "sampling.dry_run_kept",
                }


def test_otlp_input_without_keys_is_rekeyed_and_replayed_to_the_same_figures(generated):
    """Collector-style input: OTLP requests on no key. The job re-publishes each keyed by its trace
    ID; the replay delivers those copies back to it, as the broker would."""
    from pipeline.bench import as_otlp

    traces, messages = generated
    part = {p: ms[:60] for p, ms in messages.items()}  # a slice: OTLP conversion is slow
    otlp_msgs = {
        p: [Message(p, m.offset, m.timestamp_ms, None, as_otlp(m.value)) for m in ms] for p, ms in part.items()
    }
    policies = [ERRORS, SLOW, BASELINE]
    avro_out = simulate(part, cfg(policies, **WHOLE_TRACES))
    otlp_cfg = config_mod.parse(
        {
            "ingest": {"format": "otlp_proto"},
            "emit": {"format": "otlp_proto"},
            "sampling": {"policies": policies},
            "assemble": WHOLE_TRACES,
        },
        "<test>",
    )
    otlp_out = simulate(otlp_msgs, otlp_cfg)
    a, o = avro_out["configs"][0], otlp_out["configs"][0]
    assert a["traces_seen"] > 20 and a["recall"]["error"]["seen"] > 0
    for key in (
        "traces_seen",
        "spans_seen",
        "kept_traces",
        "kept_spans",
        "keep_share_by_policy",
        "recall",
        "per_service",
    ):
        assert o[key] == a[key], key
    assert o["undecided"] == 0 and o["dead_lettered"] == {}
    assert [e["trace_id"] for e in o["examples"]] == [e["trace_id"] for e in a["examples"]]


def test_a_keyless_copy_is_fed_back_on_the_partition_the_job_named():
    """The job writes one re-keyed copy per destination partition; a copy of several traces has no
    key and names its partition. Old code placed every copy by its key's murmur2 (``len(None)``:
    a TypeError on a keyless one); now a named partition is where the copy goes back in, and a
    copy without one still goes where its key puts it."""
    replay = Replay([SimConfig("candidate", "c.yaml", cfg([ERRORS]))], [1000.0])
    replay.partitions.update(range(6))
    tid = b"\x05" * 16
    replay._rekeyed(0, None, 4, b"copy of two traces")
    replay._rekeyed(0, tid, None, b"copy of one trace")
    assert [(m.partition, m.key, m.value) for m in replay._refeed[0]] == [
        (4, None, b"copy of two traces"),
        (canonical_partition(tid, 6), tid, b"copy of one trace"),
    ]
