"""The README is executable truth: every command and Python block in it runs.

The transformer testbed's commands run here, one after another on one worker,
so each reuses the programs the one before it compiled (the persistent cache);
the other commands and the Python blocks run in tests/test_readme_more.py (two
files: the workers take one file each, and the README's commands are the
suite's longest file).

Each shell command of README.md's ```bash blocks runs as written, in a fresh
process, from a folder outside the repository (as a user of the installed
package would), with small overrides where it is long (a tiny grid, a tiny
model; flags appended after the README's own win).  The exceptions are stated
here: `pip install` (the test environment is the installed package; CI's
`.ci/run` runs the README's install command from a fresh clone) and
`python -m pytest` (this suite).  `paper_repro` is a script of the repository,
so its commands run from the repository root, into temporary folders.

Process groups run together: consecutive lines ending in `&` and the line after
them, with `--coordinator` moved to a free port of 127.0.0.1; `srun --ntasks N
cmd` runs N copies of `cmd` with the environment SLURM gives its tasks.  A
command with `--mesh DATAxMODEL` gets DATA x MODEL / processes forced CPU devices
per process (XLA's `--xla_force_host_platform_device_count`).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from geomsim.io import loads_strict

from process_group import free_port, run_together, slurm
from tiny_configs import TESTBED, TESTBED_DEFENSES, TESTBED_SWEEP, as_flags

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

TINY_SWEEP = ["--sharpness", "2,20", "--coupling", "0.1,1", "--steps", "400", "--records", "20", "--dim", "8",
              "--rank", "2"]
# Appended to a README command that starts with the key (the longest matching key wins).
OVERRIDES = {
    ("python", "-m", "geomsim.sweep"): TINY_SWEEP,
    ("python", "-m", "geomsim.testbed"): as_flags(TESTBED),
    # The full pipeline on these settings is tests/test_testbed.py's fixture; here the CLI
    # runs through alignment (a fresh process compiles the diagnostics for minutes).
    ("python", "-m", "geomsim.testbed", "--out"): [*as_flags(TESTBED), "--stop-after", "align"],
    # The flags example: parsed and run through alignment (the full pipeline is the command above it).
    ("python", "-m", "geomsim.testbed", "--seeds"): [*as_flags(TESTBED), "--stop-after", "align"],
    ("python", "-m", "geomsim.testbed", "sweep"): as_flags(TESTBED_SWEEP),
    ("python", "-m", "geomsim.testbed", "defenses"): as_flags(TESTBED_DEFENSES),
    ("python", "-m", "paper_repro"): ["--only", "controls_mu"],
    # A few training steps: the diagnosis after it only needs the folder's format and data.
    ("python", "-m", "geomsim.testbed.hf_export"): ["--pretrain-steps", "20", "--align-steps", "10",
                                                   "--eval-size", "16", "--finetune-size", "16"],
}
NOT_RUN = {
    ("pip", "install"): "the test environment is the installed package; .ci/run runs the install from a fresh clone",
    ("python", "-m", "pytest"): "this is the test suite itself",
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


# A bash block whose first line is this comment runs as one sequence in one folder
# (each command may read what the one before it wrote): `ordered_blocks`.
IN_ORDER = "# in one folder, in order"


def _lines(block: str) -> list[list[str]]:
    return [tokens for line in block.splitlines() if (tokens := shlex.split(line, comments=True))]


def ordered_blocks() -> list[list[str]]:
    """The commands of every `IN_ORDER` block, in order."""
    return [[" ".join(shlex.quote(t) for t in tokens) for tokens in _lines(block)]
            for block in blocks("bash") if block.startswith(IN_ORDER)]


def _shell_lines() -> list[list[str]]:
    """The tokens of every command line of the README's bash blocks (comments dropped),
    but for the `IN_ORDER` blocks."""
    lines = []
    for block in blocks("bash"):
        if block.startswith(IN_ORDER):
            continue
        for line in block.splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens:
                lines.append(tokens)
    return lines


def _split_lines() -> tuple[list[str], list[list[list[str]]]]:
    """(single commands with `a && b` split, process groups as lists of argvs)."""
    singles, groups, pending = [], [], []
    for tokens in _shell_lines():
        if tokens[0] == "srun":
            groups.append([tokens])
        elif tokens[-1] == "&":
            pending.append(tokens[:-1])
        elif pending:
            groups.append([*pending, tokens])
            pending = []
        else:
            words = " ".join(shlex.quote(t) for t in tokens)
            singles.extend(part.strip() for part in words.split(" '&&' "))
    assert not pending, "a README line ends in & with no command after it"
    return singles, groups


def shell_commands() -> list[str]:
    """Every command of the README's bash blocks (comments dropped, `a && b` split),
    except the process groups (`process_groups`)."""
    return _split_lines()[0]


def process_groups() -> list[list[list[str]]]:
    """The README's process groups: lines ending in `&` with the line after them, and `srun` lines."""
    return _split_lines()[1]


def _matching(table, tokens):
    keys = [k for k in table if tuple(tokens[: len(k)]) == k]
    return max(keys, key=len) if keys else None


def _environment():
    env = dict(os.environ)
    # Share the test session's compilation cache and compiler settings (tests/conftest.py).
    env["GEOMSIM_JAX_CACHE"] = env["JAX_COMPILATION_CACHE_DIR"] = str(ROOT / ".pytest_cache" / "jax")
    if os.environ.get("GEOMSIM_TEST_OPTIMIZED") != "1":
        env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"
    env["MPLBACKEND"] = "Agg"
    return env


