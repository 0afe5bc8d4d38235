"""Offline synthetic speech corpus: templated English sentences (or your own) spoken by espeak-ng.

The default training/eval data when no real speech is at hand. espeak-ng comes from the pip package
``espeakng-loader`` (library + voice data, no system install, no network) and is driven in-process
through ctypes. Transcripts are lower-case words without punctuation; numbers are spelled out as words
and spelled letters are single-letter tokens ("b a g").
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import random
import threading
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import espeakng_loader
import numpy as np
import soundfile as sf
from tqdm import tqdm

from asr.audio import SAMPLE_RATE, to_mono_16k
from asr.paths import cache_dir

CORPUS_VERSION = 1  # bump when sentences, voices or synthesis change: a new corpus directory follows
DEFAULT_VOICES = (
    "en-us",
    "en-us+f2",
    "en-us+m3",
    "en",
    "en+f3",
    "en-gb-x-rp",
    "en-gb-x-rp+f4",
    "en-029",
    "en-gb-scotland+m2",
    "en-us-nyc+f1",
)
RATE_RANGE = (130, 200)  # words per minute
PITCH_RANGE = (30, 70)  # espeak pitch, 0-100
PAD_RANGE = (0.05, 0.3)  # seconds of silence added before and after each clip in a corpus

# espeak-ng's speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_EE_OK = 0
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class SynthError(RuntimeError):
    """espeak-ng could not be loaded, does not know a voice, or produced no audio."""


class _Espeak:
    """The process-wide espeak-ng engine (the library keeps global state: one instance, used under a lock)."""

    def __init__(self) -> None:
        lib_path, data_path = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as err:
            raise SynthError(f"{lib_path}: cannot load espeak-ng ({err})") from err
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
        if rate <= 0:
            raise SynthError(f"{data_path}: espeak_Initialize failed (returned {rate})")
        self.lib, self.sample_rate = lib, rate
        self._chunks: list[np.ndarray] = []
        # kept on the instance (which lives as long as the process) so the C side never calls freed memory
        self._callback = _SynthCallback(self._collect)
        lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()

    def _collect(self, wav: ctypes.POINTER(ctypes.c_short), n: int, _events: int) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = keep going

    def speak(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        """int16 samples at ``self.sample_rate``."""
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise SynthError(
                    f"espeak-ng has no voice {voice!r} (try en-us, en, en-gb-x-rp, en-029 +f1..f5/+m1..m7)"
                )
            self.lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
            self.lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
            self._chunks = []
            data = text.encode("utf-8") + b"\0"
            err = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if err != _EE_OK:
            raise SynthError(f"espeak_Synth failed with code {err} for {text!r}")
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


_ENGINE: _Espeak | None = None
_ENGINE_LOCK = threading.Lock()


def _engine() -> _Espeak:
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = _Espeak()
        return _ENGINE


def _speakable(text: str) -> str:
    """Runs of single letters ("b a g") get commas so espeak says letter names ("a" as "ay", not "uh")."""
    words = text.split()
    letter = [len(w) == 1 and w.isalpha() for w in words] + [False]
    out = [w + "," if letter[i] and letter[i + 1] else w for i, w in enumerate(words)]
    return " ".join(out)


def synthesize(text: str, voice: str = "en-us", rate: int = 160, pitch: int = 50) -> np.ndarray:
    """Speak ``text`` with espeak-ng; 16 kHz mono float32 without added silence.

    ``rate`` is in words per minute (80-450), ``pitch`` 0-100; ``voice`` is an espeak-ng name, optionally
    with a variant (``"en-us+f2"``). Not bit-reproducible across calls: espeak-ng keeps its pitch-flutter
    phase in a function-static variable that no API resets, so a repeat differs by a few samples.
    """
    if not text or not text.strip():
        raise ValueError("synthesize: empty text")
    samples = _engine().speak(_speakable(text.strip()), voice, rate, pitch)
    if samples.size == 0:
        raise SynthError(f"espeak-ng produced no audio for {text!r} (voice {voice})")
    return to_mono_16k(samples.astype(np.float32) / 32768.0, _engine().sample_rate)


# --------------------------------------------------------------------------- sentences


def _words(text: str) -> list[str]:
    return text.split()


_NAMES = _words(
    "mark anna john mary peter susan david emma tom lucy james sarah paul kate robert linda michael grace "
    "daniel alice george helen sam laura jack rose henry amy frank olivia"
)
_COLOURS = _words("red blue green yellow black white brown orange pink purple grey")
# singular:plural
_ANIMALS = [
    w.split(":")
    for w in _words(
        "dog:dogs cat:cats horse:horses cow:cows pig:pigs sheep:sheep bird:birds fish:fish duck:ducks "
        "rabbit:rabbits mouse:mice elephant:elephants lion:lions tiger:tigers monkey:monkeys bear:bears "
        "zebra:zebras giraffe:giraffes frog:frogs snake:snakes goat:goats chicken:chickens owl:owls "
        "fox:foxes wolf:wolves whale:whales deer:deer spider:spiders turtle:turtles camel:camels"
    )
]
_OBJECTS = [
    w.split(":")
    for w in _words(
        "ball:balls book:books cup:cups chair:chairs hat:hats box:boxes bag:bags key:keys phone:phones "
        "pen:pens shoe:shoes car:cars bike:bikes apple:apples banana:bananas cake:cakes bottle:bottles "
        "lamp:lamps clock:clocks coat:coats kite:kites boat:boats spoon:spoons plate:plates letter:letters "
        "ticket:tickets umbrella:umbrellas basket:baskets pencil:pencils candle:candles flower:flowers "
        "sandwich:sandwiches cookie:cookies egg:eggs shirt:shirts bucket:buckets glass:glasses watch:watches"
    )
]
_PLACES = _words(
    "park zoo school beach garden kitchen library market station office farm river hospital museum shop "
    "church forest airport bank bakery hotel cinema playground bridge lake"
)
_CITIES = _words("london paris boston chicago dublin sydney berlin madrid tokyo toronto denver seattle")
_SURFACES = _words("table shelf floor bed desk chair sofa counter")
_ADJECTIVES = _words(
    "big small old new happy little tall hungry quiet fast slow funny clean dirty pretty heavy"
)
_A_ADJECTIVES = _words("big small new little pretty heavy")  # after "a", not "an"
_FOODS = _words("bread rice soup cheese pizza pasta fruit salad pancakes eggs potatoes noodles")
_DRINKS = _words("tea coffee milk water juice lemonade")
_MEALS = _words("breakfast lunch dinner")
_DAYS = _words("monday tuesday wednesday thursday friday saturday sunday")
_MONTHS = _words("january february march april may june july august september october november december")
_TIMES = _words("morning afternoon evening")
_WEATHER = _words("sunny cold warm windy cloudy hot")
_DIGITS = _words("zero one two three four five six seven eight nine")
_NUMBERS = (
    _DIGITS[1:]
    + _words("ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty")
    + [f"{tens} {unit}" for tens in ("twenty", "thirty", "forty") for unit in _DIGITS[1:]]
    + _words("thirty forty fifty sixty seventy eighty ninety")
)
_SPELL_WORDS = _words(
    "bag cat dog sun hat box pen cup red map bus egg fox jam key leg net owl pig rat tea van web yes zoo "
    "bird fish milk book tree frog lamp ship"
)
_COMMANDS = [
    "yes please",
    "no thank you",
    "yes i do",
    "no i do not",
    "stop the music",
    "turn left",
    "turn right",
    "go back",
    "go straight ahead",
    "open the door",
    "close the window",
    "turn on the light",
    "turn off the radio",
    "come here please",
    "sit down please",
    "stand up",
    "play the music",
    "call my sister",
    "wait a minute",
    "start again",
    "speak louder please",
    "that is correct",
    "that is wrong",
    "not now",
    "of course",
    "i do not know",
    "see you later",
    "good morning",
    "good night",
    "thank you very much",
]


def _spell(rng: random.Random) -> str:
    word = (
        rng.choice(_SPELL_WORDS)
        if rng.random() < 0.7
        else "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 5)))
    )
    return " ".join(word)


def _template(rng: random.Random) -> str:
    """One sentence from a randomly chosen template."""
    c, name, place = rng.choice, lambda: rng.choice(_NAMES), lambda: rng.choice(_PLACES)
    animal, animals = (lambda: c(_ANIMALS)[0]), (lambda: c(_ANIMALS)[1])
    obj, objs = (lambda: c(_OBJECTS)[0]), (lambda: c(_OBJECTS)[1])
    number, digits = (lambda: c(_NUMBERS)), (lambda k: " ".join(rng.choices(_DIGITS, k=k)))
    templates = [
        lambda: f"{name()} is going to see the {animal()}",
        lambda: f"the {c(_COLOURS)} {animal()} is in the {place()}",
        lambda: f"{name()} has {c(_NUMBERS[1:20])} {c(_COLOURS)} {objs()}",
        lambda: f"please put the {obj()} on the {c(_SURFACES)}",
        lambda: f"where is the {c(_ADJECTIVES)} {animal()}",
        lambda: f"{name()} lives in {c(_CITIES)}",
        lambda: f"{name()} and {name()} went to the {place()} on {c(_DAYS)}",
        lambda: f"i would like a cup of {c(_DRINKS)} please",
        lambda: f"we had {c(_FOODS)} for {c(_MEALS)}",
        lambda: f"can you give me the {c(_COLOURS)} {obj()}",
        lambda: f"there are {c(_NUMBERS[1:])} {animals()} on the farm",
        lambda: f"my phone number is {digits(rng.randint(5, 7))}",
        lambda: digits(rng.randint(2, 6)),
        lambda: digits(rng.randint(2, 6)),
        lambda: _spell(rng),
        lambda: f"it is spelled {_spell(rng)}",
        lambda: c(_COMMANDS),
        lambda: c(_COMMANDS),
        lambda: f"{name()} is {number()} years old",
        lambda: f"the {place()} opens at {c(_NUMBERS[:12])} in the {c(_TIMES)}",
        lambda: f"{name()} bought a {c(_A_ADJECTIVES)} {obj()} at the {place()}",
        lambda: f"it is {c(_WEATHER)} in {c(_CITIES)} today",
        lambda: f"the {animal()} and the {animal()} are friends",
        lambda: f"{name()} saw {c(_NUMBERS[1:])} {c(_COLOURS)} {animals()} near the {place()} yesterday",
        lambda: f"did you see the {animal()}",
        lambda: f"{name()} wants to take the {c(_COLOURS)} {obj()} to the {place()} after {c(_MEALS)}",
        lambda: f"the {c(_ADJECTIVES)} {animal()} jumped over the {c(_COLOURS)} {obj()}",
        lambda: f"in {c(_MONTHS)} we go to {c(_CITIES)}",
        lambda: f"{name()} likes {c(_FOODS)} and {c(_DRINKS)}",
        lambda: f"the {obj()} is under the {c(_SURFACES)}",
        lambda: f"{name()} lost the {c(_COLOURS)} {obj()} in the {place()} on {c(_DAYS)} {c(_TIMES)}",
    ]
    return c(templates)()


def sentences(n: int, seed: int, exclude: Collection[str] = ()) -> list[str]:
    """``n`` deterministic lower-case read-speech style sentences of 2-12 words, none in ``exclude``."""
    rng = random.Random(f"asr.synth.sentences:{seed}")
    out: list[str] = []
    for _ in range(200 * n + 1000):
        if len(out) == n:
            return out
        text = _template(rng)
        if 2 <= len(text.split()) <= 12 and text not in exclude:
            out.append(text)
    raise ValueError(f"sentences: could not draw {n} sentences outside the {len(exclude)} excluded ones")


def read_sentences(path: str | Path) -> list[str]:
    """The sentences of a text file, one per line, normalised as transcripts are scored
    (:func:`asr.evaluate.normalize`: lower case, no punctuation, digits as words), so the speech and
    its transcript say the same words. Blank lines are skipped; a line with no words is an error."""
    from asr.evaluate import normalize

    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read sentences ({e})") from e
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        text = normalize(line)
        if not text:
            raise ValueError(f"{path}:{number}: no words to speak in {line.strip()!r}")
        out.append(text)
    if not out:
        raise ValueError(f"{path}: no sentences (one per line)")
    return out


# --------------------------------------------------------------------------- corpora


def _corpus_key(
    n: int, seed: int, voices: Sequence[str], exclude: Collection[str], texts: Sequence[str] | None = None
) -> str:
    spec = [CORPUS_VERSION, n, seed, list(voices), sorted(exclude)] + (
        [list(texts)] if texts is not None else []
    )
    return hashlib.sha1(json.dumps(spec).encode()).hexdigest()[:12]


def _is_complete(out_dir: Path, split: str, key: str, n: int) -> bool:
    manifest, meta = out_dir / f"{split}.jsonl", out_dir / f"{split}.meta.json"
    if not (manifest.is_file() and meta.is_file()):
        return False
    try:
        if json.loads(meta.read_text()).get("key") != key:
            return False
    except json.JSONDecodeError:
        return False
    with manifest.open() as f:
        return sum(1 for line in f if line.strip()) == n


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    Path(tmp).replace(path)


def build_corpus(
    out_dir: Path,
    n: int,
    seed: int = 0,
    voices: list[str] | None = None,
    split: str = "train",
    exclude: Collection[str] = (),
    texts: Sequence[str] | None = None,
) -> Path:
    """Synthesise ``n`` clips into ``out_dir/audio/`` and return the manifest ``out_dir/<split>.jsonl``.

    The clips say templated sentences (:func:`sentences`), or the first ``n`` of ``texts`` when given
    (e.g. :func:`read_sentences`: sentences with words a real corpus lacks).

    Each clip gets a voice from ``voices`` (default :data:`DEFAULT_VOICES`), a rate in :data:`RATE_RANGE`,
    a pitch in :data:`PITCH_RANGE` and 0.05-0.3 s of silence at each end. The manifest is written last
    (temp file + rename) next to a key of (version, n, seed, voices, exclude, texts): a repeated call
    with the same arguments returns at once, and an interrupted build is never mistaken for a finished one.
    """
    if n <= 0:
        raise ValueError(f"build_corpus: n must be positive, got {n}")
    if texts is not None:
        if len(texts) < n:
            raise ValueError(f"build_corpus: {n} clips asked for, {len(texts)} sentences given")
        texts = list(texts[:n])
    voices = list(voices or DEFAULT_VOICES)
    out_dir = Path(out_dir)
    manifest = out_dir / f"{split}.jsonl"
    key = _corpus_key(n, seed, voices, exclude, texts)
    if _is_complete(out_dir, split, key, n):
        return manifest
    manifest.unlink(missing_ok=True)  # a stale manifest must not pair with the new key below
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"asr.synth.corpus:{seed}:{split}")
    rows = []
    spoken = texts if texts is not None else sentences(n, seed, exclude)
    for i, text in enumerate(tqdm(spoken, desc=f"synthesising {split}", unit="clip")):
        voice, rate, pitch = rng.choice(voices), rng.randint(*RATE_RANGE), rng.randint(*PITCH_RANGE)
        pad = [int(rng.uniform(*PAD_RANGE) * SAMPLE_RATE) for _ in range(2)]
        audio = np.pad(synthesize(text, voice, rate, pitch), pad)
        utt_id = f"synth-{split}-s{seed}-{i:06d}"
        rel = f"audio/{utt_id}.wav"
        _write_atomic(
            out_dir / rel, lambda p, a=audio: sf.write(str(p), a, SAMPLE_RATE, "PCM_16", format="WAV")
        )
        rows.append(
            {
                "audio": rel,
                "text": text,
                "duration": round(audio.size / SAMPLE_RATE, 4),
                "speaker": f"{voice}_r{rate}_p{pitch}",
                "utt_id": utt_id,
            }
        )
    meta = {"key": key, "version": CORPUS_VERSION, "n": n, "seed": seed, "voices": voices, "split": split}
    _write_atomic(out_dir / f"{split}.meta.json", lambda p: p.write_text(json.dumps(meta, indent=1)))
    body = "".join(json.dumps(r) + "\n" for r in rows)
    _write_atomic(manifest, lambda p: p.write_text(body))
    return manifest


def default_corpus(n_train: int, n_dev: int, seed: int = 0) -> tuple[Path, Path]:
    """Build (or reuse) the synthetic train and dev corpora under ``cache_dir()/synthetic``.

    Dev uses another seed and leaves out every train sentence, so dev scores measure generalisation to
    new word combinations (same vocabulary, same voices).
    """
    root = cache_dir() / "synthetic"
    train_dir = (
        root / f"v{CORPUS_VERSION}-train-n{n_train}-s{seed}-{_corpus_key(n_train, seed, DEFAULT_VOICES, ())}"
    )
    train = build_corpus(train_dir, n_train, seed, split="train")
    seen = {json.loads(line)["text"] for line in train.read_text().splitlines() if line.strip()}
    dev_seed = seed + 1_000_003
    dev_key = _corpus_key(n_dev, dev_seed, DEFAULT_VOICES, seen)
    dev_dir = root / f"v{CORPUS_VERSION}-dev-n{n_dev}-s{seed}-{dev_key}"
    return train, build_corpus(dev_dir, n_dev, dev_seed, split="dev", exclude=seen)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Synthesise an espeak-ng speech corpus (manifest + 16 kHz wavs)."
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument(
        "--n", type=int, default=None, help="number of clips (default 100, or every line of --text)"
    )
    parser.add_argument(
        "--text",
        type=Path,
        default=None,
        help="speak these sentences (a text file, one per line) instead of templated ones",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", help="manifest name: OUT_DIR/<split>.jsonl")
    parser.add_argument(
        "--voices", nargs="+", default=None, help=f"espeak-ng voices (default {' '.join(DEFAULT_VOICES)})"
    )
    args = parser.parse_args(argv)
    try:
        texts = read_sentences(args.text) if args.text else None
    except ValueError as e:
        parser.error(str(e))
    n = args.n if args.n is not None else len(texts) if texts is not None else 100
    print(build_corpus(args.out_dir, n, args.seed, args.voices, args.split, texts=texts))


if __name__ == "__main__":
    main()
