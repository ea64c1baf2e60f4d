"""``python -m cxrfuse.cli``: the same as the ``cxrfuse`` command."""

from cxrfuse.cli import app

app(prog_name="cxrfuse")
