"""The input pipeline at scale: feature store (build, reuse, kill), rank shards, sampler, bad files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_model
from test_training import tiny_model_config, tone, write_corpus

from asr.corpus import MixtureSampler, Row, StoreDataset, build_store, index_sources, usable_rows
from asr.data import BadRows
from asr.store import FeatureStore, encoder_key, remove_stale_partials
from asr.training import DataConfig, TrainingConfig, train


def store_for(model, root: Path) -> FeatureStore:
    return FeatureStore(root, encoder_key(model), model.config.encoder_width)


def rows_of(manifest: Path) -> list[Row]:
    return index_sources([{"type": "manifest", "path": str(manifest)}], BadRows())[0]


def test_store_is_built_once_and_reused_without_decoding(tmp_path):
    manifest = write_corpus(tmp_path / "d", n=6)
    model = tiny_model()
    store = store_for(model, tmp_path / "s")
    assert build_store(rows_of(manifest), model, model.processor, store, progress=False) == 6
    store.refresh()
    assert len(store) == 6
    again = store_for(model, tmp_path / "s")
    assert build_store(rows_of(manifest), model, model.processor, again, progress=False) == 0
    # frames equal a direct run of the encoder on the clip (float16 storage)
    row = rows_of(manifest)[3]
    row.key = next(r.key for r in usable_rows(rows_of(manifest), again, BadRows(), None) if r.id == "c3")
    feats = model.processor.features([sf.read(row.audio, dtype="float32")[0]])
    frames, lengths = model.encode(feats["input_features"], feats["mel_lengths"])
    stored = torch.from_numpy(np.array(again.frames(row.key))).float()
    assert stored.shape == (int(lengths[0]), model.config.encoder_width)
    assert torch.allclose(stored, frames[0, : int(lengths[0])], atol=1e-2)
    # another encoder (weights or mode) has its own folder: nothing reused
    assert encoder_key(tiny_model(seed=1)) != encoder_key(model)
    padded = tiny_model(encoder_mode="padded")
    assert encoder_key(padded) != encoder_key(model)


def test_a_changed_file_is_encoded_again(tmp_path):
    manifest = write_corpus(tmp_path / "d", n=3)
    model = tiny_model()
    store = store_for(model, tmp_path / "s")
    build_store(rows_of(manifest), model, model.processor, store, progress=False)
    sf.write(tmp_path / "d" / "c1.wav", tone(0.9, 500), 16000)  # same name, new audio
    store.refresh()
    assert build_store(rows_of(manifest), model, model.processor, store, progress=False) == 1


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from conftest import tiny_model
    from test_corpus import rows_of, store_for
    import asr.store
    from asr.corpus import build_store
    from pathlib import Path

    add = asr.store.ShardWriter.add
    count = [0]
    def dying_add(self, *args):
        count[0] += 1
        if count[0] == 8:  # two shards of 3 committed, the third half written
            os.kill(os.getpid(), signal.SIGKILL)
        return add(self, *args)
    asr.store.ShardWriter.add = dying_add
    model = tiny_model()
    store = store_for(model, Path({root!r}))
    store.writer = lambda rank=0, clips_per_shard=3: type(store).writer(store, rank, 3)
    build_store(rows_of(Path({manifest!r})), model, model.processor, store, progress=False)
    """
)


def test_a_shard_cut_short_by_a_kill_is_never_read_and_is_rebuilt(tmp_path):
    manifest = write_corpus(tmp_path / "d", n=10)
    root = tmp_path / "s"
    script = KILLER.format(tests=str(Path(__file__).parent), root=str(root), manifest=str(manifest))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    model = tiny_model()
    store = store_for(model, root)
    assert len(store) == 6  # the committed shards only
    partial = list(store.dir.glob("*.partial"))
    assert partial, "the killed writer left its partial shard"
    assert build_store(rows_of(manifest), model, model.processor, store, progress=False) == 4
    assert not list(store.dir.glob("*.partial"))  # the dead writer's leftovers are gone
    store.refresh()
    clean = store_for(model, tmp_path / "clean")
    build_store(rows_of(manifest), model, model.processor, clean, progress=False)
    clean.refresh()
    assert set(store.entries) == set(clean.entries)
    for key in clean.entries:
        assert np.array_equal(store.frames(key), clean.frames(key))


