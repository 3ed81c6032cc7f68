"""Several processes on 127.0.0.1 (jax.distributed, CPU collectives) write the same sweep
as one process, byte for byte, and finish with --resume after one of them was killed."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from geomsim.sweep.cli import main
from geomsim.sweep.processes import ProcessGroup

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["--dim", "8", "--rank", "2", "--sharpness", "1:10:3", "--coupling", "0.1,1", "--seeds", "2",
         "--steps", "200", "--records", "20", "--chunk", "3", "--no-plots", "--quiet"]  # 12 runs, 4 chunks
# Process 1 as if killed (SIGKILL: no cleanup, no exit handlers) right after writing its first chunk.
DIES_AFTER_ONE_CHUNK = textwrap.dedent("""
    import os, sys
    import geomsim.sweep.run as run
    save = run._save_chunk
    def save_then_die(path, arrays):
        save(path, arrays)
        os._exit(9)
    run._save_chunk = save_then_die
    from geomsim.sweep.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["GEOMSIM_JAX_CACHE"] = str(ROOT / ".pytest_cache" / "jax")
    return env


def launch(module_args: list[str], out: Path, processes: int, *, kill_second: bool = False, timeout: float = 240):
    """Run `python -m geomsim.sweep` as `processes` processes; returns [(returncode, stderr)]."""
    group = [] if processes == 1 else ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes",
                                       str(processes)]
    procs = []
    for index in range(processes):
        args = [*module_args, "--out", str(out), *group, *(["--process-id", str(index)] if group else [])]
        head = ["-c", DIES_AFTER_ONE_CHUNK] if kill_second and index == 1 else ["-m", "geomsim.sweep"]
        procs.append(subprocess.Popen([sys.executable, *head, *args], cwd=ROOT, env=environment(),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=timeout)
            results.append((proc.returncode, err))
    finally:
        for proc in procs:
            proc.kill()
    return results


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "sweep"
    [(code, err)] = launch(SWEEP, out, 1)
    assert code == 0, err
    return out


def assert_same_tables(a: Path, b: Path) -> None:
    for name in ("results.csv", "curves.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_two_processes_write_the_one_process_tables(single, tmp_path):
    results = launch(SWEEP, tmp_path / "two", 2)
    assert [code for code, _ in results] == [0, 0], results
    assert_same_tables(single, tmp_path / "two")
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    assert (meta["processes"], meta["chunks_computed"], meta["state"]) == (2, 4, "complete")
    assert "[process 1/2]" in results[1][1]


def test_resume_after_one_process_was_killed(single, tmp_path):
    out = tmp_path / "killed"
    (code0, err0), (code1, _) = launch(SWEEP, out, 2, kill_second=True)
    assert code1 == 9
    assert code0 == 1 and "rerun every process with --resume" in err0, err0
    assert err0.count("Traceback") == 0, err0
    # Round robin: process 0 wrote chunks 0 and 2, process 1 chunk 1 before it died.
    assert sorted(p.name for p in (out / "chunks").glob("*.npz")) == [
        "chunk_00000.npz", "chunk_00001.npz", "chunk_00002.npz"]
    assert json.loads((out / "meta.json").read_text())["state"] == "running"
    results = launch([*SWEEP, "--resume"], out, 2)
    assert [code for code, _ in results] == [0, 0], results
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["chunks_computed"], meta["chunks_resumed"]) == (1, 3)
    assert_same_tables(single, out)


@pytest.mark.parametrize("flags, message", [
    (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"], "process-id: must be in [0, 1]"),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "0", "--process-id", "0"], "num-processes: must be"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "coordinator: expected HOST:PORT"),
    (["--coordinator", "127.0.0.1:1"], "coordinator: also needs --num-processes"),
    (["--num-processes", "2", "--process-id", "1"], "need --coordinator"),
])
def test_bad_process_flags_get_one_line_errors(flags, message, capsys):
    assert main([*flags, "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_one_process_group_shares_everything():
    group = ProcessGroup()
    assert group.leader and group.share([3, 1, 2]) == [3, 1, 2] and group.label("x") == "x"
    assert ProcessGroup(1, 3).share(list(range(8))) == [1, 4, 7]
