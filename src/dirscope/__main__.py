"""``python -m dirscope`` is the ``dirscope`` command."""

from .cli import main

main()
