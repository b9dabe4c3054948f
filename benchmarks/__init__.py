"""Benchmarks for mailworker: ``python -m benchmarks.run`` (``make bench``).

Every figure is printed next to a baseline measured in the same run on the same machine, so the ratios stay
meaningful on a noisy, shared 2-core box where absolute numbers drift. Results and how to read them are in
``docs/benchmarks.md``.
"""
