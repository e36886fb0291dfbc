"""The stages of a run, side by side: each turns explicit input versions into a new version (ingest, preprocess,
drift, train, infer, cluster, report). No stage imports another; what two share lives below, in ``learning``,
``imaging``, ``data`` and ``store``."""
