"""The ``autodrop`` command and what it runs: ``demo``, the NQM report, the benchmark harness
(``bench``, ``calibrate``) and their figures. The library itself does not import this package."""
