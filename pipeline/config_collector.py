"""Where tailsift's policy semantics differ from the OTel Collector's tail_sampling processor, and
the config shapes refused for it (checked against the Collector's v0.160.0 sources,
``processor/tailsamplingprocessor``). A config pasted from a Collector must either behave as it
did there or fail at load with a message that says how tailsift differs; these checks are the
"fail" half (``latency``'s bounds are matched instead, in the operator).

- ``composite``: the Collector hands a trace to the first sub-policy that *samples* it; tailsift to
  the first that *applies*. They agree when every sub-policy but the last is a condition (it
  either does not apply or keeps for sure); a draw (probabilistic, rate-based, adaptive) before
  another sub-policy would swallow the traces that sub-policy is there for. A ``drop`` inside a
  composite is ignored by the Collector (only "sampled" counts there).
- ``invert_match`` at the top level: in the Collector an inverted match that matches vetoes the
  trace (not sampled whatever other policies say) and a non-match samples only when no other
  policy said "not sampled" (deprecated there); tailsift read a match as "no opinion". Inside
  ``and`` / ``composite`` / ``drop`` both read it the same way, so only the top level is refused.
- ``not`` of a draw: the Collector inverts the draw's decision, tailsift's ``not`` keeps what its
  sub-policy does not apply to (nothing, for a draw): refused.
- ``drop`` with a draw among its sub-policies: the Collector drops the share the draw picks;
  tailsift's sub-policies are predicates, so it dropped every trace the others matched. A random
  drop also cannot keep adjusted counts honest beside consistent keeps, so it is refused.
"""

from __future__ import annotations

from collections.abc import Iterable

# Policies that, when they apply, keep for sure: no draw can leave a trace they apply to unpicked.
CONDITION_TYPES = frozenset(
    {
        "always_sample",
        "status_code",
        "latency",
        "string_attribute",
        "numeric_attribute",
        "boolean_attribute",
        "span_count",
        "trace_state",
    }
)


def is_condition(policy) -> bool:
    """True when the policy never answers "applies, but this trace was not picked"."""
    if policy.type in CONDITION_TYPES:
        return True
    if policy.type == "and":
        return all(is_condition(p) for p in policy.policies)
    if policy.type == "not":
        return True  # keeps with p = 1 exactly the traces its sub-policy does not apply to
    return False


def composite_problems(order: list[str], by_name: dict) -> Iterable[str]:
    for i, name in enumerate(order):
        sub = by_name[name]
        if sub.type == "drop":
            yield (
                f"sub-policy {name!r} is a drop: the OTel Collector's composite ignores a drop sub-policy "
                "(only a sampled decision counts) and tailsift's would stop at it; put the drop policy at "
                "the top level of sampling.policies"
            )
        elif i < len(order) - 1 and not is_condition(sub):
            yield (
                f"sub-policy {name!r} ({sub.type}) draws, and is not last in policy_order: the OTel "
                "Collector's composite gives a trace to the first sub-policy that *samples* it, tailsift's to "
                "the first that *applies*, so here it would swallow the traces the later sub-policies are "
                f"for (e.g. errors); put {name!r} last"
            )


def drop_problems(policies: list) -> Iterable[str]:
    for sub in policies:
        if not is_condition(sub):
            yield (
                f"sub-policy {sub.name!r} ({sub.type}) draws: the OTel Collector's drop drops only the share "
                "its draw picks, tailsift's uses sub-policies as conditions and would drop every trace the "
                "others match; a random drop is refused (it would bias adjusted counts): drop on conditions, "
                "and keep a share with a probabilistic policy instead"
            )


def not_problem(policy) -> str | None:
    if not is_condition(policy):
        return (
            f"sub-policy {policy.name!r} ({policy.type}) draws: the OTel Collector's not inverts its "
            "decision (keeps the share the draw did not pick), tailsift's keeps the traces its sub-policy "
            "does not apply to (none, for a draw); not takes conditions only"
        )
    return None


def top_level_invert_problem(policy) -> str | None:
    if getattr(policy, "invert_match", False):
        return (
            "invert_match on a top-level policy: in the OTel Collector a matching inverted policy vetoes "
            "the trace whatever other policies say (deprecated there), tailsift would read the match as "
            "'no opinion'. Write {type: drop, policies: [<this policy without invert_match>]} to drop the "
            "matching traces, or {type: not, policy: <it without invert_match>} to keep the others"
        )
    return None
