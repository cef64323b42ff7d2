"""Every benchmark script runs at a tiny size and ends with its figures and ratios (issue #16),
so an API change breaks the build instead of rotting a benchmark nobody runs. The scripts run
as subprocesses through ``benchmarks/report.py`` (the same path that regenerates README's
table); the GPU suite runs its CPU dry run."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
import report  # noqa: E402
from _common import apply_quick, parse_results  # noqa: E402

SCRIPTS = sorted(p.name for p in BENCH.glob("*.py")
                 if not p.name.startswith("_") and p.name != "report.py")
CPU_SCRIPTS = sorted({r.script for r in report.ROWS})
# One thread per benchmark process: the tests share 2 cores (see conftest.py).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _first_row(script: str) -> report.Row:
    return next(r for r in report.ROWS if r.script == script)


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Each CPU benchmark script once at its --quick size; its JSON and console log in a
    folder laid out like benchmarks/results (rows of the same script share the run), and the
    failure of each script that failed."""
    out = tmp_path_factory.mktemp("bench-results")
    failures = {}
    for script in CPU_SCRIPTS:
        first = _first_row(script)
        try:
            report.run_row(first, out, quick=True, env=ENV)
        except SystemExit as e:  # the script failed or broke its output contract
            failures[script] = str(e)
            continue
        for row in report.ROWS:
            if row.script == script and row is not first:
                shutil.copy(out / f"{first.id}.json", out / f"{row.id}.json")
    return out, failures


