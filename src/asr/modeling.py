"""`ASRModel`: frozen Whisper encoder -> trainable projector -> frozen causal LM.

Tensors in, tensors out: ``forward`` gives the loss (or logits), ``generate`` token ids; the
:class:`~asr.processing.ASRProcessor` makes the inputs and turns ids into text. The constructor only
builds modules (from the sub-configs, or from modules handed in); weights are fetched by
:meth:`ASRModel.from_sources` (frozen parts) and :meth:`ASRModel.from_pretrained` (frozen parts plus
the saved trainable part). ``save_pretrained`` writes the config, the generation config and the
trainable weights only: the projector, and LoRA adapters when present (a few MB).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSpeechSeq2Seq,
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    WhisperConfig,
)
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from asr import lengths, sources
from asr.config import ASRConfig
from asr.ctc import CTCHead
from asr.ctc_guide import CTCPrefixScorer, best, guided_scores, log_softmax
from asr.encoder import AudioEncoder
from asr.first_pass import FirstPass, disagreements, load_first_pass
from asr.generation import DecodingConfig, through_eos
from asr.processing import ASRProcessor
from asr.projector import build_projector
from asr.prompt import IGNORE_INDEX

WEIGHTS_NAME = "model.safetensors"
HUB_KWARGS = {
    "revision",
    "token",
    "cache_dir",
    "local_files_only",
    "trust_remote_code",
    "device_map",
    "subfolder",
}
GENERATION_CONFIG_NAME = "generation_config.json"
# decoding options that checkpoints saved before the generation config kept in config.json
LEGACY_DECODING = {  # old name -> DecodingConfig field
    "repetition_penalty": "repetition_penalty",
    "no_repeat_ngram_size": "no_repeat_ngram_size",
    "max_new_tokens_per_second": "max_new_tokens_per_second",
    "min_new_tokens": "max_new_tokens_base",
}


def load_decoding(path: str | os.PathLike, legacy: dict[str, Any]) -> DecodingConfig:
    """Decoding options saved beside a checkpoint (or, in an older one, inside its config:
    ``legacy``, from :meth:`ASRConfig.pop_legacy`)."""
    if (Path(path) / GENERATION_CONFIG_NAME).is_file():
        return DecodingConfig.from_generation_config(GenerationConfig.from_pretrained(path))
    return DecodingConfig(**{new: legacy[old] for old, new in LEGACY_DECODING.items() if old in legacy})


def embedding_rms(decoder: PreTrainedModel) -> float:
    """Median RMS of the LLM's token embeddings: the scale audio vectors should enter at."""
    weight = decoder.get_input_embeddings().weight.detach().float()
    return float(weight.pow(2).mean(-1).sqrt().median())


def shared_prefix_length(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, audio_mask: torch.Tensor
) -> int:
    """How many leading positions every row shares: same token, attended, before any audio."""
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0) & ~audio_mask.any(0)
    return int(same.int().cumprod(0).sum())


LORA_DEFAULTS: dict[str, Any] = {
    "r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "target_modules": ["q_proj", "v_proj"],
}


def lora_args(lora: dict[str, Any]) -> dict[str, Any]:
    """peft ``LoraConfig`` arguments: the config's ``lora`` dict over our defaults."""
    return {**LORA_DEFAULTS, **lora}


def lora_scale(lora: dict[str, Any]) -> float | None:
    """The factor of ``W + scale * B @ A`` (alpha / r; alpha / sqrt(r) with rsLoRA); ``None`` for
    variants that only peft merges (DoRA, per-module ranks or alphas, transposed weights)."""
    args = lora_args(lora)
    if any(args.get(key) for key in ("use_dora", "rank_pattern", "alpha_pattern", "fan_in_fan_out")):
        return None
    r = args["r"]
    return args["lora_alpha"] / (math.sqrt(r) if args.get("use_rslora") else r)


