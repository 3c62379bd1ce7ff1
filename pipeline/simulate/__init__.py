"""``tailsift simulate``: what would this config keep? A counterfactual replay of recorded input
(a ``tailsift capture`` file, or a slice of the input topic) through the real job core, in the
input's own event time, writing nothing to Kafka.

``replay`` drives one ``pipeline.job.Job`` per config; ``figures`` accumulates what each keeps
and how that compares with what the input holds; ``clock`` is the simulated worker clock;
``main`` is the command (JSON document and a readable table).
"""
