"""`make gpu-check` (benchmarks/gpu_check.py) without a GPU: the one-line no-GPU path, GPU
detection and the CMake line from nvidia-smi's answer, and a dry run on cpu() that goes
through every part's code at toy sizes: pytest outcomes counted from a real pytest run of a
file written here, memcheck output from a stand-in compute-sanitizer, the apps against the
numpy backend, the benchmarks against PyTorch's CPU."""
import importlib.util
import json
import os
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")

spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

# Device cases are ids containing "cpu" in the dry run: 2 pass, 1 fails, 1 is skipped;
# two more tests are not device cases.
SYNTHETIC_TESTS = '''
import pytest

@pytest.mark.parametrize("device", ["cpu", "cpu_numpy", "other"])
def test_ok(device):
    assert device

def test_cpu_fails():
    assert 1 + 1 == 3

@pytest.mark.skip(reason="no such device here")
def test_cpu_skipped():
    pass

def test_plain():
    pass
'''

# Stands in for compute-sanitizer: drops its "--option value" pairs, runs the program, then
# prints the summary the real tool prints (and its error lines when FAKE_ERRORS is set).
FAKE_SANITIZER = '''#!/bin/sh
while [ "${1#--}" != "$1" ]; do shift 2; done
"$@"; rc=$?
if [ -n "$FAKE_ERRORS" ]; then
  echo "========= Invalid __global__ write of size 4 bytes"
  echo "=========     at ewise_kernel+0x70"
  echo "========= ERROR SUMMARY: 1 error"
  exit 86
fi
echo "========= ERROR SUMMARY: 0 errors"
exit $rc
'''


def executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def run_script(args, env=None, timeout=300):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, SCRIPT] + args, capture_output=True, text=True, cwd=ROOT,
                          env=full_env, timeout=timeout)


