"""librdkafka's prefetch of the input is memory beside the assembler's buffer: it is sized from
``assemble.max_buffered_bytes``.

Before, the input consumer always had ``queued.max.messages.kbytes`` 64 MiB and ``fetch.max.bytes``
50 MiB: with a 4 MB buffer bound the chaos overload scenario peaked at 240 MiB RSS against its
173 MiB bound, and a consumer that stops consuming over a backlog grew by 85 MiB in 10 s (55 → 140
MiB; 9 MiB with the derived sizes)."""

from confluent_kafka import Consumer

from pipeline.kafka import clients
from tests.support.jobs import make_config


def _conf(buffer_bytes: int) -> dict:
    return clients.input_consumer(make_config(assemble={"max_buffered_bytes": buffer_bytes}))


def test_a_low_buffer_bound_bounds_the_prefetch_too():
    low = _conf(4_000_000)
    assert low["queued.max.messages.kbytes"] * 1024 <= 4_000_000
    assert low["fetch.max.bytes"] <= 4_000_000
    tiny = _conf(1)  # never below what one fetch of a 1 MB message needs
    assert tiny["queued.max.messages.kbytes"] == 2048 and tiny["fetch.max.bytes"] == 2 * 1024 * 1024


def test_the_default_bound_keeps_the_large_fetches():
    default = _conf(512 * 1024 * 1024)
    assert default["queued.max.messages.kbytes"] == 65_536 and default["fetch.max.bytes"] == 52_428_800


def test_librdkafka_accepts_every_derived_size():
    for buffer_bytes in (1, 2_000_000, 4_000_000, 100_000_000, 512 * 1024 * 1024):
        conf = _conf(buffer_bytes)
        assert conf["fetch.max.bytes"] <= conf["queued.max.messages.kbytes"] * 1024
        Consumer(conf).close()  # raises KafkaException on an inconsistent configuration
