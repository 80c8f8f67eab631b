"""``python -m pladis.cli`` (and ``accelerate launch -m pladis.cli eval generate ...``) runs the ``pladis`` command."""

from . import main

main()