def read_weights(weights: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's ``model.safetensors``, with errors that name the file."""
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: trainable weights missing from the checkpoint")
    try:
        return load_file(str(weights))
    except Exception as err:  # noqa: BLE001 - safetensors' own errors do not name the file
        raise OSError(f"{weights}: unreadable checkpoint weights ({err}); was the file cut short?") from err


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


class CTCGuide(LogitsProcessor):
    """CTC-guided greedy decoding (:mod:`asr.ctc_guide`): each row's ``top_k`` likeliest tokens
    keep their joint LLM + CTC score, every other token -inf. Runs after the repetition penalty,
    as the NumPy runtime's greedy does; a row's scorer advances by the token chosen last step."""

    def __init__(self, scorers: list[CTCPrefixScorer], weight: float, top_k: int, eos: int) -> None:
        self.scorers, self.weight, self.top_k, self.eos = scorers, weight, top_k, eos
        self.ended = [False] * len(scorers)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.full_like(scores, float("-inf"))
        rows = log_softmax(scores.float().cpu().numpy())
        for i, scorer in enumerate(self.scorers):
            if input_ids.shape[1] and not self.ended[i]:
                token = int(input_ids[i, -1])
                if token == self.eos:
                    self.ended[i] = True
                else:
                    scorer.advance(token)
            if self.ended[i]:  # a finished row's tokens are padding: any will do
                out[i] = scores[i]
                continue
            joint = guided_scores(rows[i], scorer, self.weight, self.top_k, self.eos)
            out[i, best(joint)] = 0.0
        return out


@dataclass
class ASROutput(CausalLMOutputWithPast):
    """The decoder's output, plus the two training losses when a CTC head is trained."""

    lm_loss: torch.FloatTensor | None = None
    ctc_loss: torch.FloatTensor | None = None


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
            decoder = AutoModelForCausalLM.from_config(
                AutoConfig.for_model(decoder_config.pop("model_type"), **decoder_config)
            )
        self.encoder = AudioEncoder(encoder, config.encoder_mode)
        self.decoder = decoder
        self.projector = build_projector(config)
        self.ctc_head = CTCHead(config.decoder_width) if config.ctc_weight > 0 else None
        for part in (self.encoder, self.decoder):
            part.requires_grad_(False)
            part.eval()
        if config.lora:
            self._add_lora(self.decoder, config.lora)
        if config.encoder_lora:
            self._add_lora(self.encoder.whisper, config.encoder_lora)
        self.generation_config = DecodingConfig().to_generation_config()
        # the processor that :meth:`transcribe` uses; set by from_sources/from_pretrained
        self.processor: ASRProcessor | None = None
        self._first_pass: FirstPass | None = None  # loaded on first use (two-pass mode)

    @staticmethod
    def _add_lora(module: nn.Module, lora: dict[str, Any]) -> None:
        from peft import LoraConfig, inject_adapter_in_model  # imported here: ~2-8 s, training only

        inject_adapter_in_model(LoraConfig(**lora_args(lora)), module)

    def _fold_lora(self, state: dict[str, torch.Tensor], scales: dict[str, float]) -> None:
        """Add ``scale * B @ A`` of each saved adapter pair to the weight it adapts (a model built
        without adapters): what peft's merge computes, without importing peft."""
        params = dict(self.named_parameters())
        with torch.no_grad():
            for key, a in state.items():
                if ".lora_A." not in key:
                    continue
                target = key.split(".lora_A.")[0]
                b = state[key.replace(".lora_A.", ".lora_B.")]
                scale = scales["lora" if target.startswith("decoder.") else "encoder_lora"]
                weight = params[f"{target}.weight"]
                weight += (scale * (b.float() @ a.float())).to(weight.dtype)

    def merge_adapters(self) -> ASRModel:
        """Fold the LoRA adapters into the frozen weights, for inference: the same outputs (to
        float rounding) without the adapters' extra matmuls at every position. The adapter
        weights stay (``trainable_state_dict`` and saving are unchanged); training is refused."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.modules():
            if isinstance(module, BaseTunerLayer) and not module.merged:
                module.merge()
        self.adapters_merged = True
        return self.eval()

    def train(self, mode: bool = True) -> ASRModel:
        """Frozen parts stay in eval mode (no dropout) whatever the trainer asks."""
        if mode and (getattr(self, "adapters_merged", False) or getattr(self, "lora_folded", False)):
            raise RuntimeError(
                "the LoRA adapters are merged for inference: load the checkpoint again to train"
            )
        super().train(mode)
        if not self.config.encoder_lora:
            self.encoder.eval()
        if not self.config.lora:
            self.decoder.eval()
        return self

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_sources(
        cls, config: ASRConfig, dtype: torch.dtype = torch.float32, processor: ASRProcessor | None = None
    ) -> ASRModel:
        """Build the model with pretrained frozen parts and a freshly initialised projector.

        Widths are read from the loaded models and recorded in ``config`` so a saved checkpoint
        can be rebuilt without guessing. ``processor`` (default: the sources' own) is attached for
        :meth:`transcribe` and gives the generation config its token ids.
        """
        if config.encoder_source == sources.RANDOM:
            whisper_config = WhisperConfig(**config.encoder_config)
            encoder = WhisperEncoder(whisper_config)
        else:
            whisper, _ = sources.load_whisper(config.encoder_source)
            encoder, whisper_config = whisper.model.encoder, whisper.config
        decoder = None
        if config.decoder_source != sources.RANDOM:
            decoder = sources.load_causal_lm(config.decoder_source, dtype)
            config.decoder_config = decoder.config.to_dict()
        config.encoder_config = whisper_config.to_dict()
        model = cls(config, encoder=encoder, decoder=decoder)
        if config.projector_output_rms is None:
            config.projector_output_rms = embedding_rms(model.decoder)
            model.projector = build_projector(config)
        model.set_processor(processor or ASRProcessor.from_sources(config))
        return model.to(dtype)

    def set_processor(self, processor: ASRProcessor) -> None:
        """Attach the processor :meth:`transcribe` uses; generation stops at its end-of-turn token."""
        self.processor = processor
        self.generation_config.eos_token_id = processor.eos_token_id
        self.generation_config.pad_token_id = processor.pad_token_id

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype | str | None = torch.float32,
        new_lora: bool = False,
        merge_lora: bool = False,
        **kwargs: Any,
    ) -> ASRModel:
        """Load a checkpoint written by :meth:`save_pretrained`: the frozen parts come from the
        sources named in its config, the trainable part from its ``model.safetensors``, decoding
        options from ``generation_config.json`` and the processor from its files
        (``new_lora``: LoRA adapters in ``config`` but not in the checkpoint keep their init).

        ``merge_lora`` (inference): plain LoRA adapters are folded into the frozen weights as the
        model is built, without peft (whose import alone takes seconds) and without the adapters'
        matmuls at every position; such a model can neither train nor be saved.

        ``path`` may also be a hub id (``user/repo``, as written by :meth:`push_to_hub`): it is
        downloaded once into the hub cache; offline and not cached, it fails in seconds
        (:func:`asr.sources.resolve`)."""
        path = Path(path)
        if not path.exists() and sources.looks_like_hub_id(str(path)):
            try:
                path = sources.resolve(str(path))
            except sources.SourceError as err:
                raise FileNotFoundError(f"{path}: no such checkpoint folder; as a hub id: {err}") from err
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path}: no config.json; not a checkpoint saved by ASRModel.save_pretrained"
            )
        dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32  # "auto", None: as saved (float32)
        # what Auto classes and pipeline() pass along for hub loading; a local folder needs none of it
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_") and k not in HUB_KWARGS}
        config = kwargs.pop("config", None)  # AutoModel.from_pretrained passes it, with any overrides
        if not isinstance(config, ASRConfig):
            config = ASRConfig.from_pretrained(path, **kwargs)
        legacy = config.pop_legacy()
        adapters = {key: getattr(config, key) for key in ("lora", "encoder_lora") if getattr(config, key)}
        scales = {key: lora_scale(args) for key, args in adapters.items()}
        fold = merge_lora and bool(adapters) and None not in scales.values()
        if fold:  # build without adapters; their weights are added below
            config.lora = config.encoder_lora = None
        model = cls.from_sources(config, dtype, processor=ASRProcessor.from_checkpoint(path, config, legacy))
        state = read_weights(path / WEIGHTS_NAME)
        if fold:
            adapter_state = {k: state.pop(k) for k in list(state) if ".lora_" in k}
            model.load_trainable_state_dict(state)
            model._fold_lora(adapter_state, scales)
            for key, args in adapters.items():  # the config still says what the checkpoint is
                setattr(config, key, args)
            model.lora_folded = True
            model.eval()
        else:
            model.load_trainable_state_dict(state, new_lora=new_lora)
            if merge_lora and adapters:
                model.merge_adapters()  # a LoRA variant that only peft knows how to merge
        model.set_decoding(load_decoding(path, legacy))
        model.config.name_or_path = str(path)  # where push_to_hub finds the model card
        return model

    @property
    def decoding(self) -> DecodingConfig:
        """The decoding options ``generate`` uses by default."""
        return DecodingConfig.from_generation_config(self.generation_config)

    def set_decoding(self, decoding: DecodingConfig) -> None:
        """Replace the decoding options (token ids stay)."""
        ids = {k: getattr(self.generation_config, k) for k in ("eos_token_id", "pad_token_id")}
        self.generation_config = decoding.to_generation_config()
        for key, value in ids.items():
            setattr(self.generation_config, key, value)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().contiguous() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], new_lora: bool = False) -> None:
        """Load saved trainable weights; every one must fit. With ``new_lora`` the model's LoRA
        weights may be missing from ``state`` (adapters added for a new stage keep their init).
        A CTC head is a training aid: one missing from ``state`` keeps its init, and one in
        ``state`` that the model lacks (``ctc_weight`` 0, e.g. for inference) is ignored."""
        expected = set(self.trainable_state_dict())
        state = {
            name: value for name, value in state.items() if self.ctc_head or not name.startswith("ctc_head.")
        }
        missing, unexpected = expected - set(state), set(state) - expected
        missing = {name for name in missing if not name.startswith("ctc_head.")}
        if new_lora:
            missing = {name for name in missing if ".lora_" not in name}
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not fit the model: missing={sorted(missing)[:5]} unexpected={sorted(unexpected)[:5]}"
            )
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value.to(params[name].dtype))

    def save_pretrained(
        self, save_directory: str | os.PathLike, state_dict: dict | None = None, **_: Any
    ) -> None:
        """Write ``config.json``, ``generation_config.json`` and the trainable weights, each
        atomically (temp file + rename), and the attached processor's files."""
        if getattr(self, "lora_folded", False):
            raise RuntimeError(
                "the LoRA adapters were folded into the frozen weights at load (merge_lora=True): "
                "save the checkpoint loaded without merge_lora"
            )
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        trainable = set(self.trainable_state_dict())
        state = {k: v for k, v in (state_dict or self.trainable_state_dict()).items() if k in trainable}
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        os.close(fd)
        save_file({k: v.cpu().contiguous() for k, v in state.items()}, tmp, metadata={"format": "pt"})
        Path(tmp).replace(directory / WEIGHTS_NAME)
        for name, content in (
            (GENERATION_CONFIG_NAME, self.generation_config.to_json_string(use_diff=True)),
            ("config.json", json.dumps(self.config.to_dict(), indent=2, sort_keys=True)),
        ):
            fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(content)
            Path(tmp).replace(directory / name)
        if self.processor is not None:
            self.processor.save_pretrained(directory)

    def push_to_hub(
        self,
        repo_id: str,
        card: str | os.PathLike | None = None,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload asr-llm checkpoint",
        revision: str | None = None,
        create_pr: bool = False,
        **_: Any,
    ) -> Any:
        """Upload what :meth:`save_pretrained` writes (config, generation config, trainable
        weights, processor and tokenizer files) plus the model card, in one commit.

        ``card``: a README.md; default: the card of the folder this model was loaded from.
        transformers' own ``push_to_hub`` would replace it with a generic card. Returns the
        commit info of ``huggingface_hub.HfApi.upload_folder``. Only the trainable weights
        travel: the frozen parts are named by ``config.json`` (packaged or hub sources).
        """
        from huggingface_hub import HfApi

        card = Path(card) if card else Path(self.config.name_or_path or ".") / "README.md"
        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            if card.is_file():
                shutil.copyfile(card, Path(tmp) / "README.md")
            repo = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            return api.upload_folder(
                repo_id=repo,
                folder_path=tmp,
                commit_message=commit_message,
                revision=revision,
                create_pr=create_pr,
            )

    # ------------------------------------------------------------------ audio -> LLM inputs

    def encode(
        self, input_features: torch.Tensor, mel_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder frames (B, T, width) with the frames past each clip's length zeroed."""
        frames, lengths = self.encoder(input_features.to(self.encoder.whisper.dtype), mel_lengths)
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

    def merge(
        self, input_ids: torch.Tensor, audio_mask: torch.Tensor, audio: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Token embeddings with the audio positions replaced by the projected vectors, in order."""
        embeds = self.decoder.get_input_embeddings()(input_ids)
        valid = torch.arange(audio.shape[1], device=audio.device)[None, :] < lengths[:, None]
        vectors = audio[valid]
        if vectors.shape[0] != int(audio_mask.sum()):
            raise ValueError(
                f"prompt has {int(audio_mask.sum())} audio positions, projector gave {vectors.shape[0]}"
            )
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
    ) -> ASROutput:
        """Logits over the whole sequence, or with ``labels`` (training) the loss.

        With ``labels`` and ``logits_at_labels`` (the default) two shortcuts give the same loss
        (tested) for less work: the prompt's head (chat template and system prompt, identical in
        every row of a right-padded batch) runs through the LLM once and its keys/values are
        shared by the batch, and the LM head runs only at the positions that predict a label, so
        ``logits`` is (n_labels, vocab). For SmolLM2 on short clips that skips about a quarter of
        the tokens, and the 49k-way projection everywhere but the transcript.

        With a CTC head (``config.ctc_weight`` > 0) and ``labels``, ``loss`` is
        ``lm_loss + ctc_weight * ctc_loss`` and both parts are returned.
        """
        audio, lengths = self.audio_embeddings(input_features, mel_lengths, encoder_frames, encoder_lengths)
        embeds = self.merge(input_ids, audio_mask, audio, lengths)
        if labels is None or not logits_at_labels:
            out = self.decoder(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)
        else:
            out = self._transcript_loss(input_ids, attention_mask, audio_mask, labels, embeds, **kwargs)
        if labels is None or self.ctc_head is None:
            return ASROutput(**out)
        ctc = self.ctc_head.loss(
            audio,
            lengths,
            labels,
            self.decoder.get_output_embeddings().weight,
            drop_ids=(self.generation_config.eos_token_id,),
        )
        loss = out.loss + self.config.ctc_weight * ctc
        return ASROutput(**{**out, "loss": loss, "lm_loss": out.loss, "ctc_loss": ctc})

    def _transcript_loss(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        audio_mask: torch.Tensor,
        labels: torch.Tensor,
        embeds: torch.Tensor,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """The next-token loss with the two shortcuts of :meth:`forward`."""
        body = self.decoder.get_decoder()
        head = shared_prefix_length(input_ids, attention_mask, audio_mask) if len(input_ids) > 1 else 0
        past = self._head_cache(embeds, attention_mask, head) if head else None
        hidden = body(
            inputs_embeds=embeds[:, head:],
            attention_mask=attention_mask,
            past_key_values=past,
            use_cache=head > 0,
            **kwargs,
        ).last_hidden_state
        targets = labels[:, head + 1 :]
        scored = targets != IGNORE_INDEX  # position t predicts token t + 1
        logits = self.decoder.get_output_embeddings()(hidden[:, :-1][scored])
        loss = nn.functional.cross_entropy(logits.float(), targets[scored])
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    # ------------------------------------------------------------------ generation

    def max_new_tokens_for(self, mel_lengths: torch.Tensor, decoding: DecodingConfig | None = None) -> int:
        """Decoding cap from the longest clip's duration: stops repetition loops early."""
        return (decoding or self.decoding).max_new_tokens(lengths.seconds(mel_lengths))

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        audio_mask: torch.Tensor,
        input_features: torch.Tensor | None = None,
        mel_lengths: torch.Tensor | None = None,
        encoder_frames: torch.Tensor | None = None,
        encoder_lengths: torch.Tensor | None = None,
        decoding: DecodingConfig | None = None,
        max_new_tokens: int | None = None,
        cache_prompt_head: bool = True,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Token ids (B, T) generated after a batch of left-padded prompts (``ASRProcessor``
        output), by greedy or beam search as ``decoding`` (default: the generation config) says.

        Each row stops at its own cap from its clip's duration, so a clip decodes the same alone
        or in any batch; positions past a row's cap hold the pad token. With
        ``cache_prompt_head`` (greedy only) the prompt's head, identical in every row, runs through
        the LLM once (:meth:`_prompt_head_cache`)."""
        decoding = (decoding or self.decoding).take(generate_kwargs)
        audio, n_audio = self.audio_embeddings(input_features, mel_lengths, encoder_frames, encoder_lengths)
        embeds = self.merge(input_ids, audio_mask, audio, n_audio)
        caps = None
        if max_new_tokens is None:
            mel = mel_lengths if mel_lengths is not None else encoder_lengths * 2
            caps = [self.max_new_tokens_for(m[None], decoding) for m in mel]
            max_new_tokens = max(caps)
        processors = LogitsProcessorList(generate_kwargs.pop("logits_processor", None) or [])
        if decoding.repetition_penalty != 1.0:
            processors.append(GeneratedRepetitionPenalty(decoding.repetition_penalty))
        if decoding.ctc_guide_weight:
            scorers = self.ctc_scorers(audio, n_audio)
            eos = self.generation_config.eos_token_id
            processors.append(CTCGuide(scorers, decoding.ctc_guide_weight, decoding.ctc_guide_top_k, eos))
        options = {
            "max_new_tokens": max_new_tokens,
            "num_beams": decoding.num_beams,
            "length_penalty": decoding.length_penalty,
            "no_repeat_ngram_size": decoding.no_repeat_ngram_size,
            "do_sample": False,
            "repetition_penalty": 1.0,  # applied by GeneratedRepetitionPenalty
            "logits_processor": processors,
            "eos_token_id": self.generation_config.eos_token_id,
            "pad_token_id": self.generation_config.pad_token_id,
            **generate_kwargs,
        }
        if cache_prompt_head and decoding.num_beams == 1 and "past_key_values" not in generate_kwargs:
            embeds, attention_mask, options["past_key_values"] = self._prompt_head_cache(
                input_ids, attention_mask, audio_mask, embeds
            )
        with warnings.catch_warnings():  # blocking only the answer's n-grams is what we want
            warnings.filterwarnings("ignore", "Passing `no_repeat_ngram_size` with `inputs_embeds`")
            tokens = self.decoder.generate(inputs_embeds=embeds, attention_mask=attention_mask, **options)
        if caps is not None:  # each clip's own cap (num_return_sequences rows per clip)
            caps = torch.tensor(caps).repeat_interleave(tokens.shape[0] // len(caps))
            past = torch.arange(tokens.shape[1], device=tokens.device)[None, :] >= caps[:, None]
            tokens = tokens.masked_fill(past.to(tokens.device), self.generation_config.pad_token_id)
        return tokens

    def ctc_scorers(self, audio: torch.Tensor, n_audio: torch.Tensor) -> list[CTCPrefixScorer]:
        """One CTC prefix scorer per row of projected audio (B, P, width), for CTC-guided decoding."""
        if self.ctc_head is None:
            raise ValueError(
                "generation.ctc_guide_weight needs a CTC head: this model was built with model.ctc_weight 0"
            )
        embeddings = self.decoder.get_output_embeddings().weight.detach().float().cpu().numpy()
        head = self.ctc_head.guide_parameters()
        return [
            CTCPrefixScorer(row[: int(n)].float().cpu().numpy(), embeddings, *head)
            for row, n in zip(audio, n_audio, strict=True)
        ]

    @torch.no_grad()
    def answer_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        audio_mask: torch.Tensor,
        audio: torch.Tensor,
        n_audio: torch.Tensor,
        answers: list[list[int]],
    ) -> torch.Tensor:
        """Log-probability (B,) of each row's answer tokens after its left-padded generation
        prompt, by teacher forcing through the training loss's path (:meth:`_transcript_loss`)."""
        keep = attention_mask.bool()
        lengths = [int(k.sum()) + len(a) for k, a in zip(keep, answers, strict=True)]
        ids = torch.full((len(answers), max(lengths)), self.generation_config.pad_token_id)
        labels = torch.full_like(ids, IGNORE_INDEX)
        mask, audio_at = torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
        for i, (answer, n) in enumerate(zip(answers, lengths, strict=True)):
            prompt = input_ids[i][keep[i]].cpu()
            ids[i, :n] = torch.cat([prompt, torch.tensor(answer, dtype=torch.long)])
            labels[i, len(prompt) : n] = torch.tensor(answer)
            mask[i, :n] = 1
            audio_at[i, : len(prompt)] = audio_mask[i][keep[i]].cpu()
        ids, labels, mask, audio_at = (t.to(input_ids.device) for t in (ids, labels, mask, audio_at))
        embeds = self.merge(ids, audio_at, audio, n_audio)
        logits = self._transcript_loss(ids, mask, audio_at, labels, embeds).logits.float()
        targets = labels[:, 1:]
        scored = targets != IGNORE_INDEX
        token_logprobs = logits.log_softmax(-1).gather(1, targets[scored][:, None])[:, 0]
        row = torch.arange(len(answers), device=ids.device)[:, None].expand_as(targets)[scored]
        return torch.zeros(len(answers), device=ids.device).index_add_(0, row, token_logprobs)

    def _prompt_head_cache(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        audio_mask: torch.Tensor,
        embeds: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, DynamicCache | None]:
        """The chat template and system prompt before the audio are the same tokens in every row
        (a fifth to a third of a short clip's prompt): their keys and values are computed once, for
        one row, and shared. Each left-padded row is rearranged to ``[head | padding | rest]`` so
        the cached head lines up; the attention mask skips the padding and positions follow the
        mask, so every row decodes as it would alone (tested). Returns the rearranged embeddings,
        mask and the head's cache (None where rows do not share a head)."""
        width = input_ids.shape[1]
        pads = (attention_mask == 0).long().cumprod(1).sum(1)  # left padding of each row
        first_audio = audio_mask.long().argmax(1)
        head = int((first_audio - pads).min())
        if head < 1:
            return embeds, attention_mask, None
        offsets = torch.arange(width, device=input_ids.device)
        start = pads[:, None]
        # per row: the head's positions first, then the padding, then the rest
        order = torch.where(
            offsets[None] < head,
            start + offsets[None],
            torch.where(offsets[None] < head + start, offsets[None] - head, offsets[None]),
        )
        heads = input_ids.gather(1, order[:, :head])
        if not bool((heads == heads[:1]).all()):
            return embeds, attention_mask, None
        embeds = embeds.gather(1, order[..., None].expand(-1, -1, embeds.shape[-1]))
        attention_mask = attention_mask.gather(1, order)
        return embeds, attention_mask, self._head_cache(embeds, attention_mask, head)

    def _head_cache(self, embeds: torch.Tensor, attention_mask: torch.Tensor, head: int) -> DynamicCache:
        """Keys/values of the first ``head`` positions, the same in every row: computed for row 0
        by the LLM body (no LM head), then repeated for the batch."""
        cache = DynamicCache(config=self.decoder.config)
        self.decoder.get_decoder()(
            inputs_embeds=embeds[:1, :head],
            attention_mask=attention_mask[:1, :head],
            past_key_values=cache,
            use_cache=True,
        )
        cache.batch_repeat_interleave(len(embeds))
        return cache

    def run_first_pass(self, clips: list[np.ndarray], beam_size: int = 1) -> list[list[str]] | None:
        """Two-pass mode: the encoder source's own Whisper decoder on each (checked, 16 kHz)
        clip, ``first_pass_n_best`` hypotheses each from a beam of ``beam_size`` (greedy: 1, as
        training stores them; decoding uses ``generation.first_pass_beam_size``); ``None`` for a
        one-pass model."""
        if self.config.first_pass == "none":
            return None
        if self._first_pass is None:
            threads = torch.get_num_threads() if self.device.type == "cpu" else 0
            self._first_pass = load_first_pass(
                self.config.encoder_source, self.config.first_pass_n_best, threads=threads
            )
        return self._first_pass(clips, beam_size=beam_size)

    @torch.no_grad()
    def transcribe(
        self,
        audios: list[np.ndarray],
        context: list[str | None] | str | None = None,
        processor: ASRProcessor | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """16 kHz mono clips (each at most 30 s) -> text, in one batch: ``processor(audio) ->
        generate -> processor.batch_decode``, with a two-pass model's first pass before and its
        rescoring after (:meth:`rescore_first_pass`). ``kwargs``: ``generate``'s. Longer audio,
        files and batching: :class:`asr.inference.Transcriber`."""
        processor = processor or self.processor
        if processor is None:
            raise RuntimeError(
                "no processor attached: load with from_sources/from_pretrained or set_processor()"
            )
        clips = processor.validate(audios)
        decoding = (kwargs.pop("decoding", None) or self.decoding).take(kwargs)
        first_pass = self.run_first_pass(clips, decoding.first_pass_beam_size)
        inputs = processor(audio=clips, context=context, first_pass=first_pass).to(self.device)
        tokens = self.generate(**inputs, decoding=decoding, **kwargs)
        weight = decoding.first_pass_rescore
        if first_pass is None or weight is None:
            return processor.batch_decode(tokens)
        return self.rescore_first_pass(processor, clips, inputs, tokens, first_pass, weight)

    def rescore_first_pass(
        self,
        processor: ASRProcessor,
        clips: list[np.ndarray],
        inputs: dict[str, torch.Tensor],
        tokens: torch.Tensor,
        first_pass: list[list[str]],
        weight: float,
    ) -> list[str]:
        """Two-pass decoding's last step: where the model's answer (``tokens``, generated from
        ``inputs``) differs from the first pass, each answer is scored by the LLM (after the same
        prompt, :meth:`answer_logprobs`) and by Whisper (:class:`asr.first_pass.WhisperScorer`),
        and the one with the higher ``LLM + weight * Whisper`` log-probability is kept. The first
        pass is scored as the model was trained to write it (``processor.target_normalization``)
        and returned as Whisper wrote it."""
        texts = processor.batch_decode(tokens)
        written, firsts, differ = disagreements(texts, first_pass, processor.target_normalization)
        if not differ:
            return texts
        eos = self.generation_config.eos_token_id  # one id: set from the processor's tokenizer
        own = [through_eos(row, eos) for row in tokens.tolist()]
        n = len(differ)
        rows = torch.tensor(differ, device=self.device)
        audio, n_audio = self.audio_embeddings(inputs["input_features"][rows], inputs["mel_lengths"][rows])
        prompts = [inputs[k][rows].repeat(2, 1) for k in ("input_ids", "attention_mask", "audio_mask")]
        answers = [own[i] for i in differ] + [processor.prompt_builder.answer_ids(firsts[i]) for i in differ]
        llm = self.answer_logprobs(*prompts, audio.repeat(2, 1, 1), n_audio.repeat(2), answers).cpu()
        gain = llm[:n] - llm[n:]
        if weight:
            whisper = self._first_pass.score(
                [clips[i] for i in differ], [[written[i], firsts[i]] for i in differ]
            )
            gain += weight * torch.tensor([answer - first for answer, first in whisper])
        for i, better in zip(differ, (gain >= 0).tolist(), strict=True):
            if not better:
                texts[i] = first_pass[i][0]
        return texts


AutoConfig.register(ASRConfig.model_type, ASRConfig)
AutoModel.register(ASRConfig, ASRModel)
AutoModelForSpeechSeq2Seq.register(ASRConfig, ASRModel)
