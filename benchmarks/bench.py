"""Benchmark entry point: ``python benchmarks/bench.py [--clips 16 --threads 2 ...]`` (same as ``asr bench``).

The logic lives in :mod:`asr.bench` so the installed ``asr`` command can run it too.
"""

from asr.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
