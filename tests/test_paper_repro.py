"""paper_repro regenerates figures, writes the manifest, and fails on a wrong number."""

import json

from paper_repro.run_all import check, main

TINY = 'sharpness = "5"\ncoupling = "0.5"\nsteps = 2000\nlr = 5e-4\nrecords = 60\ndim = 10\nrank = 2\n'


def test_run_all_writes_figures_and_manifest(tmp_path):
    exp = tmp_path / "experiments"
    exp.mkdir()
    (exp / "quartic.toml").write_text(TINY + '[repro]\ntitle = "q"\nexpect = { exponent = 4.0, exponent_tol = 0.1, c4_ratio_tol = 0.05 }\n')
    (exp / "wrong.toml").write_text(TINY + '[repro]\nexpect = { exponent = 2.0, exponent_tol = 0.1 }\n')
    figs = tmp_path / "figures"
    args = ["--experiments", str(exp), "--runs", str(tmp_path / "runs"), "--figures", str(figs)]
    assert main([*args, "--only", "quartic"]) == 0
    manifest = json.loads((figs / "manifest.json").read_text())
    entry = manifest["figures"]["quartic"]
    assert entry["pass"] and abs(entry["numbers"]["exponent"]["median"] - 4.0) < 0.1
    assert (figs / "quartic" / "fig_collapse.png").exists()
    # A figure whose numbers contradict its expectation makes the run fail.
    assert main([*args, "--only", "wrong"]) == 1
    manifest = json.loads((figs / "manifest.json").read_text())
    assert not manifest["figures"]["wrong"]["pass"]
    assert main([*args, "--only", "missing"]) == 2


def test_check_rules():
    numbers = {"runs": 2, "status_counts": {"ok": 2}, "exponent": {"min": 3.95, "max": 4.02}, "c4_ratio": {"min": 0.99, "max": 1.01}}
    assert check(numbers, {"exponent": 4.0, "exponent_tol": 0.1, "c4_ratio_tol": 0.05}) == []
    assert check(numbers, {"exponent": 6.0})
    assert check(numbers, {"c4_ratio_tol": 0.001})
    assert check(numbers, {"status": "no_onset"})
    assert check({"runs": 2, "status_counts": {"ok": 1, "nan": 1}}, {"min_ok_fraction": 1.0})
    assert check(numbers, {"report_only": True}) == []
