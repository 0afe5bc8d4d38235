"""On-disk stores of what frozen models compute once per clip: encoder frames
(:class:`FeatureStore`) and first-pass hypotheses (:class:`HypothesisStore`).

Rows are keyed by their source, without decoding: a file by its size and a hash of its bytes (the
first and last MiB of a large file; :class:`FileKeys` remembers the hashes so unchanged files are
only stat-ed), raw bytes or samples by their hash. Not by path or modification time: a corpus that
is copied, moved or re-provisioned keeps its stored frames.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


def source_key(audio: Any) -> str:
    """Identity of a row's audio: size and content hash for a file, dataset/split/position for a
    hub row, a hash of bytes or samples."""
    h = hashlib.sha256()
    if hasattr(audio, "store_key"):  # a row of a streamed hub dataset (asr.data.HubClip)
        h.update(audio.store_key.encode())
    elif isinstance(audio, str | Path):
        path = Path(audio).resolve()
        try:
            h.update(b"file|" + _fingerprint(path))
        except OSError:  # missing: its decode fails and is recorded; a file that appears later is new
            h.update(f"missing|{path}".encode())
    elif isinstance(audio, bytes):
        h.update(b"bytes|" + audio)
    elif isinstance(audio, dict):  # an in-memory datasets Audio value
        h.update(f"array|{audio['sampling_rate']}|".encode())
        h.update(np.ascontiguousarray(audio["array"], dtype=np.float32).tobytes())
    else:
        h.update(b"array|16000|" + np.ascontiguousarray(audio, dtype=np.float32).tobytes())
    return h.hexdigest()[:32]


def _fingerprint(path: Path, edge: int = 1 << 20) -> bytes:
    """Size and the hash of a file's bytes, or of its first and last ``edge`` bytes when it is
    larger than two edges (re-encoded audio changes its header or its end, and usually its size)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= 2 * edge:
            body = f.read()
        else:
            body = f.read(edge)
            f.seek(size - edge)
            body += f.read(edge)
    return f"{size}|".encode() + hashlib.sha256(body).digest()


class HypothesisStore:
    """First-pass hypotheses, one JSON line per clip: ``{"key": ..., "hyps": [...]}``.

    Appends are single ``write`` calls of one line on a file opened with ``O_APPEND``, so several
    ranks may add to one store; a line cut short by a kill is not valid JSON and is ignored on
    read (its clip is decoded again), so the store never serves a partial entry.
    """

    def __init__(self, root: str | Path, first_pass_key: str) -> None:
        self.path = Path(root) / f"first-pass-{first_pass_key}.jsonl"
        self.entries: dict[str, list[str]] = {}
        self.reload()

    def reload(self) -> None:
        """Read the file again (after other processes appended to it)."""
        for entry in _read_lines(self.path, "key", "hyps"):
            if isinstance(entry["hyps"], list):
                self.entries[entry["key"]] = entry["hyps"]

    def get(self, key: str) -> list[str] | None:
        return self.entries.get(key)

    def put(self, items: Iterable[tuple[str, list[str]]]) -> None:
        lines = []
        for key, hyps in items:
            self.entries[key] = list(hyps)
            lines.append(json.dumps({"key": key, "hyps": list(hyps)}) + "\n")
        _append_lines(self.path, lines)


class FileKeys:
    """:func:`source_key` of audio files, remembered by path, size and modification time in a
    JSONL file beside the stores. Hashing reads each file; with this a run over an unchanged
    corpus only stats its files, and a copied or re-provisioned one (new times) is read once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.known: dict[str, str] = {}
        self.new: list[str] = []
        for entry in _read_lines(self.path, "stat", "key"):
            self.known[entry["stat"]] = entry["key"]

    def __call__(self, audio: Any) -> str:
        if not isinstance(audio, str | Path):
            return source_key(audio)
        path = Path(audio).resolve()
        try:
            stat = path.stat()
        except OSError:
            return source_key(path)
        stamp = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
        if stamp not in self.known:
            self.known[stamp] = source_key(path)
            self.new.append(json.dumps({"stat": stamp, "key": self.known[stamp]}) + "\n")
        return self.known[stamp]

    def save(self) -> None:
        """Append the keys learned since the last save (one write; ranks may share the file)."""
        _append_lines(self.path, self.new)
        self.new = []


def _read_lines(path: Path, *fields: str) -> Iterator[dict[str, Any]]:
    """The complete entries of a JSONL store: a line cut short by a kill (not valid JSON) or
    lacking one of ``fields`` is skipped."""
    if not path.is_file():
        return
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and all(f in entry for f in fields):
            yield entry


def _append_lines(path: Path, lines: list[str]) -> None:
    """Append whole lines with one ``write`` on an ``O_APPEND`` file (safe for several writers)."""
    if not lines:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # a line cut short by an earlier kill would swallow the next entry: start on a new line
    prefix = "\n" if path.is_file() and path.stat().st_size and not _ends_with_newline(path) else ""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (prefix + "".join(lines)).encode())
    finally:
        os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


# --------------------------------------------------------------------------- encoder features

# Bump when the code that turns audio into encoder frames changes (features, encoder paths): the
# weights alone do not identify the output.
STORE_VERSION = 3


def encoder_key(model: Any) -> str:
    """Identity of everything that determines the encoder output for given audio: the code
    version, the encoder's source, mode, config and weights (LoRA included)."""
    h = hashlib.sha256(f"v{STORE_VERSION}".encode())
    cfg = model.config
    h.update(
        json.dumps(
            [cfg.encoder_source, cfg.encoder_mode, cfg.encoder_config], sort_keys=True, default=str
        ).encode()
    )
    for name, tensor in sorted(model.encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:20]


