"""`ASRModel`: frozen Whisper encoder -> trainable projector -> frozen causal LM.

The constructor only builds modules (from the sub-configs, or from modules handed in); weights
are fetched by :meth:`ASRModel.from_sources` (frozen parts) and :meth:`ASRModel.from_pretrained`
(frozen parts plus the saved trainable part). ``save_pretrained`` writes the config and the
trainable weights only: the projector, and LoRA adapters when present (a few MB).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    WhisperConfig,
    WhisperFeatureExtractor,
)
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from asr import sources
from asr.audio import HOP_LENGTH, SAMPLE_RATE
from asr.config import PACKAGED_SMOLLM2, ASRConfig
from asr.encoder import AudioEncoder
from asr.projector import build_projector
from asr.prompt import IGNORE_INDEX, PromptBuilder

WEIGHTS_NAME = "model.safetensors"


def embedding_rms(decoder: PreTrainedModel) -> float:
    """Median RMS of the LLM's token embeddings: the scale audio vectors should enter at."""
    weight = decoder.get_input_embeddings().weight.detach().float()
    return float(weight.pow(2).mean(-1).sqrt().median())


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, audio_mask: torch.Tensor) -> int:
    """How many leading positions every row shares: same token, attended, before any audio."""
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0) & ~audio_mask.any(0)
    return int(same.int().cumprod(0).sum())


class GeneratedRepetitionPenalty(LogitsProcessor):
    """CTRL's repetition penalty on the generated tokens (``input_ids`` when generating from
    ``inputs_embeds``).

    transformers' own processor skips each row's first ``left padding`` generated tokens in that
    case (it takes the padding for a prompt inside ``input_ids``), so in a left-padded batch the
    short clips went unpenalised and a transcript depended on the batch it was decoded in.
    """

    def __init__(self, penalty: float) -> None:
        self.penalty = float(penalty)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] == 0:
            return scores
        picked = scores.gather(1, input_ids)
        picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return scores.scatter(1, input_ids, picked)


