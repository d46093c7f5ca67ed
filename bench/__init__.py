"""The benchmarks (see README.md); a package so that its modules import one another as
`bench.NAME` from the tests, from mypy and from the scripts run as `python bench/NAME.py`."""
