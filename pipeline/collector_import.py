"""``tailsift config import-collector FILE``: translate an OTel Collector ``tail_sampling``
processor block into tailsift's ``sampling`` / ``assemble`` config, and say what did not translate.

FILE is a whole Collector config (the first ``processors: tail_sampling[/name]`` block is used) or
the block itself (a mapping with ``policies``). Each policy's nested settings
(``latency: {threshold_ms: …}``) become tailsift's flat keys, sub-policy lists
(``and_sub_policy``, ``drop_sub_policy``, ``composite_sub_policy``, ``not_sub_policy``) become
``policies`` / ``policy``. Every translated policy is then validated as tailsift would load it:
a policy tailsift would refuse (see ``pipeline.config_collector``) is left out, with the reason.
Where the Collector's meaning has a tailsift equivalent under another shape, it is rewritten and
said so (a top-level ``invert_match`` veto becomes a ``drop``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipeline import config as config_mod

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}

# Collector keys under each policy type that map 1:1 onto tailsift's flat keys.
_KEYS = {
    "always_sample": (),
    "latency": ("threshold_ms", "upper_threshold_ms"),
    "numeric_attribute": ("key", "min_value", "max_value", "invert_match"),
    "probabilistic": ("sampling_percentage", "hash_salt"),
    "status_code": ("status_codes",),
    "string_attribute": ("key", "values", "enabled_regex_matching", "invert_match"),
    "trace_state": ("key", "values"),
    "rate_limiting": ("spans_per_second",),
    "bytes_limiting": ("bytes_per_second", "burst_capacity"),
    "span_count": ("min_spans", "max_spans"),
    "boolean_attribute": ("key", "value", "invert_match"),
}
# Collector keys tailsift has no use for: dropped with a note rather than failing.
_IGNORED = {"string_attribute": {"cache_max_size": "a regex-result cache size (tailsift memoizes per trace)"}}


@dataclass
class Translation:
    config: dict[str, Any] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)  # what did not translate
    notes: list[str] = field(default_factory=list)  # what translated with a difference worth knowing

    @property
    def complete(self) -> bool:
        return not self.left_out


class NotTranslated(Exception):
    pass


def _duration_ms(value: Any, where: str) -> int:
    if isinstance(value, (int, float)):  # a bare number is nanoseconds, as Go's time.Duration
        return max(1, round(value / 1e6))
    text = str(value).strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise NotTranslated(f"{where}: {value!r} is not a duration like 10s or 500ms")
    return max(1, round(sum(float(n) * _UNIT_MS[u] for n, u in parts)))


def find_block(doc: Any) -> dict:
    """The tail_sampling block of a Collector config, or the document itself if it is one."""
    if isinstance(doc, dict) and isinstance(doc.get("policies"), list):
        return doc
    processors = doc.get("processors") if isinstance(doc, dict) else None
    if isinstance(processors, dict):
        for name, block in processors.items():
            if (name == "tail_sampling" or str(name).startswith("tail_sampling/")) and isinstance(block, dict):
                return block
    raise NotTranslated("no tail_sampling processor block (processors: tail_sampling: {policies: …}) found")


def _policy(p: Any, where: str, notes: list[str]) -> dict:
    if not isinstance(p, dict) or "type" not in p:
        raise NotTranslated(f"{where}: not a policy (needs name and type)")
    name, kind = str(p.get("name") or where), p["type"]
    settings = p.get(kind) or {}
    if not isinstance(settings, dict):
        raise NotTranslated(f"{where} ({name}): {kind} settings must be a mapping")
    out: dict[str, Any] = {"name": name, "type": kind}
    if kind in _KEYS:
        for key, value in settings.items():
            if key in _KEYS[kind]:
                out[key] = value
            elif key in _IGNORED.get(kind, {}):
                notes.append(f"{where} ({name}): {kind}.{key} ignored: {_IGNORED[kind][key]}")
            else:
                raise NotTranslated(f"{where} ({name}): {kind}.{key} has no tailsift equivalent")
        if kind == "latency" and not out.get("upper_threshold_ms"):
            out.pop("upper_threshold_ms", None)  # 0 means "no upper bound" in the Collector
        if kind == "probabilistic":
            notes.append(
                f"{where} ({name}): probabilistic draws are tailsift's consistent OTEP 235 ones, not the "
                "Collector's FNV hash: the same share, but not the same traces"
            )
        return out
    if kind in ("and", "drop"):
        subs = settings.get(f"{kind}_sub_policy") or []
        out["policies"] = [_policy(s, f"{where}.{kind}_sub_policy.{i}", notes) for i, s in enumerate(subs)]
        return out
    if kind == "not":
        out["policy"] = _policy(settings.get("not_sub_policy"), f"{where}.not_sub_policy", notes)
        return out
    if kind == "composite":
        subs = settings.get("composite_sub_policy") or []
        out["max_total_spans_per_second"] = settings.get("max_total_spans_per_second")
        out["policies"] = [_policy(s, f"{where}.composite_sub_policy.{i}", notes) for i, s in enumerate(subs)]
        if settings.get("policy_order"):
            out["policy_order"] = list(settings["policy_order"])
        if settings.get("rate_allocation"):
            out["rate_allocation"] = [
                {"policy": a.get("policy"), "percent": a.get("percent")} for a in settings["rate_allocation"]
            ]
        return out
    raise NotTranslated(f"{where} ({name}): policy type {kind!r} has no tailsift equivalent")


def _top_level(policy: dict, where: str, notes: list[str]) -> dict:
    """A top-level invert_match is a veto in the Collector: tailsift says that with ``drop``."""
    if policy.get("invert_match"):
        plain = {k: v for k, v in policy.items() if k != "invert_match"}
        notes.append(
            f"{where} ({policy['name']}): invert_match (a veto in the Collector) translated as a drop of the "
            "matching traces; the Collector's 'inverted sample' of the others (only when no other policy "
            "said not-sampled, deprecated there) is not"
        )
        return {"name": policy["name"], "type": "drop", "policies": [{**plain, "name": policy["name"] + "-match"}]}
    return policy


def _check(policy: dict) -> str | None:
    """Why tailsift refuses this policy, or None."""
    try:
        config_mod.parse({"sampling": {"policies": [policy]}}, "<imported>")
    except config_mod.ConfigError as exc:
        lines = [line.strip() for line in str(exc).splitlines()[1:]]
        return " ".join(line.partition("Value error, ")[2] or line for line in lines)
    return None


def translate(doc: Any) -> Translation:
    block = find_block(doc)
    t = Translation()
    assemble: dict[str, Any] = {}
    for key, value in block.items():
        if key == "policies":
            continue
        if key == "decision_wait":
            assemble["decision_wait_ms"] = _duration_ms(value, "decision_wait")
        elif key == "decision_cache" and isinstance(value, dict):
            if value.get("sampled_cache_size"):
                assemble["decision_cache_size"] = int(value["sampled_cache_size"])
            if value.get("non_sampled_cache_size"):
                assemble["dropped_cache_size"] = int(value["non_sampled_cache_size"])
        elif key == "sample_on_first_match":
            if value:
                t.left_out.append(
                    "sample_on_first_match: not translated (the Collector stops at the first sampling policy, "
                    "skipping later drops; tailsift's any_match evaluates every policy and a drop always wins)"
                )
        else:
            t.left_out.append(f"{key}: tailsift bounds memory by spans and bytes instead (see assemble.*)")
    policies = []
    for i, p in enumerate(block.get("policies") or []):
        where = f"policies.{i}"
        notes: list[str] = []  # kept only if the policy is
        try:
            policy = _top_level(_policy(p, where, notes), where, notes)
        except NotTranslated as exc:
            t.left_out.append(str(exc))
            continue
        refused = _check(policy)
        if refused:
            t.left_out.append(f"{where} ({policy['name']}): tailsift refuses it: {refused}")
            continue
        policies.append(policy)
        t.notes.extend(notes)
    if not policies:
        raise NotTranslated("no policy could be translated: " + "; ".join(t.left_out))
    if assemble:
        t.config["assemble"] = assemble
    t.config["sampling"] = {"mode": "any_match", "policies": policies}
    config_mod.parse(t.config, "<imported>")  # the whole result loads (names unique, …)
    return t


def main(path: str, out, err) -> int:
    """Print the translated config (YAML) to ``out`` and what did not translate to ``err``. Exit
    0 when everything translated, 1 when something was left out or changed shape, 2 on errors."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        t = translate(doc)
    except OSError as exc:
        print(f"tailsift config import-collector: cannot read {path}: {exc.strerror or exc}", file=err)
        return 2
    except yaml.YAMLError as exc:
        print(f"tailsift config import-collector: {path}: not valid YAML: {exc}", file=err)
        return 2
    except (NotTranslated, config_mod.ConfigError) as exc:
        print(f"tailsift config import-collector: {path}: {exc}", file=err)
        return 2
    print(f"# translated from the OTel Collector tail_sampling block in {path}", file=out)
    print(yaml.safe_dump(t.config, sort_keys=False), end="", file=out)
    for item in t.left_out:
        print(f"not translated: {item}", file=err)
    for note in t.notes:
        print(f"note: {note}", file=err)
    return 0 if t.complete else 1