@pytest.fixture(scope="module")
def gpu_dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu-suite")
    proc = subprocess.run(["bash", str(BENCH / "gpu_suite.sh"), "--dry-run"], cwd=ROOT,
                          env={**ENV, "GPU_SUITE_OUT": str(out), "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=300)
    return proc, out


def _assert_finite(values: dict[str, float]) -> None:
    assert values, "no values printed"
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    assert not bad, f"non-finite results: {bad}"


def test_every_script_runs_in_the_suite():
    """A new script must get a README row (CPU) or run in gpu_suite.sh (GPU)."""
    assert set(SCRIPTS) == set(CPU_SCRIPTS) | set(report.GPU_SCRIPTS)
    suite = (BENCH / "gpu_suite.sh").read_text()
    assert all(f"benchmarks/{s}" in suite for s in report.GPU_SCRIPTS)


@pytest.mark.parametrize("script", CPU_SCRIPTS)
def test_script_runs_and_ends_with_its_ratios(script, quick_runs):
    out, failures = quick_runs
    assert script not in failures, failures.get(script)
    row = _first_row(script)
    log = (out / f"{row.id}.log").read_text()
    doc = json.loads((out / f"{row.id}.json").read_text())
    printed = parse_results(log)
    _assert_finite(printed["ratio"])
    if printed["figure"]:
        _assert_finite(printed["figure"])
    assert printed["ratio"].keys() == doc["ratios"].keys()
    for name, value in printed["ratio"].items():  # printed with 4 significant digits
        assert value == pytest.approx(doc["ratios"][name], rel=1e-3, abs=1e-9)
    assert doc["command"].endswith(f"benchmarks/{script} --quick")


def test_gpu_suite_dry_run_runs_every_stage(gpu_dry_run):
    proc, out = gpu_dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all stages passed" in proc.stdout
    for stage in ("cuda_tests", "eager", "compile"):
        assert f"{stage}: done" in proc.stdout
    collected = (out / "cuda_tests.log").read_text()
    assert "test_gpu_prelabel_runs_on_cuda" in collected
    assert "test_cuda_bf16_matches_cpu" in collected
    results = json.loads((out / "gpu_results.json").read_text())
    assert set(results["runs"]) == {"eager", "compile"}
    for name, run in results["runs"].items():
        _assert_finite(run["ratios"])
        _assert_finite(run["figures"])
        assert run["args"]["compile"] == (name == "compile")
        printed = parse_results((out / f"{name}.log").read_text())
        assert printed["ratio"].keys() == run["ratios"].keys()
    assert set(results["runs"]["eager"]["time_split"]) >= {"encoder", "audio_encoder", "fuser",
                                                           "tracking"}
    profile = results["runs"]["compile"]["op_profile"]  # what the next GPU run should attack
    assert set(profile["stages_ms_per_frame"]) == {"encoder", "audio_encoder + fuser",
                                                   "tracking"}
    assert all(v > 0 for v in profile["stages_ms_per_frame"].values())
    assert len(profile["top_ops"]) == 25 and 0 < sum(r["share"] for r in profile["top_ops"]) <= 1


def test_gpu_suite_says_what_is_missing_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run(["bash", str(BENCH / "gpu_suite.sh")], cwd=ROOT, timeout=120,
                          env={**ENV, "GPU_SUITE_OUT": str(tmp_path), "PYTHON": sys.executable},
                          capture_output=True, text=True)
    assert proc.returncode == 2
    said = proc.stdout + proc.stderr
    assert "no usable CUDA GPU" in said and torch.__version__ in said
    assert not (tmp_path / "eager.log").exists()  # stopped before the GPU stages


def test_report_regenerates_the_readme_table(quick_runs, gpu_dry_run, tmp_path):
    quick_runs, failures = quick_runs
    if failures:
        pytest.skip(f"benchmarks failed: {sorted(failures)}")
    readme = tmp_path / "README.md"
    original = (ROOT / "README.md").read_text()
    readme.write_text(original)
    cmd = [sys.executable, str(BENCH / "report.py"), "--from-json", "--out-dir", str(quick_runs),
           "--readme", str(readme), "--gpu-results", str(gpu_dry_run[1] / "gpu_results.json")]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    text = readme.read_text()
    before, table, after = _split(text)
    assert (before, after) == _split(original)[::2]  # only the table changed
    for row in report.ROWS:
        doc = json.loads((quick_runs / f"{row.id}.json").read_text())
        line = next(x for x in table.splitlines() if x.startswith(f"| {row.what} |"))
        assert f"`{doc['command']}`" in line
        for name, value in doc["ratios"].items():
            assert f"{name} **{report._fmt(value)}**" in line
    gpu = json.loads((gpu_dry_run[1] / "gpu_results.json").read_text())
    gpu_lines = [x for x in table.splitlines() if x.startswith(f"| GPU {gpu['date']}, ")]
    assert len(gpu_lines) == 2 and "pending" not in table
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    assert readme.read_text() == text  # regenerating is stable

    # Without GPU results the table says they are pending.
    subprocess.run(cmd[:-2] + ["--gpu-results", str(tmp_path / "none.json")], check=True,
                   capture_output=True, cwd=ROOT)
    assert "**pending**" in _split(readme.read_text())[1]


def _split(text: str) -> tuple[str, str, str]:
    head, rest = text.split(report.BEGIN)
    table, tail = rest.split(report.END)
    return head, table, tail


def test_refine_bench_with_a_query_runs_the_refavs_click(tmp_path):
    """bench_refine.py --query: the Ref-AVS first pass and click (per-query cache), checked
    identical with and without the cache by the script itself, ending with its ratios."""
    js = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_refine.py"), "--quick", "--query",
                           "the dog", "--json", str(js)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "query 'the dog' (Ref-AVS)" in proc.stdout
    doc = json.loads(js.read_text())
    _assert_finite(doc["ratios"])
    assert set(doc["ratios"]) >= {"cached_frame_over_frame", "uncached_over_cached"}


def test_parse_results_reads_only_the_closing_lines():
    out = "ratio early = 1\nsome log\nfigure fps = 12.5  (goal)\nratio a = 0.5\nratio b = nan\n"
    got = parse_results(out)
    assert got == {"figure": {"fps": 12.5}, "ratio": {"a": 0.5, "b": pytest.approx(math.nan,
                                                                                 nan_ok=True)}}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_prelabel_runs_on_cuda(tmp_path):
    js = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(BENCH / "gpu_prelabel.py"), "--quick", "--device",
                    "cuda", "--json", str(js)], check=True, cwd=ROOT, timeout=300)
    doc = json.loads(js.read_text())
    assert doc["dtype"] == "bf16" and doc["device_name"] != "cpu"
    _assert_finite(doc["ratios"])
    _assert_finite(doc["figures"])


@pytest.mark.parametrize("script", sorted(p.name for p in (BENCH / "prototypes").glob("*.py")))
def test_prototype_runs_and_ends_with_its_ratios(script, tmp_path):
    """Prototypes of point-2 changes (PROFILE.md) must keep running until they are adopted."""
    js = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(BENCH / "prototypes" / script), "--quick",
                           "--json", str(js)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = parse_results(proc.stdout)
    _assert_finite(printed["ratio"])
    assert printed["ratio"].keys() == json.loads(js.read_text())["ratios"].keys()


@pytest.mark.parametrize(("argv", "device", "size"), [
    (["--quick"], "cpu", 64),
    (["--quick", "--device", "cuda"], "cuda", 64),
    (["--quick", "--size", "1024"], "cpu", 1024),
    ([], "cuda", 1024),
])
def test_quick_keeps_what_the_command_line_sets(monkeypatch, argv, device, size):
    """``--quick`` shrinks only what the command line left alone, even when the command line
    repeats a default (``--device cuda``): the CUDA test runs the quick size on the GPU."""
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=1024)
    monkeypatch.setattr(sys, "argv", ["bench", *argv])
    args = apply_quick(p, {"device": "cpu", "size": 64})
    assert (args.device, args.size) == (device, size)
    assert p.get_default("device") == "cuda"
