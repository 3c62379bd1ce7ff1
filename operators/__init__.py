"""Pure, synchronous operators of the tailsift data path: assemble → decide → (protect) → SLIs.

Nothing here imports Kafka, Faust or asyncio; every operator takes plain dicts and lists and is
testable without a broker. A *span header* is the dict the ingest decode yields for each span
(see ``operators.trace.SpanHeader``).
"""
