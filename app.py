"""A Hugging Face Space's entry point (or `python app.py`): `asr demo` on the shipped checkpoint.

A Space sets GRADIO_SERVER_NAME/PORT, which the demo binds to; elsewhere it serves on
127.0.0.1:7860. Nothing is downloaded at start: the weights come from the installed packages.
"""

from asr.demo import main

if __name__ == "__main__":
    raise SystemExit(main())
