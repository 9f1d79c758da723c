"""``python -m cas.cli``: the same as the ``cas`` console script."""

from cas.cli.program import entry

entry()
