"""The offline viewer: ``hallugraph view RUN [RUN ...]`` serves a local web app of runs
(summary, evaluation table, ROC curves whose points open their traces), trace lists, token
views, attention graphs and attribution graphs.

Offline by construction: every script and style is a file of this package (``static/``, with d3
v7 vendored from the npm registry beside its licence), pages are plain HTML
(``templates/``), data comes from the app's own ``/api``. Layout: :mod:`.data` (what a page
shows, read lazily from a :class:`hallugraph.store.TraceStore`), :mod:`.attribution` (the
attribution graph JSON), :mod:`.app` (routes), :mod:`.cli` (the command).
"""

from hallugraph.viewer.data import RunView, load_runs

__all__ = ["RunView", "load_runs"]
