"""``tailsift config import-collector``: a Collector tail_sampling block → tailsift config, and
what did not translate."""

import io

import yaml

from operators.trace import TraceView
from pipeline import cli, collector_import, config
from pipeline.codecs import avro
from pipeline.policies import build_engine
from tests.spans import span

COLLECTOR = """
receivers: {otlp: {protocols: {grpc: {}}}}
processors:
  batch: {}
  tail_sampling:
    decision_wait: 1m30s
    num_traces: 100
    decision_cache: {sampled_cache_size: 100000, non_sampled_cache_size: 200000}
    policies:
      - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}
      - {name: slow, type: latency, latency: {threshold_ms: 5000, upper_threshold_ms: 10000}}
      - name: no-health
        type: drop
        drop:
          drop_sub_policy:
            - name: h
              type: string_attribute
              string_attribute: {key: url.path, values: [/health], enabled_regex_matching: true, cache_max_size: 10}
      - name: opt-out
        type: boolean_attribute
        boolean_attribute: {key: app.do_not_sample, value: true, invert_match: true}
      - name: budget
        type: composite
        composite:
          max_total_spans_per_second: 1000
          policy_order: [p, e]
          composite_sub_policy:
            - {name: p, type: probabilistic, probabilistic: {sampling_percentage: 10}}
            - {name: e, type: status_code, status_code: {status_codes: [ERROR]}}
      - {name: ottl, type: ottl_condition, ottl_condition: {span: ["x"]}}
      - name: not-ok
        type: not
        not: {not_sub_policy: {name: ok, type: status_code, status_code: {status_codes: [OK]}}}
      - {name: base, type: probabilistic, probabilistic: {sampling_percentage: 10}}
"""


def _run(tmp_path, text=COLLECTOR):
    path = tmp_path / "collector.yaml"
    path.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    code = collector_import.main(str(path), out, err)
    return code, out.getvalue(), err.getvalue()


def _trace(status="UNSET", attrs=None, start=0, end=1_000_000):
    s = span(start, end, status, parent=None)
    s["detail"] = avro.encode_detail({"status_message": "", "attributes": attrs or {}, "events": [], "links": []})
    return TraceView(b"\x00" * 9 + b"\xff" * 7, [s], decode_detail=avro.decode_detail)


def test_translates_a_collector_block_and_lists_what_it_could_not(tmp_path):
    code, out, err = _run(tmp_path)
    assert code == 1  # something was left out
    cfg = config.parse(yaml.safe_load(out))
    assert cfg.assemble.decision_wait_ms == 90_000
    assert (cfg.assemble.decision_cache_size, cfg.assemble.dropped_cache_size) == (100_000, 200_000)
    assert [p.name for p in cfg.sampling.policies] == ["errors", "slow", "no-health", "opt-out", "not-ok", "base"]
    slow = cfg.sampling.policies[1]
    assert (slow.threshold_ms, slow.upper_threshold_ms) == (5000, 10000)
    assert cfg.sampling.policies[3].type == "drop"  # the Collector's inverted veto
    left_out = [line for line in err.splitlines() if line.startswith("not translated:")]
    assert len(left_out) == 3
    assert "num_traces" in left_out[0]
    assert "policies.4 (budget)" in left_out[1] and "first sub-policy that *samples*" in left_out[1]
    assert "ottl_condition" in left_out[2]
    assert "cache_max_size ignored" in err and "FNV" in err


def test_the_translation_decides_as_the_collector_would(tmp_path):
    _, out, _ = _run(tmp_path)
    engine = build_engine(config.parse(yaml.safe_load(out)).sampling)
    assert engine.decide(_trace("ERROR")).keep
    assert not engine.decide(_trace("ERROR", {"app.do_not_sample": True})).keep  # the veto
    assert not engine.decide(_trace("ERROR", {"url.path": "/health"})).keep
    assert engine.decide(_trace(end=10_000 * 1_000_000)).keep  # latency (5000, 10000]: upper bound included
    assert engine.decide(_trace("UNSET")).keep  # not(OK)
    assert engine.decide(_trace("OK")).keep  # the 10 % draw: R is all ones here


def test_a_complete_translation_exits_0_and_the_cli_wires_it(tmp_path, capsys):
    block = "policies: [{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}]\n"
    path = tmp_path / "block.yaml"
    path.write_text(block)
    assert cli.main(["config", "import-collector", str(path)]) == 0
    captured = capsys.readouterr()
    assert config.parse(yaml.safe_load(captured.out)).sampling.policies[0].name == "errors"
    assert captured.err == ""


def test_no_tail_sampling_block_is_a_clear_error(tmp_path):
    code, out, err = _run(tmp_path, "processors: {batch: {}}\n")
    assert code == 2 and out == "" and "no tail_sampling processor block" in err
