"""`ASRConfig`: the one configuration object of the encoder-projector-LLM model.

It records where the frozen parts come from (``*_source``), enough of their own configs to rebuild
their architectures without any network (``encoder_config`` / ``decoder_config``, filled in when
the sources are first loaded), and everything the trainable part and the prompt need.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig

from asr.paths import PACKAGED_SMOLLM2, PACKAGED_WHISPER

ENCODER_MODES = ("variable", "padded")
FIRST_PASS_MODES = ("none", "whisper")
# prompt and decoding options that checkpoints saved before the processor and the generation
# config kept in config.json
LEGACY_KEYS = (
    "instruction",
    "system_prompt",
    "audio_placeholder",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "max_new_tokens_per_second",
    "min_new_tokens",
)


class ASRConfig(PreTrainedConfig):
    """Configuration of :class:`asr.modeling.ASRModel`.

    Args:
        encoder_source: where the Whisper encoder weights come from: a packaged offline source
            (``packaged:whisper-tiny.en``), a hub id, a local directory, or ``random`` (tests).
        decoder_source: the same for the causal LM (``packaged:smollm2-135m-instruct`` offline).
        tokenizer_source: where the LLM tokenizer comes from when it differs from
            ``decoder_source`` (a ``random`` decoder in tests borrows a real tokenizer).
        encoder_config / decoder_config: ``to_dict()`` of the loaded models' configs, so widths are
            always read from the real models and a checkpoint can be rebuilt offline.
        encoder_mode: ``variable`` runs the encoder on the frames that hold audio only;
            ``padded`` pads every clip to Whisper's 30 s window and trims the output.
        projector_type: a key of :data:`asr.projector.PROJECTORS`.
        projector_stack: k, the number of 20 ms encoder frames stacked into one LLM position.
        projector_hidden: hidden width of the projector MLP (default: the LLM width).
        projector_output_rms: initial RMS of the projector output; ``None`` means "match the
            LLM's token embeddings", measured when the decoder is loaded.
        lora: ``None`` or a dict of peft ``LoraConfig`` arguments applied to the LLM.
        encoder_lora: the same for the Whisper encoder.
        first_pass: ``none``, or ``whisper``: two-pass mode, where the encoder source's own
            Whisper decoder transcribes each clip first and its hypotheses join the prompt
            (:mod:`asr.first_pass`).
        first_pass_n_best: hypotheses per clip (1: greedy; N: the N best of a beam of N).
        ctc_weight: weight of the auxiliary CTC loss on the projector output in training
            (:mod:`asr.ctc`); above 0 the model has a CTC head (577 parameters at width 576),
            which inference never uses.

    Architecture only: the prompt lives in :class:`asr.processing.ASRProcessor` and decoding
    options in the generation config (:class:`asr.generation.DecodingConfig`), both saved beside
    a checkpoint. Keys that older checkpoints kept here (``instruction``, ``repetition_penalty``
    ...) are still read, as attributes, when such a checkpoint is loaded.
    """

    model_type = "asr_llm"

    def __init__(
        self,
        encoder_source: str = PACKAGED_WHISPER,
        decoder_source: str = PACKAGED_SMOLLM2,
        tokenizer_source: str | None = None,
        encoder_config: dict[str, Any] | None = None,
        decoder_config: dict[str, Any] | None = None,
        encoder_mode: str = "variable",
        projector_type: str = "stack_mlp",
        projector_stack: int = 5,
        projector_hidden: int | None = None,
        projector_dropout: float = 0.0,
        projector_output_rms: float | None = None,
        lora: dict[str, Any] | None = None,
        encoder_lora: dict[str, Any] | None = None,
        first_pass: str = "none",
        first_pass_n_best: int = 1,
        ctc_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.encoder_source = encoder_source
        self.decoder_source = decoder_source
        self.tokenizer_source = tokenizer_source
        self.encoder_config = encoder_config
        self.decoder_config = decoder_config
        self.encoder_mode = encoder_mode
        self.projector_type = projector_type
        self.projector_stack = int(projector_stack)
        self.projector_hidden = projector_hidden
        self.projector_dropout = float(projector_dropout)
        self.projector_output_rms = projector_output_rms
        self.lora = dict(lora) if lora else None
        self.encoder_lora = dict(encoder_lora) if encoder_lora else None
        self.first_pass = first_pass
        self.first_pass_n_best = int(first_pass_n_best)
        self.ctc_weight = float(ctc_weight)
        super().__init__(**kwargs)
        self.validate()

    def validate(self) -> None:
        """Fail early, naming the key, on values that would only break deep inside a run."""
        if self.encoder_mode not in ENCODER_MODES:
            raise ValueError(f"encoder_mode={self.encoder_mode!r}: expected one of {ENCODER_MODES}")
        if self.projector_stack < 1:
            raise ValueError(f"projector_stack={self.projector_stack}: must be >= 1")
        if self.first_pass not in FIRST_PASS_MODES:
            raise ValueError(f"first_pass={self.first_pass!r}: expected one of {FIRST_PASS_MODES}")
        if self.ctc_weight < 0:
            raise ValueError(f"ctc_weight={self.ctc_weight}: must be >= 0")
        if self.first_pass_n_best < 1:
            raise ValueError(f"first_pass_n_best={self.first_pass_n_best}: must be >= 1")

    def pop_legacy(self) -> dict[str, Any]:
        """Remove and return the prompt/decoding keys an older checkpoint's config.json held."""
        return {key: self.__dict__.pop(key) for key in LEGACY_KEYS if key in self.__dict__}

    @property
    def encoder_width(self) -> int:
        """Width of the encoder's output frames, read from the loaded encoder's config."""
        if not self.encoder_config:
            raise ValueError("encoder_config is unset: load the encoder (ASRModel.from_sources) first")
        return int(self.encoder_config["d_model"])

    @property
    def decoder_width(self) -> int:
        """Width of the LLM's embeddings, read from the loaded decoder's config."""
        if not self.decoder_config:
            raise ValueError("decoder_config is unset: load the decoder (ASRModel.from_sources) first")
        return int(self.decoder_config["hidden_size"])
