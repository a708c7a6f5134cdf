"""The benchmark suite behind ``autodrop bench``: AutoDrop against the LR schedules people use.

``tasks`` (data + models), ``schedules`` (the compared rows), ``runner``
(what a suite runs, and running it), ``report`` (tables and figures),
``command`` (the CLI). Needs the ``bench`` extra.
"""
