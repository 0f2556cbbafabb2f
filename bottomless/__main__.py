"""``python -m bottomless``: the same as the ``bottomless`` command."""

from bottomless.cli import main

main()
