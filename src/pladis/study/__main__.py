"""``python -m pladis.study serve|results ...`` (the same commands as ``pladis study``)."""

from .cli import study_app

study_app()
