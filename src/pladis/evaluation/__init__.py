"""``pladis eval``: generate, score and report paired stock-vs-PLADIS evaluations, resumable and shardable.

* :mod:`.configs` parses ``--config`` strings (``baseline``, ``pladis:scale=2,alpha=1.5``) into ``pladis.apply`` kwargs.
* :mod:`.prompts` loads prompt sets (hub datasets, local txt/CSV/JSONL, the embedded model's ``demo`` set).
* :mod:`.run` is the run folder: ``RUN/images/<config>/<sample_id>.png`` + JSON sidecar (the study app reads it),
  ``run.json`` (the settings), ``prompts.jsonl``, ``manifest.json``.
* :mod:`.generate` renders every (prompt, seed, config) once, sharded by ``accelerate`` rank.
* :mod:`.metrics` holds one lazily imported back-end per metric; :mod:`.score` caches scores per image.
* :mod:`.stats` (paired bootstrap over prompts) and :mod:`.report` (markdown, JSON, PNG plot).
"""
