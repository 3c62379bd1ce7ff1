"""Writes an outbox to Kafka: one transaction per call (exactly_once) or idempotent produce + flush
(at_least_once). confluent-kafka (librdkafka) rather than Faust's aiokafka producer: it has the
transactions API tailsift needs and produces ~10× cheaper per record in Python.

The calls block; ``pipeline.app`` runs them in a worker thread (librdkafka releases the GIL) so
the event loop keeps heartbeating and fetching while a transaction commits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException, Producer

log = logging.getLogger("tailsift")


class EmitError(RuntimeError):
    pass


class Emitter:
    def __init__(
        self,
        bootstrap_servers: str,
        transactional_id: str | None,
        transaction_timeout_ms: int = 10_000,
        linger_ms: int = 5,
    ):
        conf = {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,  # no duplicates from the producer's own retries
            "acks": "all",
            "linger.ms": linger_ms,
            # the Java client's partitioner (also aiokafka's and the generator's): a record re-keyed by
            # trace ID lands where every other producer puts that trace
            "partitioner": "murmur2_random",
        }
        if transactional_id:
            conf["transactional.id"] = transactional_id
            conf["transaction.timeout.ms"] = transaction_timeout_ms
        self.transactional = bool(transactional_id)
        self._producer = Producer(conf)
        self._errors: list[str] = []
        if self.transactional:
            # Fences an older producer with the same id and aborts its open transaction.
            self._producer.init_transactions(30)

    def _on_delivery(self, err, msg) -> None:  # noqa: ANN001 - librdkafka callback
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err}")

    def _produce_all(self, records: Iterable) -> None:
        produce, poll = self._producer.produce, self._producer.poll
        for r in records:
            kwargs = {"partition": r.partition} if r.partition is not None else {}
            while True:
                try:
                    produce(r.topic, r.value, r.key, on_delivery=self._on_delivery, **kwargs)
                    break
                except BufferError:  # local queue full: let librdkafka send, then retry
                    poll(0.05)

    def write(self, records: list) -> None:
        """Write ``records`` durably (all acknowledged, or committed as one transaction); raise
        ``EmitError`` otherwise — the caller then stops, and the inputs are read again."""
        self._errors.clear()
        if self.transactional:
            try:
                self._producer.begin_transaction()
                self._produce_all(records)
                self._producer.commit_transaction(60)
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.txn_requires_abort():
                    try:
                        self._producer.abort_transaction(30)
                    except KafkaException:
                        pass
                raise EmitError(f"transaction failed: {err}") from None
        else:
            self._produce_all(records)
            remaining = self._producer.flush(60)
            if remaining:
                raise EmitError(f"{remaining} records not acknowledged within 60 s")
        if self._errors:
            raise EmitError("delivery failed: " + "; ".join(self._errors[:5]))

    def close(self) -> None:
        self._producer.flush(10)
