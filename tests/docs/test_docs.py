"""Every fenced code block of README.md and docs/*.md runs, so the documentation cannot rot.

The blocks of one page run in order in one temporary working directory (later blocks may use what
earlier ones made; the repository's examples/ and benchmarks/ are linked into it, so commands
written from the repository root work), with ``LIGHTNING_MARL_DATA`` pointing at a per-session
directory where the built-in recipes are built once. By language:

- ``python``: executed in this process, the blocks of a page sharing one module namespace; what
  they register (a method, a plugin) is removed from the registry after the page.
- ``bash``: line by line (``\\`` continues a line, ``#`` starts a comment). ``python -m lightning_marl
  ARGS`` runs in this process through ``lightning_marl.cli.main`` and must return 0; ``export
  NAME=VALUE`` sets an environment variable; any other line runs with ``bash -e -c`` (the venv's
  ``python`` first on PATH) and must succeed.
- ``yaml``, ``toml``: parsed (they must be valid); ``text``: output shown to the reader, not run.

Markers are HTML comments on the lines right before a block (several may stack):

- ``<!-- skip: REASON -->``  not run; reported as a skipped test with REASON (needs a GPU, nodes, ...).
- ``<!-- slow -->``           run only by the slow page test (``pytest -m slow``).
- ``<!-- file: NAME -->``     the block's text is written to NAME first (a suite or config file).
- ``<!-- test: append COMMAND ARGS -->``  appends ARGS to every ``python -m lightning_marl COMMAND``
  line of the block: tiny budgets for the test, the real command for the reader.
- ``<!-- test: replace OLD => NEW -->``  replaces text in the block before it runs.
- ``<!-- test: subprocess -->``  runs the whole bash block with ``bash -e`` in a new process (what
  must not run inside pytest, e.g. a DDP launch that re-executes its command line).

Indented (unfenced) code blocks are not run; the README's two set-up commands are the only ones allowed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

try:
    import tomllib  # Python >= 3.11
except ModuleNotFoundError:  # pragma: no cover - Python 3.10: toml blocks are not parsed
    tomllib = None

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = {"python", "bash"}
CHECKED = {"yaml", "toml"}
SHOWN = {"text"}
MARKER = re.compile(r"^<!--\s*(skip|slow|file|test)\s*(?::\s*(.*?))?\s*-->\s*$")
LINKED = ("examples", "benchmarks")  # linked into each page's working directory
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "&", "2>&1"}


@dataclass
class Block:
    page: Path
    line: int
    language: str
    code: str
    skip: str | None = None
    slow: bool = False
    file: str | None = None
    edits: list[tuple[str, str]] = field(default_factory=list)  # (kind, text)

    @property
    def subprocess(self) -> bool:
        return any(kind == "subprocess" for kind, _ in self.edits)

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def prepared(self) -> str:
        code = self.code
        for kind, text in self.edits:
            if kind == "replace":
                old, new = (part.strip() for part in text.split("=>", 1))
                assert old in code, f"{self.name}: the test marker replaces {old!r}, which the block does not contain"
                code = code.replace(old, new)
        return code

    def appended_args(self, command: str) -> list[str]:
        args = []
        for kind, text in self.edits:
            if kind == "append" and text.split()[0] == command:
                args += shlex.split(text)[1:]
        return args


def parse_blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page with the markers written right before each."""
    lines = page.read_text().splitlines()
    blocks, pending, index = [], [], 0
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        marker = MARKER.match(stripped)
        if marker:
            pending.append((marker.group(1), marker.group(2)))
        elif stripped.startswith("```"):
            fence = stripped[: len(stripped) - len(stripped.lstrip("`"))]
            language = stripped[len(fence):].strip().split()[0] if stripped[len(fence):].strip() else ""
            body, start = [], index + 1
            index += 1
            while index < len(lines) and not lines[index].strip().startswith(fence):
                body.append(lines[index])
                index += 1
            block = Block(page, start, language, "\n".join(body) + "\n")
            for kind, value in pending:
                if kind == "skip":
                    block.skip = value or "no reason given"
                elif kind == "slow":
                    block.slow = True
                elif kind == "file":
                    block.file = value
                else:
                    verb, _, rest = (value or "").partition(" ")
                    assert verb in ("append", "replace", "subprocess"), f"{page.name}:{index}: unknown test marker {value!r}"
                    block.edits.append((verb, rest))
            blocks.append(block)
            pending = []
        elif stripped and pending:
            raise AssertionError(f"{page.name}:{index + 1}: a marker {pending} is not right before a code block")
        index += 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in parse_blocks(page)]


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_every_block_has_a_known_language():
    for block in ALL_BLOCKS:
        known = RUNNABLE | CHECKED | SHOWN
        assert block.language in known, f"{block.name}: language {block.language!r}; use one of {sorted(known)}"


