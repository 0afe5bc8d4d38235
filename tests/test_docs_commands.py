"""Every `train.py` command the docs show composes into a run's configs.

The commands are read from README.md, curriculum/*.md and checkpoints/*/README.md (code blocks and
inline code; `poetry run python train.py`, `python train.py`, `make train ARGS="..."`, `torchrun ...
train.py`, `accelerate launch ... train.py`). Each one's overrides are composed with Hydra in-process
and turned into the config objects by the function train.py uses (so every check runs), without
training. Placeholder paths (`my/train.jsonl`) become a real tiny manifest. One command also runs
through the CLI (`--cfg job`) in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hydra import compose, initialize_config_dir

from asr.training.config import configs_from_hydra, register_configs

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "curriculum").glob("*.md"))]
DOCS += sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "checkpoints").glob("*/README.md"))

# how a command may start; the overrides follow `train.py` (or ARGS="..." for make)
LAUNCHERS = (("poetry", "run", "python"), ("python",), ("python3",), ("torchrun",), ("accelerate", "launch"))
PLACEHOLDER = re.compile(r"^(my/|<.*>$)")


@dataclass(frozen=True)
class DocCommand:
    file: str
    line: int
    text: str
    overrides: tuple[str, ...]
    launcher_options: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def parse_command(text: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """``(overrides, launcher options)`` of a shell command that runs train.py, else None."""
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:
        return None
    tokens = [t for t in tokens if t not in ("...", "…")]  # "train.py ..." : any overrides
    if tokens[:2] == ["make", "train"]:
        args = [t.split("=", 1)[1] for t in tokens[2:] if t.startswith("ARGS=")]
        return tuple(shlex.split(" ".join(args))), ()
    if not any(tuple(tokens[: len(prefix)]) == prefix for prefix in LAUNCHERS):
        return None
    at = [i for i, t in enumerate(tokens) if t == "train.py" or t.endswith("/train.py")]
    if not at:
        return None
    return tuple(tokens[at[0] + 1 :]), tuple(tokens[: at[0]])


def code_spans(markdown: str) -> list[tuple[str, int]]:
    """Shell lines of a markdown text with their line numbers: the lines of code blocks (``\\``
    continuations joined) and inline code spans."""
    found: list[tuple[str, int]] = []
    in_block, pending, start = False, "", 0
    for number, line in enumerate(markdown.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if in_block:
            start = start if pending else number
            pending += line.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            found.append((pending.strip(), start))
            pending = ""
        else:
            found += [(span.strip(), number) for span in re.findall(r"`([^`]+)`", line)]
    return found


def doc_commands(markdown: str, file: str) -> list[DocCommand]:
    """The train.py commands of a markdown text, each with its line number."""
    found = []
    for text, at in code_spans(markdown):
        parsed = parse_command(text)
        if parsed is not None:
            found.append(DocCommand(file, at, text, *parsed))
    return found


def all_doc_commands() -> list[DocCommand]:
    return [c for doc in DOCS for c in doc_commands((ROOT / doc).read_text(), doc)]


COMMANDS = all_doc_commands()


def _ids(commands: list[DocCommand]) -> list[str]:
    seen: dict[str, int] = {}
    ids = []
    for c in commands:
        seen[c.where] = seen.get(c.where, 0) + 1
        ids.append(c.where if seen[c.where] == 1 else f"{c.where}#{seen[c.where]}")
    return ids


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """A real tiny manifest: one clip and its transcript."""
    folder = tmp_path_factory.mktemp("docs-data")
    t = np.arange(16000) / 16000
    sf.write(folder / "a.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    path = folder / "train.jsonl"
    path.write_text(json.dumps({"audio": "a.wav", "text": "red cat"}) + "\n")
    return path


def substitute(overrides: tuple[str, ...], manifest: Path) -> list[str]:
    """Placeholder values (``my/train.jsonl``, ``<checkpoint>``) -> the tiny manifest's path."""
    out = []
    for override in overrides:
        key, sep, value = override.partition("=")
        out.append(f"{key}={manifest}" if sep and PLACEHOLDER.match(value) else override)
    return out