class ASRModel(PreTrainedModel):
    config_class = ASRConfig
    base_model_prefix = "asr"
    main_input_name = "input_features"
    _supports_sdpa = True

    def __init__(
        self,
        config: ASRConfig,
        encoder: WhisperEncoder | None = None,
        decoder: PreTrainedModel | None = None,
    ) -> None:
        super().__init__(config)
        if encoder is None:
            encoder = WhisperEncoder(WhisperConfig(**config.encoder_config))
        if decoder is None:
            decoder_config = dict(config.decoder_config)
            decoder = AutoModelForCausalLM.from_config(AutoConfig.for_model(decoder_config.pop("model_type"), **decoder_config))
        self.encoder = AudioEncoder(encoder, config.encoder_mode)
        self.decoder = decoder
        self.projector = build_projector(config)
        for part in (self.encoder, self.decoder):
            part.requires_grad_(False)
            part.eval()
        if config.lora:
            self._add_lora(self.decoder, config.lora)
        if config.encoder_lora:
            self._add_lora(self.encoder.whisper, config.encoder_lora)
        self.feature_extractor: WhisperFeatureExtractor | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.prompts: PromptBuilder | None = None

    @staticmethod
    def _add_lora(module: nn.Module, lora: dict[str, Any]) -> None:
        args = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], **lora}
        inject_adapter_in_model(LoraConfig(**args), module)

    def train(self, mode: bool = True) -> ASRModel:
        """Frozen parts stay in eval mode (no dropout) whatever the trainer asks."""
        super().train(mode)
        if not self.config.encoder_lora:
            self.encoder.eval()
        if not self.config.lora:
            self.decoder.eval()
        return self

    # ------------------------------------------------------------------ loading and saving

    def attach_processor(self, feature_extractor: WhisperFeatureExtractor, tokenizer: PreTrainedTokenizerBase) -> None:
        """Give the model what it needs to turn audio into features and token ids into text."""
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.prompts = PromptBuilder.from_config(tokenizer, self.config)

    @classmethod
    def from_sources(cls, config: ASRConfig, dtype: torch.dtype = torch.float32) -> ASRModel:
        """Build the model with pretrained frozen parts and a freshly initialised projector.

        Widths are read from the loaded models and recorded in ``config`` so a saved checkpoint
        can be rebuilt without guessing.
        """
        if config.encoder_source == sources.RANDOM:
            whisper_config = WhisperConfig(**config.encoder_config)
            encoder = WhisperEncoder(whisper_config)
            feature_extractor = WhisperFeatureExtractor(feature_size=whisper_config.num_mel_bins)
        else:
            whisper, feature_extractor = sources.load_whisper(config.encoder_source)
            encoder, whisper_config = whisper.model.encoder, whisper.config
        if config.decoder_source == sources.RANDOM:
            decoder = None
            tokenizer = sources.load_causal_lm_tokenizer(config.tokenizer_source or PACKAGED_SMOLLM2)
        else:
            decoder, tokenizer = sources.load_causal_lm(config.decoder_source, dtype)
            config.decoder_config = decoder.config.to_dict()
        if config.tokenizer_source and config.decoder_source != sources.RANDOM:
            tokenizer = sources.load_causal_lm_tokenizer(config.tokenizer_source)
        config.encoder_config = whisper_config.to_dict()
        model = cls(config, encoder=encoder, decoder=decoder)
        if config.projector_output_rms is None:
            config.projector_output_rms = embedding_rms(model.decoder)
            model.projector = build_projector(config)
        model.attach_processor(feature_extractor, tokenizer)
        return model.to(dtype)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32, new_lora: bool = False, **kwargs: Any
    ) -> ASRModel:
        """Load a checkpoint written by :meth:`save_pretrained`: the frozen parts come from the
        sources named in its config, the trainable part from its ``model.safetensors``
        (``new_lora``: LoRA adapters in ``config`` but not in the checkpoint keep their init)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json; not a checkpoint saved by ASRModel.save_pretrained")
        config = kwargs.pop("config", None)  # AutoModel.from_pretrained passes it, with any overrides
        if not isinstance(config, ASRConfig):
            config = ASRConfig.from_pretrained(path, **kwargs)
        model = cls.from_sources(config, dtype)
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: trainable weights missing from the checkpoint")
        model.load_trainable_state_dict(load_file(str(weights)), new_lora=new_lora)
        return model

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().contiguous() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], new_lora: bool = False) -> None:
        """Load saved trainable weights; every one must fit. With ``new_lora`` the model's LoRA
        weights may be missing from ``state`` (adapters added for a new stage keep their init)."""
        expected = set(self.trainable_state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if new_lora:
            missing = {name for name in missing if ".lora_" not in name}
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit the model: missing={sorted(missing)[:5]} unexpected={sorted(unexpected)[:5]}")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value.to(params[name].dtype))

    def save_pretrained(self, save_directory: str | os.PathLike, state_dict: dict | None = None, **_: Any) -> None:
        """Write ``config.json`` and the trainable weights, each atomically (temp file + rename)."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        trainable = set(self.trainable_state_dict())
        state = {k: v for k, v in (state_dict or self.trainable_state_dict()).items() if k in trainable}
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        os.close(fd)
        save_file({k: v.cpu().contiguous() for k, v in state.items()}, tmp, metadata={"format": "pt"})
        os.replace(tmp, directory / WEIGHTS_NAME)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.config.to_dict(), f, indent=2, sort_keys=True)
        os.replace(tmp, directory / "config.json")

    # ------------------------------------------------------------------ audio -> LLM inputs

    def features(self, audios: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Log-mel features of 16 kHz mono clips (each at most 30 s), padded to the longest.

        ``input_features`` can be a few frames wider than ``mel_lengths`` (zero tail, batch
        padding): consumers must read ``mel_lengths``, as :meth:`encode` does."""
        if self.feature_extractor is None:
            raise RuntimeError("no feature extractor attached: load with from_sources/from_pretrained")
        lengths = torch.tensor([len(a) // HOP_LENGTH for a in audios])
        window = self.encoder.window
        if int(lengths.max()) > window:
            raise ValueError(f"a clip is longer than Whisper's {window * HOP_LENGTH / SAMPLE_RATE:.0f} s window; use asr.transcribe for long audio")
        padding = "max_length" if self.config.encoder_mode == "padded" else "longest"
        # a clip's last frames must not depend on its batch: the extractor reflect-pads the
        # longest clip's end but zero-pads the others; one window of zeros after every clip gives
        # all of them the zero-padded frames of Whisper's own 30 s input
        tail = np.zeros(self.feature_extractor.n_fft, dtype=np.float32)
        out = self.feature_extractor(
            [np.concatenate([np.asarray(a, dtype=np.float32), tail]) for a in audios],
            sampling_rate=SAMPLE_RATE,
            padding=padding,
            return_tensors="pt",
            return_attention_mask=False,
        )
        features = out["input_features"][..., :window]
        return {"input_features": features.to(self.dtype), "mel_lengths": lengths.clamp(min=1)}

    def encode(self, input_features: torch.Tensor, mel_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder frames (B, T, width) with the frames past each clip's length zeroed."""
        frames, lengths = self.encoder(input_features, mel_lengths)
        keep = torch.arange(frames.shape[1], device=frames.device)[None, :] < lengths[:, None]
        return frames * keep[..., None].to(frames.dtype), lengths

    def project(self, frames: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected audio (B, P, llm_width) and each clip's number of valid positions."""
        keep = torch.arange(frames.shape[1], device=frames.device)[None, :] < lengths[:, None]
        projected = self.projector(frames * keep[..., None].to(frames.dtype))
        return projected, self.projector.output_length(lengths)

    def audio_embeddings(
        self,
        input_features: torch.Tensor | None = None,
        mel_lengths: torch.Tensor | None = None,
        encoder_frames: torch.Tensor | None = None,
        encoder_lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """From features (run the encoder) or from cached encoder frames (skip it)."""
        if encoder_frames is None:
            if input_features is None or mel_lengths is None:
                raise ValueError("pass input_features and mel_lengths, or encoder_frames and encoder_lengths")
            encoder_frames, encoder_lengths = self.encode(input_features, mel_lengths)
        return self.project(encoder_frames.to(self.projector_dtype), encoder_lengths)

    @property
    def projector_dtype(self) -> torch.dtype:
        return next(self.projector.parameters()).dtype

    def merge(self, input_ids: torch.Tensor, audio_mask: torch.Tensor, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the audio positions replaced by the projected vectors, in order."""
        embeds = self.decoder.get_input_embeddings()(input_ids)
        valid = torch.arange(audio.shape[1], device=audio.device)[None, :] < lengths[:, None]
        vectors = audio[valid]
        if vectors.shape[0] != int(audio_mask.sum()):
            raise ValueError(f"prompt has {int(audio_mask.sum())} audio positions, projector gave {vectors.shape[0]}")
        return embeds.masked_scatter(audio_mask[..., None], vectors.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        audio_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        mel_lengths: torch.Tensor | None = None,
        encoder_frames: torch.Tensor | None = None,
        encoder_lengths: torch.Tensor | None = None,
        logits_at_labels: bool = True,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits over the whole sequence, or with ``labels`` (training) the loss.

        With ``labels`` and ``logits_at_labels`` (the default) two shortcuts give the same loss
        (tested) for less work: the prompt's head (chat template and system prompt, identical in
        every row of a right-padded batch) runs through the LLM once and its keys/values are
        shared by the batch, and the LM head runs only at the positions that predict a label, so
        ``logits`` is (n_labels, vocab). For SmolLM2 on short clips that skips about a quarter of
        the tokens, and the 49k-way projection everywhere but the transcript.
        """
        audio, lengths = self.audio_embeddings(input_features, mel_lengths, encoder_frames, encoder_lengths)
        embeds = self.merge(input_ids, audio_mask, audio, lengths)
        if labels is None or not logits_at_labels:
            return self.decoder(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)
        body = self.decoder.get_decoder()
        head = shared_prefix_length(input_ids, attention_mask, audio_mask) if len(input_ids) > 1 else 0
        past = None
        if head:
            past = DynamicCache(config=self.decoder.config)
            body(inputs_embeds=embeds[:1, :head], attention_mask=attention_mask[:1, :head], past_key_values=past, use_cache=True)
            past.batch_repeat_interleave(len(input_ids))
        hidden = body(
            inputs_embeds=embeds[:, head:], attention_mask=attention_mask, past_key_values=past, use_cache=head > 0, **kwargs
        ).last_hidden_state
        targets = labels[:, head + 1 :]
        scored = targets != IGNORE_INDEX  # position t predicts token t + 1
        logits = self.decoder.get_output_embeddings()(hidden[:, :-1][scored])
        loss = nn.functional.cross_entropy(logits.float(), targets[scored])
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    # ------------------------------------------------------------------ generation

    def max_new_tokens_for(self, mel_lengths: torch.Tensor) -> int:
        """Decoding cap from the longest clip's duration: stops repetition loops early."""
        seconds = float(mel_lengths.max()) * HOP_LENGTH / SAMPLE_RATE
        return self.config.min_new_tokens + math.ceil(seconds * self.config.max_new_tokens_per_second)

    @torch.no_grad()
    def generate(
        self,
        input_features: torch.Tensor | None = None,
        mel_lengths: torch.Tensor | None = None,
        encoder_frames: torch.Tensor | None = None,
        encoder_lengths: torch.Tensor | None = None,
        context: list[str | None] | str | None = None,
        num_beams: int = 1,
        max_new_tokens: int | None = None,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Transcribe a batch (greedy, or beam search with ``num_beams > 1``); returns text."""
        if self.prompts is None:
            raise RuntimeError("no tokenizer attached: load with from_sources/from_pretrained")
        audio, lengths = self.audio_embeddings(input_features, mel_lengths, encoder_frames, encoder_lengths)
        batch = len(lengths)
        contexts = context if isinstance(context, list) else [context] * batch
        prompts = [self.prompts.build(int(n), context=c) for n, c in zip(lengths, contexts, strict=True)]
        inputs = self.prompts.collate(prompts, padding_side="left")
        inputs = {k: v.to(audio.device) for k, v in inputs.items()}
        embeds = self.merge(inputs["input_ids"], inputs["audio_mask"], audio, lengths)
        caps = None
        if max_new_tokens is None:
            mel = mel_lengths if mel_lengths is not None else encoder_lengths * 2
            caps = [self.max_new_tokens_for(m[None]) for m in mel]
            max_new_tokens = max(caps)
        penalty = generate_kwargs.pop("repetition_penalty", self.config.repetition_penalty)
        processors = LogitsProcessorList(generate_kwargs.pop("logits_processor", None) or [])
        if penalty is not None and penalty != 1.0:
            processors.append(GeneratedRepetitionPenalty(penalty))
        options = {
            "max_new_tokens": max_new_tokens,
            "num_beams": num_beams,
            "do_sample": False,
            "repetition_penalty": 1.0,  # applied by GeneratedRepetitionPenalty
            "logits_processor": processors,
            "no_repeat_ngram_size": self.config.no_repeat_ngram_size,
            "eos_token_id": self.tokenizer.eos_token_id,
            "pad_token_id": self.prompts.pad_token_id,
            **generate_kwargs,
        }
        tokens = self.decoder.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], **options)
        if caps is not None:  # each clip's own cap, so a short clip decodes the same in any batch
            tokens = [row[:cap] for row, cap in zip(tokens, caps, strict=True)]
        return [t.strip() for t in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]

    @torch.no_grad()
    def transcribe(self, audios: list[np.ndarray], context: list[str | None] | str | None = None, **kwargs: Any) -> list[str]:
        """16 kHz mono clips (each at most 30 s) -> text, in one batch."""
        features = self.features(audios)
        return self.generate(**{k: v.to(self.device) for k, v in features.items()}, context=context, **kwargs)


AutoConfig.register(ASRConfig.model_type, ASRConfig)
AutoModel.register(ASRConfig, ASRModel)
