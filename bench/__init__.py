"""pryxbus's benchmark harness: pryxbus and the systems people would pick instead, side by side.

Run ``pryxbus bench --quick`` (or ``python -m bench``); see ``bench.cli`` for the options and
``bench.scenarios`` for what is measured.
"""