def test_stale_partials_of_live_writers_are_kept(tmp_path):
    import os
    import socket

    host = socket.gethostname()
    mine = tmp_path / f"1-r0-{host}-{os.getpid()}.bin.partial"
    dead = tmp_path / f"2-r0-{host}-999999999.bin.partial"
    for path in (mine, dead):
        path.write_bytes(b"x")
    assert remove_stale_partials(tmp_path) == [dead]
    assert mine.exists() and not dead.exists()


def test_ranks_encode_disjoint_shares_whose_union_is_the_corpus(tmp_path):
    manifest = write_corpus(tmp_path / "d", n=9)
    model = tiny_model()
    counts = []
    for rank in (0, 1):
        store = store_for(model, tmp_path / "s")
        counts.append(
            build_store(
                rows_of(manifest), model, model.processor, store, rank=rank, world_size=2, progress=False
            )
        )
    assert counts == [5, 4]
    store.refresh()
    assert len(store) == 9
    shards = [json.loads(p.read_text())["entries"] for p in store.dir.glob("*.json")]
    assert sum(len(s) for s in shards) == 9  # no clip in two shards


def test_a_corrupt_file_in_a_large_manifest_is_skipped_by_name_with_workers(tmp_path):
    folder = tmp_path / "d"
    manifest = write_corpus(folder, n=40)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00 broken")
    with manifest.open("a") as f:
        f.write(json.dumps({"audio": "corrupt.wav", "text": "red"}) + "\n")
    model = tiny_model()
    store = store_for(model, tmp_path / "s")
    rows = rows_of(manifest)
    built = build_store(rows, model, model.processor, store, num_workers=2, batch_size=8, progress=False)
    assert built == 41
    store.refresh()
    bad = BadRows()
    kept = usable_rows(rows, store, bad, model.processor.tokenizer)
    assert len(kept) == 40
    assert [name for name, _ in bad.rows] == [str(folder / "corrupt.wav")]
    assert "bad audio" in bad.rows[0][1]
    # a later run learns it from the store without decoding again
    assert build_store(rows_of(manifest), model, model.processor, store, progress=False) == 0


def test_store_dataset_serves_copies_of_memory_mapped_frames(tmp_path):
    manifest = write_corpus(tmp_path / "d", n=4)
    model = tiny_model()
    store = store_for(model, tmp_path / "s")
    rows = rows_of(manifest)
    build_store(rows, model, model.processor, store, progress=False)
    store.refresh()
    kept = usable_rows(rows, store, BadRows(), None)
    ds = StoreDataset(kept, store)
    ex = ds[0]
    assert ex.frames.dtype == torch.float16 and ex.frames.shape[0] == kept[0].frames
    ex.frames.zero_()  # writable, and the store is not changed by it
    assert not torch.equal(ds[0].frames, ex.frames)
    assert isinstance(store.frames(kept[0].key), np.memmap)


def test_mixture_sampler_weights_budget_and_determinism():
    lengths = [10 + (i * 7) % 90 for i in range(60)]
    corpora = [0] * 40 + [1] * 20
    sampler = MixtureSampler(lengths, corpora, [1.0, 2.0], batch_size=4, seed=3)
    drawn = [i for b in sampler for i in b]
    assert sorted(drawn) == sorted(list(range(40)) + 2 * list(range(40, 60)))
    assert list(sampler) == list(MixtureSampler(lengths, corpora, [1.0, 2.0], 4, seed=3))
    sampler.start_epoch(1)
    assert list(sampler) != list(MixtureSampler(lengths, corpora, [1.0, 2.0], 4, seed=3))
    half = MixtureSampler(lengths, corpora, [0.5, 0.0], batch_size=4, seed=3)
    epochs = []
    for epoch in (0, 1):
        half.start_epoch(epoch)
        epochs.append({i for b in half for i in b})
    assert all(len(e) == 20 and e <= set(range(40)) for e in epochs) and epochs[0] != epochs[1]
    # a budget of audio seconds: rows x longest clip <= budget (a single longer clip alone)
    budget = MixtureSampler(lengths, corpora, [1.0, 1.0], batch_size=4, seed=3, batch_seconds=5.0)
    frames = 5.0 / 0.02
    batches = list(budget)
    assert sorted(i for b in batches for i in b) == list(range(60))
    assert all(max(lengths[i] for i in b) * len(b) <= frames for b in batches)
    assert len({len(b) for b in batches}) > 1  # short clips make bigger batches


