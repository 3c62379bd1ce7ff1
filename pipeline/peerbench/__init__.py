"""``make bench-peer``: tailsift against the OpenTelemetry Collector's tail sampling (``run.py``),
on OTLP bench traffic (``traffic.py``). Kept apart from the job."""
