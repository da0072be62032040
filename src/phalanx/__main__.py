"""``python -m phalanx``: the same as the ``phalanx`` command."""

from .cli import main

main()