def test_fraction_is_a_fixed_seeded_subset(tmp_path):
    manifest = write_corpus(tmp_path / "d", n=10)
    spec = [{"type": "manifest", "path": str(manifest), "fraction": 0.5}]
    a = [r.id for r in index_sources(spec, BadRows(), seed=1)[0]]
    b = [r.id for r in index_sources(spec, BadRows(), seed=1)[0]]
    assert a == b and len(a) == 5


def test_training_with_augmentation_and_workers_decodes_on_the_fly(tmp_path):
    manifest = write_corpus(tmp_path / "data", n=6, bad=True)
    data = DataConfig(
        train=[{"type": "manifest", "path": str(manifest)}],
        eval=[{"type": "manifest", "path": str(manifest), "limit": 2}],
        augment={"enabled": True, "noise_prob": 1.0},
    )
    cfg = TrainingConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        batch_size=3,
        warmup_steps=1,
        eval_samples=2,
        num_workers=2,
        cache_encoder=False,
        wandb={"mode": "disabled"},
        mixed_precision="no",
    )
    summary, _ = train(tiny_model_config(), data, cfg)
    assert summary["steps"] == 3
    bad = [
        json.loads(line)["file"] for line in (tmp_path / "out" / "bad_rows.jsonl").read_text().splitlines()
    ]
    assert str(tmp_path / "data" / "corrupt.wav") in bad


@pytest.mark.parametrize("batch_seconds", [None, 3.0])
def test_store_training_resumes_exactly_with_dynamic_batches(tmp_path, batch_seconds):
    from test_training import _run

    manifest = write_corpus(tmp_path / "data", n=10)
    straight = _run(manifest, tmp_path / "a", batch_seconds=batch_seconds)
    _run(manifest, tmp_path / "b", batch_seconds=batch_seconds)
    import shutil

    for leftover in [tmp_path / "b" / "checkpoints" / "step-6", tmp_path / "b" / "final"]:
        shutil.rmtree(leftover)
    resumed = _run(manifest, tmp_path / "b", batch_seconds=batch_seconds)
    for name, value in straight["state"].items():
        assert torch.allclose(value, resumed["state"][name], atol=1e-6), name


def test_a_hub_dataset_is_streamed_text_first_then_into_the_store(tmp_path):
    """A (local, parquet) hub dataset: the index holds text and positions only; the store build
    streams the audio once; a corrupt row is skipped by its position."""
    import io

    from datasets import Dataset, Features, Value

    from asr.data import HubClip

    clips = []
    for i in range(5):
        buffer = io.BytesIO()
        sf.write(buffer, tone(0.5 + 0.1 * i, 300 + 50 * i), 16000, format="WAV")
        clips.append(buffer.getvalue())
    clips[3] = b"RIFF broken"
    # the storage of datasets' Audio feature (writing Audio itself would need torchcodec)
    audio = {"bytes": Value("binary"), "path": Value("string")}
    features = Features({"audio": audio, "text": Value("string"), "id": Value("string")})
    ds = Dataset.from_dict(
        {
            "audio": [{"bytes": b, "path": f"c{i}.wav"} for i, b in enumerate(clips)],
            "text": ["red", "green", "blue", "cat", "dog"],
            "id": [f"u{i}" for i in range(5)],
        },
        features=features,
    )
    (tmp_path / "hub" / "data").mkdir(parents=True)
    ds.to_parquet(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet")
    spec = {"type": "hub", "name": str(tmp_path / "hub"), "split": "train", "streaming": True}
    rows, _ = index_sources([spec], BadRows())
    assert [r.id for r in rows] == [f"u{i}" for i in range(5)]
    assert all(isinstance(r.audio, HubClip) for r in rows)
    model = tiny_model()
    store = store_for(model, tmp_path / "s")
    assert build_store(rows, model, model.processor, store, num_workers=2, batch_size=2, progress=False) == 5
    store.refresh()
    bad = BadRows()
    kept = usable_rows(rows, store, bad, None)
    assert [r.id for r in kept] == ["u0", "u1", "u2", "u4"]
    assert bad.rows[0][0].endswith("#3") and "bad audio" in bad.rows[0][1]
    # frames equal the encoder's on the same audio
    feats = model.processor.features([tone(0.5, 300)])
    frames, lengths = model.encode(feats["input_features"], feats["mel_lengths"])
    stored = torch.from_numpy(np.array(store.frames(kept[0].key))).float()
    assert torch.allclose(stored, frames[0, : int(lengths[0])], atol=1e-2)
    # and a second run streams nothing
    assert (
        build_store(index_sources([spec], BadRows())[0], model, model.processor, store, progress=False) == 0
    )
