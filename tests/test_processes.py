"""Several processes on 127.0.0.1 (jax.distributed, CPU collectives): a sweep writes the
same bytes as one process and finishes with --resume after one process was killed; a
diagnosis over a mesh of both processes' devices equals the one-device diagnosis."""

import json
from pathlib import Path

import numpy as np
import pytest
from test_readme import process_groups, run_group

from geomsim.diagnose import DiagnoseConfig, diagnose
from geomsim.diagnose.cli import main as diagnose_main
from geomsim.processes import ProcessGroup
from geomsim.sweep.cli import main

from process_group import free_port, launch, slurm

SWEEP = ["--dim", "8", "--rank", "2", "--sharpness", "1:10:3", "--coupling", "0.1,1", "--seeds", "2",
         "--steps", "200", "--records", "20", "--chunk", "3", "--no-plots", "--quiet"]  # 12 runs, 4 chunks


def sweep(out: Path, processes: int, *flags: str, **kw):
    return launch("geomsim.sweep", [*SWEEP, *flags, "--out", str(out)], processes, **kw)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "sweep"
    [(code, err)] = sweep(out, 1)
    assert code == 0, err
    return out


def assert_same_tables(a: Path, b: Path) -> None:
    for name in ("results.csv", "curves.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_two_processes_write_the_one_process_tables(single, tmp_path):
    results = sweep(tmp_path / "two", 2)
    assert [code for code, _ in results] == [0, 0], results
    assert_same_tables(single, tmp_path / "two")
    meta = json.loads((tmp_path / "two" / "meta.json").read_text())
    assert (meta["processes"], meta["chunks_computed"], meta["state"]) == (2, 4, "complete")
    assert "[process 1/2]" in results[1][1]


def test_resume_after_one_process_was_killed(single, tmp_path):
    out = tmp_path / "killed"
    (code0, err0), (code1, _) = sweep(out, 2, dies=(1, "geomsim.sweep.run", "save_chunk"))
    assert code1 == 9
    assert code0 == 1 and "rerun every process (a sweep: with --resume" in err0, err0
    assert err0.count("Traceback") == 0, err0
    # Round robin: process 0 wrote chunks 0 and 2, process 1 chunk 1 before it died.
    assert sorted(p.name for p in (out / "chunks").glob("*.npz")) == [
        "chunk_00000.npz", "chunk_00001.npz", "chunk_00002.npz"]
    assert json.loads((out / "meta.json").read_text())["state"] == "running"
    results = sweep(out, 2, "--resume", launcher=slurm(free_port()))  # as under `srun --ntasks 2`
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


CLASSIFIER = "geomsim.diagnose.examples:tiny_classifier"


def test_diagnosis_over_two_processes_devices_equals_one_device(tmp_path):
    """The README's `srun --ntasks 2 ... --mesh 2x2` diagnosis: two processes with two CPU
    devices each, a 2 x 2 (data x model) mesh spanning both, so the products' sums over
    examples cross processes (gloo).  Its report equals the one-device one."""
    [group] = [g for g in process_groups() if "geomsim.diagnose" in g[0]]
    argv = group[0]
    assert argv[argv.index("--mesh") + 1] == "2x2" and argv[argv.index("--ntasks") + 1] == "2"
    run_group(group, tmp_path)
    model = argv[argv.index("--model") + 1]
    one = diagnose(DiagnoseConfig(model=model), tmp_path / "one", quiet=True)
    report = json.loads((tmp_path / argv[argv.index("--out") + 1] / "report.json").read_text())
    assert report["config"]["mesh"] == "2x2"
    for name, value in one["t_fail"].items():
        np.testing.assert_allclose(report["t_fail"][name], value, rtol=1e-8, err_msg=name)
    for field in ("sharpness", "eps", "coupling", "taylor", "eigenvalues"):
        np.testing.assert_allclose(report["aic"][field], one["aic"][field], rtol=1e-8, atol=1e-12, err_msg=field)
    # the defense table too (its growth solve and defended local models on the mesh)
    assert [r["defense"] for r in report["defenses"]["rows"]] == [r["defense"] for r in one["defenses"]["rows"]]
    for mine, theirs in zip(report["defenses"]["rows"], one["defenses"]["rows"], strict=True):
        np.testing.assert_allclose([mine["t_fail"], mine["task_at_ref"]], [theirs["t_fail"], theirs["task_at_ref"]],
                                   rtol=1e-6, err_msg=mine["defense"])


@pytest.mark.parametrize("mesh, message", [
    ("3", "mesh: expected DATAxMODEL"), ("0x2", "mesh: expected DATAxMODEL"),
    ("2x2", "mesh: 2x2 uses 4 devices, but there are 1"),
])
def test_bad_meshes_get_one_line_errors(mesh, message, tmp_path, capsys):
    assert diagnose_main(["--model", CLASSIFIER, "--mesh", mesh, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_stalled_chunk_is_retried_in_a_fresh_worker_and_else_is_one_line(single, tmp_path):
    # The test hook makes chunk 3 of 4 sleep forever: on every try (the sweep gives up), then on
    # the first try only (the worker's retry finishes the sweep).  Limit 2 s; a chunk runs in ms.
    out = tmp_path / "stalled"
    [(code, err)] = sweep(out, 1, "--stall-timeout", "2", env={"GEOMSIM_TEST_STALL": "sweep chunk 3/4"})
    assert code == 1, err
    [line] = [x for x in err.splitlines() if "error:" in x]
    assert line == ("python -m geomsim.sweep: error: sweep chunk 3/4: no progress for 2 s, nor in a fresh worker "
                    "process; the 2 chunk files written are untouched: rerun with --resume to compute the rest "
                    "(--stall-timeout sets the limit)"), err
    assert "Traceback" not in err
    written = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "chunks").iterdir()}
    assert sorted(written) == ["chunk_00000.npz", "chunk_00001.npz"]
    assert json.loads((out / "meta.json").read_text())["state"] == "running"

    [(code, err)] = sweep(out, 1, "--resume", "--stall-timeout", "2", env={"GEOMSIM_TEST_STALL": "sweep chunk 3/4@1"})
    assert code == 0, err
    assert "sweep chunk 3/4: no progress for 2 s (--stall-timeout sets the limit); retrying it in a fresh worker" in err
    for name, (data, mtime) in written.items():  # finished chunks untouched
        assert ((out / "chunks" / name).read_bytes(), (out / "chunks" / name).stat().st_mtime_ns) == (data, mtime)
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["state"], meta["chunks_resumed"], meta["chunks_computed"]) == ("complete", 2, 2)
    assert_same_tables(single, out)  # the worker's chunk is the one this process would have written