def compose_run(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return configs_from_hydra(cfg)


def test_the_docs_show_train_commands():
    kinds = {c.text.split()[0] for c in COMMANDS}
    assert any(c.file == "README.md" for c in COMMANDS), "no train.py command found in README.md"
    assert {"poetry", "make"} <= kinds, kinds


def test_command_extraction_handles_every_launcher():
    markdown = "\n".join(
        [
            'Run `make train ARGS="training.max_steps=300 model=offline_lora"` or `src/asr/training/`.',
            "```bash",
            "poetry run python train.py experiment=local_corpus   # a comment",
            "torchrun --nproc_per_node 2 train.py ...",
            "accelerate launch --config_file conf/accelerate/fsdp.yaml train.py \\",
            "    experiment=flagship",
            "python benchmarks/train_throughput.py --steps 3",
            "make train",
            "```",
            "| what `train.py` does |",
        ]
    )
    found = [(c.line, c.overrides, c.launcher_options) for c in doc_commands(markdown, "x.md")]
    assert found == [
        (1, ("training.max_steps=300", "model=offline_lora"), ()),
        (3, ("experiment=local_corpus",), ("poetry", "run", "python")),
        (4, (), ("torchrun", "--nproc_per_node", "2")),
        (5, ("experiment=flagship",), ("accelerate", "launch", "--config_file", "conf/accelerate/fsdp.yaml")),
        (8, (), ()),
    ]


@pytest.mark.parametrize("command", COMMANDS, ids=_ids(COMMANDS))
def test_doc_command_composes(command: DocCommand, manifest: Path):
    options = list(command.launcher_options)
    if "--config_file" in options:  # accelerate's config must exist too
        config_file = ROOT / options[options.index("--config_file") + 1]
        assert config_file.is_file(), f"{command.where}: `{command.text}`: {config_file} does not exist"
    overrides = substitute(command.overrides, manifest)
    try:
        run = compose_run(overrides)
    except Exception as error:  # noqa: BLE001 (any failure is the docs' failure, reported with its place)
        cause = f"\n{error.__cause__}" if error.__cause__ else ""
        pytest.fail(
            f"{command.where}: `{command.text}` does not compose:\n{type(error).__name__}: {error}{cause}"
        )
    for override in overrides:
        if override.endswith(f"={manifest}"):
            assert str(manifest) in json.dumps([run.data.train, run.data.eval]), override


def test_a_doc_command_runs_through_the_cli(manifest: Path):
    """The README's own-data command, end to end through train.py (`--cfg job`: no training)."""
    command = next(c for c in COMMANDS if c.file == "README.md" and "data=manifest" in c.overrides)
    result = subprocess.run(
        [sys.executable, "train.py", *substitute(command.overrides, manifest), "--cfg", "job"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{command.where}: `{command.text}`\n{result.stderr[-3000:]}"
    assert f"path: {manifest}" in result.stdout and "max_new_tokens_base: 16" in result.stdout


# --------------------------------------------------------------------------- the asr command and benchmarks

CLI_DOCS = [*DOCS, "benchmarks/README.md"]


def cli_parsers() -> dict[str, argparse.ArgumentParser]:
    """Each documented program (``asr <sub>``, ``python -m asr.trace``, the benchmark) -> its parser."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench

    from asr import cli, demo, trace

    root = cli.build_parser()
    subparsers = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    parsers = {f"asr {name}": p for name, p in subparsers.choices.items()}
    parsers["asr trace"] = parsers["python -m asr.trace"] = trace.build_parser()
    parsers["asr demo"] = demo.build_parser()
    parsers["python benchmarks/bench.py"] = argparse.ArgumentParser()
    bench.add_arguments(parsers["python benchmarks/bench.py"])
    return parsers


def cli_command(text: str) -> tuple[str, list[str]] | None:
    """``(program, arguments)`` of a documented ``asr ...`` / ``python -m asr ...`` / benchmark command."""
    try:
        tokens = [t for t in shlex.split(text, comments=True) if t not in ("...", "…")]
    except ValueError:
        return None
    if tokens[:2] == ["poetry", "run"]:
        tokens = tokens[2:]
    if tokens[:3] in (["python", "-m", "asr"], ["python3", "-m", "asr"]):
        tokens = ["asr", *tokens[3:]]
    if tokens[:3] == ["python", "-m", "asr.trace"]:
        return "python -m asr.trace", tokens[3:]
    if tokens[:2] == ["python", "benchmarks/bench.py"]:
        return "python benchmarks/bench.py", tokens[2:]
    if len(tokens) >= 2 and tokens[0] == "asr" and re.fullmatch(r"[a-z]+", tokens[1]):
        return f"asr {tokens[1]}", tokens[2:]
    return None


def documented_cli_commands() -> list[tuple[str, str, str, list[str]]]:
    found = []
    for doc in CLI_DOCS:
        for text, at in code_spans((ROOT / doc).read_text()):
            parsed = cli_command(text)
            if parsed:
                found.append((f"{doc}:{at}", text, *parsed))
    return found


CLI_COMMANDS = documented_cli_commands()


def test_the_docs_show_cli_commands():
    programs = {program for _, _, program, _ in CLI_COMMANDS}
    assert {"asr evaluate", "python -m asr.trace", "python benchmarks/bench.py"} <= programs


@pytest.mark.parametrize(
    ("where", "text", "program", "arguments"), CLI_COMMANDS, ids=[c[0] for c in CLI_COMMANDS]
)
def test_documented_cli_command_exists_with_its_options(
    where: str, text: str, program: str, arguments: list[str]
):
    """Every subcommand and ``--option`` a doc shows exists (inline mentions may leave out
    required arguments, so options are checked one by one rather than parsed as a whole)."""
    parsers = cli_parsers()
    assert program in parsers, f"{where}: `{text}` names {program!r}, which does not exist"
    known = {option for action in parsers[program]._actions for option in action.option_strings}
    for token in arguments:
        option = token.split("=", 1)[0]
        if option.startswith("--"):
            assert option in known, f"{where}: `{text}`: {program} has no option {option}"
