"""``python -m phalanx``: the same as the ``phalanx`` command."""

from ._entry import main

main()
