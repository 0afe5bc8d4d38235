"""The browser demo (asr.demo): bad input is a message in the page, a clip gives both transcripts
and the trace figures, and the real page works in a headless Chromium driven by Playwright
(upload a clip, see the transcript and the figures; upload a non-audio file, see the error; the
app still answers). The page's screenshot is kept in test-artifacts/demo.png."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SHARED_DATA, manifest_rows

from asr.audio import SAMPLE_RATE
from asr.demo import FIGURES, Demo

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "offline"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    return Demo(CHECKPOINT, work_dir=tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real dev clip from ../shared/data, or synthetic speech (espeak-ng) without it."""
    folder = tmp_path_factory.mktemp("clips")
    if (SHARED_DATA / "librispeech.dev.jsonl").is_file():
        row = manifest_rows(SHARED_DATA / "librispeech.dev.jsonl", 3)[2]
        samples, _ = sf.read(SHARED_DATA / row["audio"], dtype="float32")
        text = row["text"]
    else:
        from asr.synth import synthesize

        text = "the quick brown fox jumps over the lazy dog"
        samples = synthesize(text)
    path = folder / "speech.wav"
    sf.write(path, samples, SAMPLE_RATE)
    return path, text.lower()


def test_bad_input_is_a_message_not_an_exception(demo: Demo, tmp_path: Path) -> None:
    assert "Record something" in demo(None).message
    text = tmp_path / "notes.txt"
    text.write_text("not audio at all\n" * 50)
    out = demo(str(text))
    assert out.message.startswith("Cannot use notes.txt:") and out.transcript == ""
    assert str(tmp_path) not in out.message  # the temp folder of an upload means nothing to a student
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    assert "no audio samples" in demo(str(empty)).message
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(3 * SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    assert demo(str(silent)).message.startswith("No speech found in silent.wav")


def test_too_long_for_the_demo(demo: Demo, speech: tuple[Path, str]) -> None:
    limit, demo.max_seconds = demo.max_seconds, 1.0
    try:
        out = demo(str(speech[0]))
    finally:
        demo.max_seconds = limit
    assert "this demo takes up to 1 s" in out.message and "asr transcribe" in out.message


def test_a_clip_gives_both_transcripts_and_the_trace(demo: Demo, speech: tuple[Path, str]) -> None:
    path, reference = speech
    out = demo(str(path))
    assert out.message == ""
    words = set(reference.split())
    assert len(words & set(out.baseline.lower().replace(",", "").replace(".", "").split())) >= len(words) // 2
    assert out.transcript.strip()
    assert "offline:" in out.timings and "faster-whisper" in out.timings
    assert [caption for _, caption in out.images] == list(FIGURES.values())
    assert all(Path(p).is_file() and Path(p).read_bytes()[:4] == b"\x89PNG" for p, _ in out.images)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_the_page_in_a_real_browser(demo: Demo, speech: tuple[Path, str], tmp_path: Path) -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} missing: install Debian's chromium (.ci/run does)")
    pytest.importorskip("gradio", reason="the demo group: poetry install --with demo")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser group: poetry install --with browser"
    )
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from asr.demo import build_app

    port = free_port()
    app = build_app(demo).queue()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")

            def transcribe(path: Path) -> None:
                page.locator("#upload input[type=file]").set_input_files(str(path))
                page.wait_for_timeout(500)
                page.locator("#transcribe").click()

            transcribe(speech[0])
            ours = page.locator("#ours textarea")
            page.wait_for_function(
                "() => document.querySelector('#ours textarea').value.length > 0", timeout=120_000
            )
            assert ours.input_value().strip()
            assert page.locator("#baseline textarea").input_value().strip()
            page.wait_for_function(
                f"""() => {{
                    const images = [...document.querySelectorAll('#trace img')];
                    return images.length >= {len(FIGURES)} && images.every(i => i.complete && i.naturalWidth > 0)
                        && !document.querySelector('.pending, .eta-bar');
                }}""",
                timeout=60_000,
            )
            page.wait_for_timeout(1000)  # the outputs' fade-in
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)

            page.locator(
                "#upload button[aria-label*='Clear'], #upload button[aria-label*='Remove']"
            ).first.click()
            transcribe(bad)
            page.wait_for_function(
                "() => document.querySelector('#message').innerText.includes('Cannot use photo.png')",
                timeout=60_000,
            )
            # the app still answers
            page.locator(
                "#upload button[aria-label*='Clear'], #upload button[aria-label*='Remove']"
            ).first.click()
            transcribe(speech[0])
            page.wait_for_function(
                "() => !document.querySelector('#message').innerText.includes('Cannot use')", timeout=120_000
            )
            page.wait_for_function(
                "() => document.querySelector('#ours textarea').value.length > 0", timeout=120_000
            )
            browser.close()
    finally:
        app.close()
    shutil.copyfile(ARTIFACTS / "demo.png", tmp_path / "demo.png")