def _mesh_devices(tokens: list[str], processes: int = 1) -> dict[str, str]:
    """Forced CPU devices for a `--mesh DATAxMODEL` command (none without one)."""
    if "--mesh" not in tokens:
        return {}
    data, model = (int(v) for v in tokens[tokens.index("--mesh") + 1].split("x"))
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={data * model // processes}"
    return {"XLA_FLAGS": flags.strip()}


def _run(argv, cwd, timeout=900):
    env = {**_environment(), **_mesh_devices(argv)}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def test_the_readme_has_the_two_setup_commands_first():
    first = blocks("bash")[0].strip().splitlines()
    assert first == ['pip install . && python -m geomsim.sweep', 'pip install ".[test]" && python -m pytest']


COMMANDS = shell_commands()
# The README's `testbed sweep` and `testbed defenses` runs resume from the fixtures of
# tests/test_testbed_sweep.py, which train and measure with these very settings
# (TESTBED_SWEEP, TESTBED_DEFENSES): run cold here they cost 223 s and 195 s of the suite.
RESUMED_COMMANDS = [c for c in COMMANDS if c.startswith(("python -m geomsim.testbed sweep --out",
                                                         "python -m geomsim.testbed defenses --out"))]
TESTBED_COMMANDS = [c for c in COMMANDS if c.startswith("python -m geomsim.testbed") and c not in RESUMED_COMMANDS]
OTHER_COMMANDS = [c for c in COMMANDS if not c.startswith("python -m geomsim.testbed")]


# The others: tests/test_readme_more.py, and RESUMED_COMMANDS in tests/test_testbed_sweep.py.
@pytest.mark.parametrize("command", TESTBED_COMMANDS)
def test_readme_command_runs(command, tmp_path):
    check_command(command, tmp_path)


# Run (and checked against a one-device diagnosis) by tests/test_processes.py.
CHECKED_ELSEWHERE = ("geomsim.diagnose",)


@pytest.mark.parametrize("group", process_groups(), ids=lambda g: " & ".join(" ".join(c[:4]) for c in g))
def test_readme_process_group_runs(group, tmp_path):
    """The group's processes start together on 127.0.0.1 and all exit 0."""
    if any(name in group[0] for name in CHECKED_ELSEWHERE):
        pytest.skip("run and checked against one device by tests/test_processes.py")
    run_group(group, tmp_path)


def run_group(group: list[list[str]], cwd: Path) -> None:
    """Start a README process group in `cwd` as the module docstring says; asserts every
    process exits 0 and every JSON written is strict."""
    port = free_port()
    if group[0][0] == "srun":
        count = int(group[0][group[0].index("--ntasks") + 1])
        argvs = [group[0][group[0].index("python"):]] * count
        envs = [slurm(port)(i, count) for i in range(count)]
    else:
        argvs = [[f"127.0.0.1:{port}" if prev == "--coordinator" else t for prev, t in zip(["", *c[:-1]], c, strict=True)]
                 for c in group]
        envs = [{} for _ in group]
    full = []
    for argv in argvs:
        assert argv[0] == "python", f"unexpected command in a README process group: {argv}"
        full.append([sys.executable, *argv[1:], *OVERRIDES.get(_matching(OVERRIDES, argv), [])])
    envs = [{**_environment(), **env, **_mesh_devices(argv, len(argvs))} for env, argv in zip(envs, argvs,
                                                                                                strict=True)]
    results = run_together(full, envs, cwd=cwd, timeout=600)
    assert [code for code, _ in results] == [0] * len(full), [err[-2000:] for _, err in results]
    assert_strict_json(cwd)


def check_command(command: str, tmp_path: Path) -> None:
    """Run one README command as the module docstring says (skips the NOT_RUN ones)."""
    tokens = shlex.split(command)
    skip = _matching(NOT_RUN, tokens)
    if skip:
        pytest.skip(NOT_RUN[skip])
    assert tokens[0] == "python", f"unexpected command in the README: {command}"
    extra = OVERRIDES.get(_matching(OVERRIDES, tokens), [])
    if "--help" in tokens:
        extra = []
    repo_script = tokens[:3] == ["python", "-m", "paper_repro"]
    if repo_script:
        extra = [*extra, "--runs", str(tmp_path / "runs"), "--figures", str(tmp_path / "figures")]
        if "--only" in tokens:
            extra = extra[2:]  # the README's own selection
    else:
        for name in ("experiments", "examples"):  # commands that name an experiment or example file
            if not (tmp_path / name).exists():
                (tmp_path / name).symlink_to(ROOT / name)
    proc = _run([sys.executable, *tokens[1:], *extra], cwd=ROOT if repo_script else tmp_path)
    if "--help" in tokens:
        assert "usage:" in proc.stdout
    assert_strict_json(tmp_path)


def assert_strict_json(folder: Path) -> None:
    """Every JSON file a command wrote parses with a strict parser (no NaN / Infinity tokens)."""
    for path in folder.rglob("*.json"):
        if not path.is_symlink() and "experiments" not in path.parts:
            try:
                loads_strict(path.read_text())
            except ValueError as err:
                raise AssertionError(f"{path.relative_to(folder)} is not strict JSON: {err}") from None


def test_committed_manifest_is_strict_json():
    manifest = loads_strict((ROOT / "figures" / "manifest.json").read_text())
    assert "testbed_sweep" in manifest["figures"]
