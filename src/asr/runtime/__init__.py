"""Inference without torch: a checkpoint exported once to float32 arrays and run in NumPy (a
two-pass model's first pass in CTranslate2, as in torch).

Whoever only transcribes pays neither torch's import (about 5 s and 530 MiB on the reference VM)
nor transformers' (its model classes pull torch.compile's machinery: ~10 s more) nor the eager
module overhead of every decoding step. The ``asr`` command uses it for every checkpoint it can
run (``--runtime auto``, the default; ``--runtime torch`` for the training stack's path):

- :mod:`asr.runtime.export`: the once-per-checkpoint export (with torch) and its cache;
- :mod:`asr.runtime.numpy_model`: the arithmetic (log-mel, Whisper encoder, projector, Llama with
  a key/value cache, greedy and beam search, the teacher-forced scores of two-pass rescoring: the LLM's
  and Whisper's decoder's), checked against the torch modules in tests/test_runtime.py;
- :mod:`asr.runtime.model`: :class:`RuntimeModel`, clips in, text out.
"""

from asr.runtime.export import prepare, unsupported
from asr.runtime.model import RuntimeModel

__all__ = ["RuntimeModel", "prepare", "unsupported"]
