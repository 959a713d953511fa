"""Benchmarks, the demo and the training scripts of the digits test-bed.

A package so that scripts and tests import each other by name, without editing
``sys.path``: run a script from the repository root as ``python -m benchmarks.demo``
(``make demo``), ``python -m benchmarks.toy_convergence``, … and import it in tests as
``from benchmarks import demo`` (pytest puts the root on the path: ``pythonpath`` in
pyproject.toml).  Not installed with the library: it needs the ``bench`` and
``diffusers`` extras, the shipped models under ``models/`` and a checkout.
"""
