"""Injected write failures, for the tests and the chaos suite to prove "failure = rewind".

``TAILSIFT_INJECT_FAULTS="commit:3,produce:5"`` makes the 3rd transaction fail just before its
commit and the 5th transaction fail after its records were produced — each as an abortable
``KafkaException``, raised *inside* a real transaction on the real broker, so the abort, the
rewind and the replay that follow are the production code paths. Steps: ``begin`` (after
begin_transaction, which the interval's first records trigger), ``step`` (after a loop step's
records — decided traces, dead letters, re-keyed copies — were produced into the open transaction;
counted per step with records, at_least_once too), ``produce`` (after the commit's own records, the
SLI partials, were produced), ``offsets`` (after the input offsets were sent), ``commit`` (just
before commit_transaction); at_least_once: ``write``. Unset (the default) costs one dict lookup per
check.
"""

from __future__ import annotations

import os

from confluent_kafka import KafkaError, KafkaException

ENV = "TAILSIFT_INJECT_FAULTS"


class Faults:
    def __init__(self, spec: str | None = None):
        spec = os.environ.get(ENV, "") if spec is None else spec
        self._at: dict[str, set[int]] = {}
        for item in filter(None, (x.strip() for x in spec.split(","))):
            step, _, nth = item.partition(":")
            self._at.setdefault(step, set()).add(int(nth))
        self._seen: dict[str, int] = {}

    def check(self, step: str) -> None:
        if not self._at:
            return
        n = self._seen[step] = self._seen.get(step, 0) + 1
        if n in self._at.get(step, ()):
            err = KafkaError(KafkaError._STATE, f"injected fault: {step} #{n}", txn_requires_abort=True)
            raise KafkaException(err)