class FeatureStore:
    """Frozen-encoder frames of many clips, in sharded files that are memory-mapped on read.

    ``<root>/<encoder key>/<shard>.bin`` holds float16 frames of many clips back to back;
    ``<shard>.json`` is its index: ``{key: [offset, frames, samples]}`` plus the clips that could
    not be used (``skipped``: key -> reason), so a later run decodes nothing to find either. A
    shard is written as ``*.partial`` files and renamed into place, ``.bin`` first and its index
    last: a shard cut short by a kill has no index, is never read, and its clips are encoded
    again by the next build (which deletes the leftovers of writers that are gone).
    """

    def __init__(self, root: str | Path, encoder_key: str, width: int) -> None:
        self.dir = Path(root) / encoder_key
        self.width = int(width)
        self.entries: dict[str, tuple[str, int, int, int]] = {}  # key -> (shard, offset, frames, samples)
        self.skipped: dict[str, str] = {}
        self._maps: dict[str, np.ndarray] = {}
        self.refresh()

    def refresh(self) -> None:
        """Read every complete shard's index (after a build, or another rank's)."""
        for index in sorted(self.dir.glob("*.json")):
            shard = index.stem
            data = json.loads(index.read_text())
            for key, (offset, frames, samples) in data["entries"].items():
                self.entries[key] = (shard, int(offset), int(frames), int(samples))
            self.skipped.update(data.get("skipped", {}))

    def __contains__(self, key: str) -> bool:
        return key in self.entries or key in self.skipped

    def __len__(self) -> int:
        return len(self.entries)

    def frames(self, key: str) -> np.ndarray:
        """(frames, width) float16, a view of the memory-mapped shard (copy before writing)."""
        shard, offset, n, _ = self.entries[key]
        if shard not in self._maps:  # opened lazily: each DataLoader worker maps its own
            path = self.dir / f"{shard}.bin"
            self._maps[shard] = np.memmap(path, dtype=np.float16, mode="r").reshape(-1, self.width)
        return self._maps[shard][offset : offset + n]

    def length(self, key: str) -> int:
        return self.entries[key][2]

    def samples(self, key: str) -> int:
        return self.entries[key][3]

    def __getstate__(self) -> dict[str, Any]:  # workers re-open the maps themselves
        return {**self.__dict__, "_maps": {}}

    def writer(self, rank: int = 0, clips_per_shard: int = 4096) -> ShardWriter:
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(self.dir)
        return ShardWriter(self.dir, self.width, rank, clips_per_shard)


class ShardWriter:
    """Appends clips to a new shard and commits it every ``clips_per_shard`` clips (and on
    ``close``); a kill loses at most the uncommitted shard."""

    def __init__(self, folder: Path, width: int, rank: int, clips_per_shard: int) -> None:
        self.folder, self.width, self.rank, self.per_shard = folder, width, rank, clips_per_shard
        self.committed = 0
        self._open()

    def _open(self) -> None:
        self.name = f"{time.time_ns():x}-r{self.rank}-{socket.gethostname()}-{os.getpid()}"
        self.bin_path = self.folder / f"{self.name}.bin.partial"
        self.file = self.bin_path.open("wb")
        self.offset = 0
        self.entries: dict[str, list[int]] = {}
        self.skipped: dict[str, str] = {}

    def add(self, key: str, frames: np.ndarray, samples: int) -> None:
        frames = np.ascontiguousarray(frames, dtype=np.float16)
        if frames.ndim != 2 or frames.shape[1] != self.width:
            raise ValueError(f"frames of shape {frames.shape}: expected (n, {self.width})")
        self.file.write(frames.tobytes())
        self.entries[key] = [self.offset, frames.shape[0], int(samples)]
        self.offset += frames.shape[0]
        if len(self.entries) + len(self.skipped) >= self.per_shard:
            self.commit()
            self._open()

    def skip(self, key: str, reason: str) -> None:
        self.skipped[key] = reason

    def commit(self) -> None:
        """Frames first, index last, each fsynced and renamed into place."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if not self.entries and not self.skipped:
            self.bin_path.unlink()
            return
        self.bin_path.replace(self.folder / f"{self.name}.bin")
        index = self.folder / f"{self.name}.json.partial"
        with index.open("w") as f:
            json.dump({"entries": self.entries, "skipped": self.skipped, "width": self.width}, f)
            f.flush()
            os.fsync(f.fileno())
        index.replace(self.folder / f"{self.name}.json")
        self.committed += len(self.entries) + len(self.skipped)

    def close(self) -> None:
        self.commit()


def remove_stale_partials(folder: Path) -> list[Path]:
    """Delete ``*.partial`` files and index-less ``.bin`` files whose writer (this host, a pid
    that no longer runs) is gone; another live writer's files are left alone."""
    removed = []
    host = socket.gethostname()
    for path in folder.glob("*.bin*"):
        stem = path.name.split(".")[0]
        if path.suffix == ".bin" and (folder / f"{stem}.json").is_file():
            continue
        parts = stem.split("-")
        writer_host, pid = "-".join(parts[2:-1]), int(parts[-1]) if parts[-1].isdigit() else -1
        if writer_host == host and not _alive(pid):
            path.unlink(missing_ok=True)
            (folder / f"{stem}.json.partial").unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
