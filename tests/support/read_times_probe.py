"""A process that polls the group's read times as a worker does (``GroupReadTimes.update`` every
10 ms, owning partition 0, read to offset 0) and prints what it sees, for
``tests/integration/test_read_times_broker_restart.py``: a separate process, because the defect it
looks for aborts the process (SIGABRT inside librdkafka).

    python -m tests.support.read_times_probe <config.yaml> <request timeout s>

Prints ``floor <ns>`` whenever the group read time of partition 0 changes, and the exchange's debug
lines (``... unavailable ...``: a request that failed, a broker away)."""

from __future__ import annotations

import faulthandler
import logging
import sys
import time

from pipeline import config as config_mod
from pipeline.kafka import read_times as rt


def main(path: str, request_timeout_s: float) -> None:
    faulthandler.enable()  # the Python stack of an abort, for whoever reads the output
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="%(message)s")
    logging.getLogger("tailsift").setLevel(logging.DEBUG)
    # a short request timeout: the outage outlasts it in seconds, not minutes
    rt.REQUEST_TIMEOUT_S = request_timeout_s
    cfg = config_mod.load(path)
    times = rt.GroupReadTimes(cfg, cfg.topics.spans_raw.name, cfg.topics.spans_raw.partitions)
    last = None
    while True:
        floor = times.update({0}, {0: 0}, time.monotonic())[0]
        if floor != last:
            print(f"floor {floor}", flush=True)
            last = floor
        time.sleep(0.01)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
