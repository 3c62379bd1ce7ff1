"""The chaos, fuzz and overload suite (``tailsift chaos``, ``make chaos``).

It inflicts a bad day on real ``tailsift run`` processes and a real broker — workers killed mid
transaction, broker restarts, a zombie, a flood of hostile messages, three times the sustained
load, PII canaries everywhere — and judges the job only by what it can see from outside: the
topics (read ``read_committed``), the processes (RSS from /proc, exit codes, logs) and /metrics.
It never imports the job's internals, so it keeps its meaning while the data plane is rebuilt.

Modules: ``truth`` (what was produced), ``traffic`` (paced producer of good traffic and poison),
``wire`` (generated batches as OTLP), ``fuzz`` (hostile messages), ``canaries`` (PII canaries),
``verify`` (exactness checks against the truth, shared with the integration tests), ``fleet``
(workers and the broker), ``figures`` (the table and its limits), ``scenarios``, ``main`` (CLI).
"""
