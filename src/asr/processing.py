"""`ASRProcessor`: audio -> log-mel features, prompts with exactly N audio positions, ids -> text.

In the shape of transformers' audio-LLM processors (Qwen2-Audio, Voxtral): the processor owns the
feature extractor, the tokenizer and the prompt; the model takes tensors and returns tensors.
``processor(audio=clips)`` gives everything ``model.generate`` needs, ``processor(audio=clips,
text=transcripts)`` a training batch, and ``processor.batch_decode(ids)`` the text. Saved beside a
checkpoint (``preprocessor_config.json``, ``processor_config.json``, tokenizer files), so a
checkpoint folder is complete without the sources it was trained from.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoFeatureExtractor,
    AutoProcessor,
    BatchFeature,
    PreTrainedTokenizerBase,
    WhisperFeatureExtractor,
)
from transformers.processing_utils import ProcessorMixin

from asr import lengths
from asr.audio import AudioError, load_audio
from asr.config import ASRConfig
from asr.first_pass import format_hypotheses
from asr.prompt import PromptBuilder, normalize_target


@dataclass
class PromptConfig:
    """The prompt around the audio (see :mod:`asr.prompt`); Hydra's ``prompt`` group."""

    instruction: str = "Transcribe the audio."
    system_prompt: str | None = "You are a speech recognizer. Write exactly what is said."
    audio_placeholder: str = "<|audio|>"
    # two-pass mode: the line before the first pass's hypotheses
    first_pass_label: str = "First-pass transcript (may contain errors):"

    def __post_init__(self) -> None:
        if self.audio_placeholder and self.instruction and self.audio_placeholder in self.instruction:
            raise ValueError(
                "prompt.instruction must not contain the audio placeholder; it is inserted for you"
            )


