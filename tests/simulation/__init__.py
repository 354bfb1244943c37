"""Seeded, replayable simulation of the money path (in the spirit of TigerBeetle's VOPR).

`harness.py` is the engine; `wide.py` the wider fault classes of issue 10; `providers.py` the
second provider of issue 13; `test_simulation.py` runs it in CI; `test_regressions.py` keeps
failing seeds; `bench/simulate.py` is the long mode.
"""
