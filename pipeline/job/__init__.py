"""The job's synchronous core: ingest → route/assemble → decide → protect → emit records, SLIs beside.

No Kafka here: ``Job.ingest`` takes received messages, ``Job.collect`` returns an ``Outbox`` of
records to produce, each with the input ``Hold``s it discharges. The data plane
(``pipeline.kafka.worker``) writes the outbox in one transaction, then calls ``delivered`` and
commits ``ready`` offsets — so an input offset is committed only with everything derived from it.

Read it as the data path, one module per stage (each a mixin over the ``Job``'s state):

- ``ingest``   every wire format through one codec interface (``pipeline.codecs.interface``):
               message → per-trace ``Fragment``s; malformed → dead letter; misplaced → re-keyed;
               SLI windows count every span
- ``route``    a fragment of an undecided trace is buffered (``operators.assemble.Buffered``: raw
               bytes); one of a decided trace follows the decision (late kept / dropped / replayed)
- ``decide``   due traces decoded again (headers), judged by the policies → decision record
- ``protect``  kept traces fully decoded, PII-protected, annotated, encoded (split when too large)
- ``emit``     decision, SLI, dead-letter and audit records
- ``records``  ``Received``, ``Record``, ``Outbox``; ``core`` the ``Job`` and its lifecycle
"""

from pipeline.job.core import Job
from pipeline.job.decide import FOLLOWED_LINK
from pipeline.job.records import MAX_RECORD_BYTES, Outbox, Received, Record

__all__ = ["FOLLOWED_LINK", "MAX_RECORD_BYTES", "Job", "Outbox", "Received", "Record"]