def test_the_readme_has_no_other_unfenced_commands():
    """Indented code is not run: only the two set-up commands (kept verbatim) may be indented."""
    text = (ROOT / "README.md").read_text()
    without_fences = re.sub(r"```.*?```", "", text, flags=re.S)
    indented = [line.strip() for line in without_fences.splitlines() if line.startswith("    ") and line.strip()
                and not line.lstrip().startswith(("-", "*"))]
    assert len(indented) == 2 and all(line.startswith("python3 -m venv .venv && ") for line in indented), indented


@pytest.fixture(scope="session")
def docs_data(tmp_path_factory):
    return tmp_path_factory.mktemp("docs-data")


@pytest.fixture
def page_env(tmp_path, monkeypatch, docs_data):
    """A fresh working directory, the session's data directory, one thread, the registry restored after."""
    from lightning_marl import registry

    monkeypatch.chdir(tmp_path)
    for name in LINKED:  # commands written from the repository root (python examples/x.py) work here too
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    monkeypatch.setenv("LIGHTNING_MARL_DATA", str(docs_data))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    registry.discover()
    saved = {kind: dict(entries) for kind, entries in registry._REGISTRY.items()}
    yield tmp_path
    for kind, entries in saved.items():
        registry._REGISTRY[kind].clear()
        registry._REGISTRY[kind].update(entries)


def _logical_lines(code: str) -> list[str]:
    lines, current = [], ""
    for raw in code.splitlines():
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        lines.append(current + raw)
        current = ""
    return [line for line in lines if line.strip() and not line.strip().startswith("#")]


def run_bash(block: Block, code: str, cwd: Path, monkeypatch) -> None:
    from lightning_marl.cli import main

    if block.subprocess:
        done = subprocess.run(["bash", "-e", "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600)
        print(done.stdout, done.stderr)
        assert done.returncode == 0, f"{block.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return

    for line in _logical_lines(code):
        tokens = shlex.split(line, comments=True)
        if not tokens:
            continue
        if tokens[0] == "export" and len(tokens) == 2 and "=" in tokens[1]:
            name, value = tokens[1].split("=", 1)
            monkeypatch.setenv(name, os.path.expandvars(os.path.expanduser(value)))
        elif tokens[:3] == ["python", "-m", "lightning_marl"] and not SHELL_OPERATORS & set(tokens):
            argv = [os.path.expandvars(os.path.expanduser(t)) for t in tokens[3:]]
            argv += block.appended_args(argv[0]) if argv else []
            code_returned = main(argv)
            assert code_returned == 0, f"{block.name}: `{line.strip()}` returned {code_returned}"
        else:
            done = subprocess.run(["bash", "-e", "-c", line], cwd=cwd, capture_output=True, text=True)
            print(done.stdout, done.stderr)
            assert done.returncode == 0, f"{block.name}: `{line.strip()}` failed:\n{done.stdout}\n{done.stderr}"


def run_page(page: Path, cwd: Path, monkeypatch, include_slow: bool) -> int:
    module = types.ModuleType(f"docs_{re.sub(r'[^a-z0-9]', '_', page.stem.lower())}")
    sys.modules[module.__name__] = module
    ran = 0
    try:
        for block in parse_blocks(page):
            if block.skip or (block.slow and not include_slow):
                continue
            code = block.prepared()
            if block.file:
                (cwd / block.file).parent.mkdir(parents=True, exist_ok=True)
                (cwd / block.file).write_text(code)
            if block.language == "python":
                exec(compile(code, block.name, "exec"), module.__dict__)  # noqa: S102 - the docs' own examples
            elif block.language == "bash":
                run_bash(block, code, cwd, monkeypatch)
            elif block.language == "yaml":
                yaml.safe_load(code)
            elif block.language == "toml" and tomllib is not None:
                tomllib.loads(code)
            ran += block.language in RUNNABLE
    finally:
        sys.modules.pop(module.__name__, None)
    return ran


def _runnable(page: Path, slow: bool) -> bool:
    blocks = parse_blocks(page)
    return any(b.language in RUNNABLE and not b.skip and (slow or not b.slow) for b in blocks) and (
        not slow or any(b.slow and not b.skip for b in blocks))


@pytest.mark.parametrize("page", [p for p in PAGES if _runnable(p, slow=False)], ids=_page_id)
def test_page(page, page_env, monkeypatch):
    assert run_page(page, page_env, monkeypatch, include_slow=False) > 0


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if _runnable(p, slow=True)], ids=_page_id)
def test_page_with_its_slow_blocks(page, page_env, monkeypatch):
    assert run_page(page, page_env, monkeypatch, include_slow=True) > 0


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.skip], ids=lambda b: b.name)
def test_marked_block_is_skipped(block):
    pytest.skip(f"{block.name}: {block.skip}")
