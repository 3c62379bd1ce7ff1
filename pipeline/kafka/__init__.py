"""The hot data plane on librdkafka (confluent-kafka): everything here touches Kafka, nothing else does.

- ``clients``      consumer / producer / admin settings derived from the config (one place)
- ``partitioner``  the canonical partition of a trace (murmur2 on the 16 trace-ID bytes)
- ``checkpoint``   what each committed input offset carries in its commit metadata
- ``restore``      decisions read back from ``traces.decisions`` when partitions are assigned
- ``producer``     the transactional producer: outputs + input offsets in one transaction (KIP-447)
- ``worker``       the consumer loop: batches in, ``pipeline.job.Job`` in the middle, transactions out
"""