class ASRProcessor(ProcessorMixin):
    """Feature extractor + tokenizer + prompt builder of :class:`asr.modeling.ASRModel`.

    Args:
        feature_extractor: Whisper's log-mel extractor (80 or 128 bins, 10 ms hop).
        tokenizer: the LLM's tokenizer; its chat template frames the prompt.
        instruction / system_prompt / audio_placeholder: the prompt (:class:`PromptConfig`).
        projector_stack: k, encoder frames per LLM position, to reserve the right number of
            audio positions before the model runs.
        pad_to_window: pad features to Whisper's 30 s window (the ``padded`` encoder mode).
        target_normalization: how the training transcripts were written
            (:func:`asr.prompt.normalize_target`; training records its ``data.text_normalization``):
            a two-pass model's first pass is written the same way when the model scores it
            against its own answer (``generation.first_pass_rescore``).
    """

    def __init__(
        self,
        feature_extractor: WhisperFeatureExtractor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        instruction: str = PromptConfig.instruction,
        system_prompt: str | None = PromptConfig.system_prompt,
        audio_placeholder: str = PromptConfig.audio_placeholder,
        first_pass_label: str = PromptConfig.first_pass_label,
        projector_stack: int = 5,
        pad_to_window: bool = False,
        target_normalization: str = "none",
        **kwargs: Any,
    ) -> None:
        self.instruction = instruction
        self.system_prompt = system_prompt
        self.audio_placeholder = audio_placeholder
        self.first_pass_label = first_pass_label
        self.projector_stack = int(projector_stack)
        self.pad_to_window = bool(pad_to_window)
        normalize_target("", target_normalization)  # fails early on an unknown mode
        self.target_normalization = target_normalization
        super().__init__(feature_extractor, tokenizer, **kwargs)
        self.prompt_builder = PromptBuilder(
            tokenizer, instruction, system_prompt, audio_placeholder, first_pass_label
        )

    @classmethod
    def from_sources(cls, config: ASRConfig, prompt: PromptConfig | None = None) -> ASRProcessor:
        """The feature extractor and tokenizer of the sources ``config`` names (no network for the
        packaged offline sources; hub ids fail fast offline)."""
        from asr import sources

        if config.encoder_source == sources.RANDOM:
            feature_extractor = WhisperFeatureExtractor(feature_size=config.encoder_config["num_mel_bins"])
        else:
            feature_extractor = sources.load_feature_extractor(config.encoder_source)
        tokenizer_source = config.tokenizer_source or config.decoder_source
        if tokenizer_source == sources.RANDOM:
            raise ValueError("a random decoder needs tokenizer_source (a real tokenizer)")
        tokenizer = sources.load_causal_lm_tokenizer(tokenizer_source)
        return cls(
            feature_extractor,
            tokenizer,
            **asdict(prompt or PromptConfig()),
            projector_stack=config.projector_stack,
            pad_to_window=config.encoder_mode == "padded",
        )

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, config: ASRConfig, legacy: dict[str, Any] | None = None
    ) -> ASRProcessor:
        """The processor saved in a checkpoint folder; for checkpoints saved before processors
        were, the sources' one with the prompt their config recorded (``legacy``, from
        :meth:`ASRConfig.pop_legacy`)."""
        if (Path(path) / "processor_config.json").is_file():
            return cls.from_pretrained(path)
        prompt = {k: v for k, v in (legacy or {}).items() if k in asdict(PromptConfig())}
        return cls.from_sources(config, PromptConfig(**prompt))

    @property
    def prompt_config(self) -> PromptConfig:
        return PromptConfig(
            self.instruction, self.system_prompt, self.audio_placeholder, self.first_pass_label
        )

    def with_prompt(self, prompt: PromptConfig) -> ASRProcessor:
        """The same feature extractor and tokenizer around another prompt."""
        return type(self)(
            self.feature_extractor,
            self.tokenizer,
            **asdict(prompt),
            projector_stack=self.projector_stack,
            pad_to_window=self.pad_to_window,
            target_normalization=self.target_normalization,
        )

    # ------------------------------------------------------------------ audio

    def features(self, audios: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Log-mel features of 16 kHz mono clips (each at most 30 s), padded to the longest.

        ``input_features`` can be a few frames wider than ``mel_lengths`` (zero tail, batch
        padding): consumers read ``mel_lengths``."""
        mel = torch.tensor([lengths.mel_frames(len(a)) for a in audios])
        window = self.feature_extractor.nb_max_frames
        if int(mel.max()) > window:
            raise ValueError(
                f"a clip is longer than Whisper's {lengths.WHISPER_WINDOW_SECONDS:g} s window; "
                "use asr.inference (Transcriber) for long audio"
            )
        # a clip's last frames must not depend on its batch: the extractor reflect-pads the
        # longest clip's end but zero-pads the others; one window of zeros after every clip gives
        # all of them the zero-padded frames of Whisper's own 30 s input
        tail = np.zeros(self.feature_extractor.n_fft, dtype=np.float32)
        out = self.feature_extractor(
            [np.concatenate([np.asarray(a, dtype=np.float32), tail]) for a in audios],
            sampling_rate=lengths.SAMPLE_RATE,
            padding="max_length" if self.pad_to_window else "longest",
            return_tensors="pt",
            return_attention_mask=False,
        )
        return {"input_features": out["input_features"][..., :window], "mel_lengths": mel.clamp(min=1)}

    def audio_positions(self, encoder_lengths: torch.Tensor | list[int]) -> list[int]:
        """Audio positions each clip gets in its prompt, from its encoder frame count."""
        return [int(lengths.audio_positions(int(n), self.projector_stack)) for n in encoder_lengths]

    # ------------------------------------------------------------------ text

    def prompts(
        self,
        n_audio: list[int],
        texts: list[str] | None = None,
        contexts: list[str | None] | str | None = None,
        padding_side: str | None = None,
        first_pass: list[list[str] | None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Token ids, attention mask and audio mask for clips with ``n_audio`` positions; with
        ``texts`` the transcripts are appended and ``labels`` returned (training: right-padded by
        default), without them each prompt ends where the answer begins (generation: left-padded
        by default, as ``generate`` needs). ``first_pass``: each clip's first-pass hypotheses
        (two-pass mode), written into its prompt."""
        contexts = contexts if isinstance(contexts, list) else [contexts] * len(n_audio)
        targets = texts if texts is not None else [None] * len(n_audio)
        hyps = [None if h is None else format_hypotheses(h) for h in first_pass or [None] * len(n_audio)]
        built = [
            self.prompt_builder.build(n, transcript=t, context=c, first_pass=h)
            for n, t, c, h in zip(n_audio, targets, contexts, hyps, strict=True)
        ]
        batch = self.prompt_builder.collate(
            built, padding_side=padding_side or ("right" if texts else "left")
        )
        if texts is None:
            batch.pop("labels")
        return batch

    def __call__(
        self,
        audio: list[np.ndarray] | np.ndarray,
        text: list[str] | str | None = None,
        context: list[str | None] | str | None = None,
        sampling_rate: int = lengths.SAMPLE_RATE,
        first_pass: list[list[str] | None] | None = None,
        **_: Any,
    ) -> BatchFeature:
        """Clips -> model inputs. Each clip goes through :func:`asr.audio.load_audio` (the checks
        files get: integer PCM scaled, channels mixed, resampled from ``sampling_rate``, empty,
        NaN or too short rejected with :class:`~asr.audio.AudioError`).

        Without ``text``: features and left-padded generation prompts. With ``text``: a
        right-padded training batch with ``labels``. ``first_pass``: each clip's first-pass
        hypotheses (two-pass models; :meth:`asr.modeling.ASRModel.run_first_pass`)."""
        clips = self.validate(audio, sampling_rate)
        texts = [text] if isinstance(text, str) else text
        features = self.features(clips)
        n_audio = self.audio_positions(lengths.encoder_frames(features["mel_lengths"]))
        return BatchFeature({**features, **self.prompts(n_audio, texts, context, first_pass=first_pass)})

    @staticmethod
    def validate(
        audio: list[np.ndarray] | np.ndarray, sampling_rate: int = lengths.SAMPLE_RATE
    ) -> list[np.ndarray]:
        """One clip or a list of clips -> checked 16 kHz float32 clips (``<clip i>`` in errors)."""
        single = isinstance(audio, np.ndarray) and audio.ndim == 1
        if not single and not isinstance(audio, list | tuple):
            raise AudioError(f"audio: expected a 1-D array or a list of arrays, got {type(audio).__name__}")
        return [
            load_audio(clip, sampling_rate=sampling_rate, name=f"<clip {i}>")
            for i, clip in enumerate([audio] if single else audio)
        ]

    def batch_decode(self, ids: torch.Tensor | list[list[int]], **kwargs: Any) -> list[str]:
        """Generated ids -> transcripts (special tokens dropped, whitespace trimmed)."""
        kwargs.setdefault("skip_special_tokens", True)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, **kwargs)]

    def decode(self, ids: torch.Tensor | list[int], **kwargs: Any) -> str:
        return self.batch_decode([ids], **kwargs)[0]

    @property
    def pad_token_id(self) -> int:
        return self.prompt_builder.pad_token_id

    @property
    def eos_token_id(self) -> int:
        return self.tokenizer.eos_token_id


AutoFeatureExtractor.register(ASRConfig, WhisperFeatureExtractor)
AutoProcessor.register(ASRConfig, ASRProcessor)
