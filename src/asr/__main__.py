"""``python -m asr ...``: the same as the ``asr`` command (:func:`asr.cli.main`)."""

from asr.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