def test_without_a_gpu_says_so_in_one_line_and_runs_nothing(tmp_path):
    r = run_script(["--results-dir", str(tmp_path / "results"), "--out", str(tmp_path / "out")],
                   env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and "no GPU" in lines[0], r.stdout
    assert r.stderr == ""
    assert not (tmp_path / "results").exists() and not (tmp_path / "out").exists()


def test_detection_reads_nvidia_smi_and_builds_for_that_architecture_only(tmp_path, monkeypatch):
    executable(tmp_path / "nvidia-smi", "#!/bin/sh\necho 'NVIDIA H200, 9.0, 143771, 580.159.03'\n")
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpu, why = gpu_check.detect_gpu()
    assert why is None
    assert gpu["name"] == "NVIDIA H200" and gpu["compute_capability"] == "9.0" and gpu["memory_mib"] == "143771"
    configure, build = gpu_check.cmake_commands("bdir", gpu_check.cuda_arch(gpu["compute_capability"]), 16,
                                                nvcc="/cuda/bin/nvcc", ninja="/bin/ninja")
    assert "-DCMAKE_CUDA_ARCHITECTURES=90" in configure and "-DNEEDLE_CUDA=ON" in configure
    assert "-DCMAKE_CUDA_COMPILER=/cuda/bin/nvcc" in configure
    assert configure[configure.index("-G") + 1] == "Ninja"
    assert build[-2:] == ["-j", "16"]
    assert gpu_check.cuda_arch("8.6") == "86" and gpu_check.cuda_arch("10.0") == "100"

    executable(tmp_path / "nvidia-smi", "#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    gpu, why = gpu_check.detect_gpu()
    assert gpu is None and "No devices were found" in why


def test_probes_run_and_say_what_they_found():
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    r = subprocess.run([sys.executable, "-c", gpu_check.NEEDLE_PROBE], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.split("PROBE ", 1)[1])
    import needle as ndl
    assert info["cuda_enabled"] == ndl.cuda().enabled()
    assert ("device_name" in info) == info["cuda_enabled"] and (info["reason"] is None) == info["cuda_enabled"]
    r = subprocess.run([sys.executable, "-c", gpu_check.TORCH_PROBE], capture_output=True, text=True,
                       env=dict(os.environ, CUDA_VISIBLE_DEVICES=""), timeout=120)
    assert r.returncode == 0 and r.stdout == "", r.stderr  # PyTorch sees no GPU: nothing printed


@pytest.mark.slow
def test_dry_run_on_cpu_goes_through_every_part(tmp_path):
    tests = tmp_path / "test_synthetic.py"
    tests.write_text(SYNTHETIC_TESTS)
    sanitizer = executable(tmp_path / "compute-sanitizer", FAKE_SANITIZER)
    results, out = tmp_path / "results", tmp_path / "out"
    r = run_script(["--dry-run-on", "cpu", "--results-dir", str(results), "--out", str(out),
                    "--tests", str(tests), "--sanitizer", sanitizer, "--sanitizer-tests", f"{tests} -k ok",
                    "--apps", "mnist,ptb_rnn"])
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]  # the failing and the skipped device case
    (json_path,) = results.glob("dryrun-cpu-*.json")
    res = json.loads(json_path.read_text())
    assert json.loads((out / json_path.name).read_text()) == res
    assert (out / json_path.name.replace(".json", ".log")).read_text() == \
        (results / json_path.name.replace(".json", ".log")).read_text()

    parts = res["parts"]
    assert list(parts) == gpu_check.PARTS
    assert parts["build"]["status"] == "skipped (dry run)"
    assert parts["tests"]["status"] == "failed: 1 cpu cases failed, 1 cpu cases skipped with the device visible"
    for name in ("sanitizer", "apps", "bench"):
        assert parts[name]["status"] == "ok", (name, parts[name])
    assert all(p["seconds"] >= 0 and p["budget_s"] > 0 for p in parts.values())
    assert set(parts["bench"]["benchmarks"]) == {"bandwidth", "sgemm", "bf16_matmul", "fp16_matmul", "resnet9",
                                                 "resnet9_amp"}

    ct = res["cuda_tests"]
    assert (ct["passed"], ct["failed"], ct["skipped"]) == (2, 1, 1)
    # node ids are relative to pytest's root, which depends on where the temporary folder is
    assert [gpu_check._case_name(c["nodeid"]) for c in ct["failed_cases"]] == ["test_synthetic.py::test_cpu_fails"]
    assert ct["skipped_cases"][0]["reason"].endswith("no such device here")
    assert (res["tests"]["passed"], res["tests"]["failed"], res["tests"]["skipped"]) == (4, 1, 1)

    assert res["sanitizer"]["errors"] == 0 and res["sanitizer"]["tests_passed"] == 3
    assert set(res["apps"]) == {"mnist", "ptb_rnn"}
    assert all(a["status"] == "ok" for a in res["apps"].values())

    for key, limit in (("sgemm", 1e-5), ("bf16_matmul", 1e-2), ("fp16_matmul", 2e-3)):
        assert set(res[key]) == {"32", "64"}
        for v in res[key].values():
            assert v["needle_tflops"] > 0 and v["torch_tflops"] > 0
            assert v["ratio"] == pytest.approx(v["needle_tflops"] / v["torch_tflops"], rel=0.01, abs=0.002)
            assert v["needle_rel_err"] < limit
    bw = res["bandwidth"]
    assert bw["copy_gbps"] > 0 and bw["ewise_add"]["needle_gbps"] > 0 and bw["reduce_sum"]["needle_gbps"] > 0
    for key, autocast in (("resnet9_step", None), ("resnet9_amp_step", "bfloat16")):
        step = res[key]
        assert step["needle_ms"] > 0 and step["torch_ms"] > 0 and step["batch"] == 4
        assert step["ratio"] == pytest.approx(step["torch_ms"] / step["needle_ms"], rel=0.01)
        assert step["autocast"] == autocast
    assert res["targets"]["cuda_tests_all_pass"]["met"] is False
    assert res["targets"]["sgemm_4096_vs_torch"]["met"] is None  # not measured at toy sizes
    assert res["targets"]["bf16_matmul_8192_vs_torch"]["met"] is None
    assert res["targets"]["resnet9_amp_step_vs_torch"]["value"] == res["resnet9_amp_step"]["ratio"]
    assert res["ok"] is False and res["seconds_total"] > 0
    assert "gpu-check summary: FAILED" in r.stdout and r.stdout.rstrip().endswith(f"(and in {out})")


def test_memcheck_errors_fail_the_sanitizer_part(tmp_path):
    tests = tmp_path / "test_synthetic.py"
    tests.write_text(SYNTHETIC_TESTS)
    sanitizer = executable(tmp_path / "compute-sanitizer", FAKE_SANITIZER)
    r = run_script(["--dry-run-on", "cpu", "--only", "sanitizer", "--results-dir", str(tmp_path),
                    "--sanitizer", sanitizer, "--sanitizer-tests", f"{tests} -k ok"], env={"FAKE_ERRORS": "1"})
    assert r.returncode == 1
    (json_path,) = tmp_path.glob("dryrun-cpu-*.json")
    res = json.loads(json_path.read_text())
    assert res["parts"]["sanitizer"]["status"] == "failed: 1 memcheck errors"
    assert res["sanitizer"]["first_errors"][0] == "========= Invalid __global__ write of size 4 bytes"
    assert list(res["parts"]) == ["sanitizer"]


def test_outcomes_keep_the_worst_phase_of_each_test(tmp_path):
    lines = [("a::t1", "call", "passed"), ("a::t1", "teardown", "error"), ("a::cuda_t2", "setup", "skipped"),
             ("a::cuda_t3", "call", "passed"), ("a::cuda_t4", "call", "failed")]
    path = tmp_path / "o.jsonl"
    path.write_text("".join(json.dumps({"nodeid": n, "when": w, "outcome": o, "reason": "why"}) + "\n"
                            for n, w, o in lines) + '{"nodeid": "cut off')
    outcomes = gpu_check.read_outcomes(str(path))
    assert {k: v[0] for k, v in outcomes.items()} == {"a::t1": "error", "a::cuda_t2": "skipped",
                                                     "a::cuda_t3": "passed", "a::cuda_t4": "failed"}
    s = gpu_check.summarize(outcomes, "cuda", {"a::cuda_t2": "checks the machine without a GPU"})
    d = s["device"]
    assert (d["passed"], d["failed"], d["skipped"], d["total"]) == (1, 1, 0, 2)
    assert d["expected_skips"] == [{"nodeid": "a::cuda_t2", "why": "checks the machine without a GPU"}]
    assert [c["nodeid"] for c in s["other_failures"]] == ["a::t1"]
