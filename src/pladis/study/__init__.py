"""``pladis study``: the paper's blind pairwise preference study (supplement D) as a small web app.

Evaluators see two images made for one prompt, one from config A (e.g. the baseline) and one from config B (e.g.
PLADIS), in random order and sides, and answer the paper's questions. Votes live in a real database (SQLite by
default, any SQLAlchemy URL); :mod:`pladis.study.results` summarises them with Wilson intervals and an exact
binomial test.

Needs the ``study`` extra: ``pip install 'pladis[study]'``. Nothing here imports pladis' model code.
"""

from .loader import Pair, StudyInputError, load_pairs_from_dirs, load_pairs_from_run

__all__ = ["Pair", "StudyInputError", "load_pairs_from_dirs", "load_pairs_from_run"]
