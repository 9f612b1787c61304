"""`make gpu-check`: the CUDA backend verified on a machine with a GPU, in one short command.

    python benchmarks/gpu_check.py [--out DIR]        # DIR also from $GPU_CHECK_OUT

Without a GPU it prints one line and exits 0 having run nothing. With one, in this order
(the heavy benchmarks last, so that a slow one is cut without losing the test results):

  build      a fresh CMake build in build-gpu-check/ for this GPU's architecture only
             (NEEDLE_CUDA=ON, CMAKE_CUDA_ARCHITECTURES from its compute capability), all cores,
             ninja when present; the modules land in python/needle/backend_ndarray/ as with `make`
  tests      the whole pytest suite (pytest-xdist when installed); fails if any test fails or
             any CUDA case (a test id containing "cuda") is skipped while the GPU is visible
  sanitizer  `compute-sanitizer --tool memcheck` over a short CUDA subset (when installed)
  apps       each app's tiny configuration, one short epoch on cuda(), losses against cpu()
             (benchmarks/app_smoke.py)
  bench      bandwidth, float32 / bfloat16 / float16 matmul 1024-8192, and a ResNet9 training step
             in float32 and under bfloat16 autocast, against PyTorch on the same GPU
             (benchmarks/cuda_bench.py)

Every part has a time budget and the whole run a deadline (465 s by default, inside the
8 minutes the check is sized for); a part that would start too late is skipped. The results
go to benchmarks/results/cuda-<date>.json, rewritten after every part so that a run cut short
keeps what it measured, with the log beside it (cuda-<date>.log); --out / GPU_CHECK_OUT
receives both as well (the log is written there as it grows). Exit status 0 when every part
passed; the performance targets are reported, not enforced.

`--dry-run-on cpu` runs every part's code on a machine without a GPU: cpu() stands in for
cuda() (test ids containing "cpu" are the device cases), the apps and benchmarks run at toy
sizes against PyTorch's CPU, the build is skipped unless --dry-run-build (which builds into a
temporary directory, leaving the tree's modules alone). tests/test_gpu_check.py runs it.
"""
import argparse
import datetime
import glob
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PARTS = ["build", "tests", "sanitizer", "apps", "bench"]
# Seconds each part may take at most (the deadline may leave less), about twice what it is
# expected to take on the H200 (16 cores), estimated from this machine's 2 cores: build 70 s
# (the slowest unit, the CUDA module's bindings, compiles for ~50 s; configure 10 s), tests
# 60-90 s with 8 pytest-xdist workers, sanitizer 45 s, apps 20 s, bench 60 s: about 5 min.
BUDGETS = {"build": 180.0, "tests": 180.0, "sanitizer": 75.0, "apps": 50.0, "bench": 170.0}
# inside "bench" (the rest starts it); scaled down together when "bench" gets less
BENCH_BUDGETS = {"bandwidth": 15.0, "sgemm": 30.0, "bf16_matmul": 25.0, "fp16_matmul": 15.0, "resnet9": 30.0,
                 "resnet9_amp": 30.0}
BENCH_KEYS = ("sgemm", "bf16_matmul", "fp16_matmul", "bandwidth", "resnet9_step", "resnet9_amp_step")
DEADLINE = 465.0
MIN_PART_SECONDS = 15.0  # a part that would get less is skipped

# Tests whose id says "cuda" but which check the machine without a GPU: they skip when one is
# visible, and that skip is expected.
NO_GPU_CASES = {
    "tests/test_ndarray.py::test_disabled_cuda_explains_itself": "checks what cuda() says when there is no GPU",
}
# memcheck slows every launch and instruments each kernel on first use: one dtype of each
# kernel family in the backend module, every matmul kernel, the tensor-core rungs on every
# operand layout (their 16-byte copies stop at the matrix edges), and convolution through NDArray.
SANITIZER_TESTS = ["tests/test_cuda_backend.py", "tests/test_cuda_tensor_cores.py", "tests/test_conv.py", "-k",
                   "(test_cuda_backend and (float32 or matmul_kernels)) or (test_conv and cuda) or "
                   "(test_half_bmm_layouts and bfloat16 and b2x130x72x136)"]
SANITIZER_EXIT = 86  # compute-sanitizer's exit status when it found errors
# Run in child processes, so that this one never holds CUDA state.
TORCH_PROBE = """
import json, torch
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(json.dumps({"name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                      "memory_mib": str(p.total_memory >> 20), "driver": None,
                      "count": torch.cuda.device_count(), "found_by": "torch"}))
"""
NEEDLE_PROBE = """
import json, needle as ndl
d = ndl.cuda()
info = {"cuda_enabled": d.enabled(), "reason": d.reason}
if d.enabled():
    info.update(device_count=d.device_count(), device_name=d.device_name())
print("PROBE " + json.dumps(info))
"""
OUTCOME_RANK = {"skipped": 0, "xfailed": 1, "passed": 2, "xpassed": 3, "failed": 4, "error": 5}


# ---- the machine ----------------------------------------------------------------------------
def find_tool(name, *extra_dirs):
    """name on PATH, else beside this Python (a venv's cmake and ninja), else in extra_dirs."""
    found = shutil.which(name)
    if found:
        return found
    for d in (os.path.dirname(sys.executable),) + extra_dirs:
        path = os.path.join(d, name)
        if d and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def find_nvcc():
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    return find_tool("nvcc", os.path.join(cuda_home, "bin"))


def detect_gpu():
    """-> (GPU 0's {name, compute_capability, memory_mib, driver}, None) or (None, why not)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return None, "CUDA_VISIBLE_DEVICES hides every GPU"
    smi = find_tool("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=name,compute_cap,memory.total,driver_version",
                                "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"nvidia-smi failed ({e})"
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        if r.returncode == 0 and lines:
            fields = [f.strip() for f in lines[0].split(",")]
            if len(fields) == 4 and re.fullmatch(r"\d+\.\d+", fields[1]):
                name, cap, mem, driver = fields
                return {"name": name, "compute_capability": cap, "memory_mib": mem, "driver": driver,
                        "count": len(lines), "found_by": "nvidia-smi"}, None
        return None, f"nvidia-smi lists no GPU ({(r.stderr or r.stdout).strip()[:200] or 'no output'})"
    if not (glob.glob("/dev/nvidia[0-9]*") or os.path.isdir("/proc/driver/nvidia")):
        return None, "no nvidia-smi and no NVIDIA device files"
    # Device files but no nvidia-smi: ask PyTorch.
    try:
        r = subprocess.run([sys.executable, "-c", TORCH_PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"the PyTorch probe failed ({e})"
    if r.returncode == 0 and r.stdout.strip():
        return json.loads(r.stdout.strip().splitlines()[-1]), None
    return None, "NVIDIA device files but PyTorch sees no GPU"


def cuda_arch(compute_capability):
    """'9.0' -> '90' (CMAKE_CUDA_ARCHITECTURES: real code for this GPU, plus its PTX)."""
    major, minor = compute_capability.split(".")
    return f"{int(major)}{int(minor)}"


def cmake_commands(build_dir, arch, jobs, nvcc=None, ninja=None, output_dir=None, cmake="cmake"):
    """(configure, build) command lines; arch None builds without CUDA."""
    configure = [cmake, "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
                 f"-DPython_EXECUTABLE={sys.executable}"]
    if ninja:
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    if arch:
        configure += ["-DNEEDLE_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={arch}"]
        if nvcc:
            configure.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
    else:
        configure.append("-DNEEDLE_CUDA=OFF")
    if output_dir:
        configure.append(f"-DNEEDLE_OUTPUT_DIR={output_dir}")
    return configure, [cmake, "--build", build_dir, "-j", str(jobs)]


def slowest_units(build_dir, n=6):
    """[(object file, seconds)] of the slowest compile steps, from ninja's log (empty without ninja):
    with a core per file the build takes about as long as the slowest one."""
    steps = []
    try:
        with open(os.path.join(build_dir, ".ninja_log")) as fh:
            for line in fh:
                fields = line.rstrip("\n").split("\t")
                if len(fields) >= 4 and fields[0].isdigit() and fields[1].isdigit():
                    steps.append((os.path.basename(fields[3]), (int(fields[1]) - int(fields[0])) / 1000.0))
    except OSError:
        return []
    return sorted(steps, key=lambda s: -s[1])[:n]


def git_commit():
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=20)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return {"head": head.stdout.strip(), "modified_files": len(dirty.stdout.splitlines())}


# ---- pytest outcomes --------------------------------------------------------------------------
def read_outcomes(path):
    """PYTEST_OUTCOMES lines -> {nodeid: (outcome, reason)}, the worst phase of each test."""
    final = {}
    if not os.path.exists(path):
        return final
    with open(path) as fh:
        for line in fh:
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a line cut off by a kill
            old = final.get(r["nodeid"])
            if old is None or OUTCOME_RANK[r["outcome"]] > OUTCOME_RANK[old[0]]:
                final[r["nodeid"]] = (r["outcome"], r.get("reason", ""))
    return final


def _case_name(nodeid):
    """The test file's name and the test id, without the folders (a temporary folder's
    name must not make a test a device case)."""
    path, _, rest = nodeid.partition("::")
    return os.path.basename(path) + "::" + rest


def summarize(outcomes, token, expected_skips=None):
    """Counts over all tests and over the device cases (ids containing token), with the
    failing and skipped device cases named. A skip listed in expected_skips is not counted."""
    expected_skips = expected_skips or {}

    def counts(items):
        c = {k: 0 for k in ("passed", "failed", "skipped", "errors", "xfailed", "xpassed")}
        for outcome, _ in items:
            c["errors" if outcome == "error" else outcome] += 1
        c["total"] = len(items)
        return c

    device = {k: v for k, v in outcomes.items() if token in _case_name(k).lower()}
    expected = {k: v for k, v in device.items() if k in expected_skips and v[0] == "skipped"}
    counted = {k: v for k, v in device.items() if k not in expected}
    bad = [{"nodeid": k, "outcome": o, "reason": r} for k, (o, r) in sorted(counted.items())
           if o in ("failed", "error", "xpassed")]
    skipped = [{"nodeid": k, "reason": r} for k, (o, r) in sorted(counted.items()) if o == "skipped"]
    other_bad = [{"nodeid": k, "outcome": o, "reason": r} for k, (o, r) in sorted(outcomes.items())
                 if k not in device and o in ("failed", "error", "xpassed")]
    c = counts(list(counted.values()))
    return {
        "all": counts(list(outcomes.values())),
        "device": dict(c, token=token, failed=c["failed"] + c["errors"] + c["xpassed"],
                       failed_cases=bad[:200], skipped_cases=skipped[:200],
                       expected_skips=[{"nodeid": k, "why": expected_skips[k]} for k in sorted(expected)]),
        "other_failures": other_bad[:200],
    }


def parse_memcheck(lines):
    """compute-sanitizer output -> {errors (None without a summary line), first_errors}."""
    errors, first = None, []
    for ln in lines:
        m = re.search(r"ERROR SUMMARY: (\d+) error", ln)
        if m:
            errors = (errors or 0) + int(m.group(1))
        elif ln.startswith("=========") and len(first) < 40 and ("Invalid" in ln or "at " in ln or "by thread" in ln
                                                                 or "Address" in ln or "Program hit" in ln):
            first.append(ln.rstrip())
    return {"errors": errors, "first_errors": first}


# ---- running things -----------------------------------------------------------------------
class Log:
    """Lines to stdout and to every log file at once (the copy under --out grows as it goes)."""

    def __init__(self, paths):
        self.paths = list(dict.fromkeys(paths))
        self.files = [open(p, "w", buffering=1) for p in self.paths]
        self.lock = threading.Lock()

    def __call__(self, text):
        with self.lock:
            for line in str(text).splitlines() or [""]:
                sys.stdout.write(line + "\n")
                for f in self.files:
                    f.write(line + "\n")
            sys.stdout.flush()

    def tail(self, n=40):
        with open(self.paths[0]) as fh:
            return [ln.rstrip("\n") for ln in fh.readlines()[-n:]]

    def close(self):
        for f in self.files:
            f.close()


def run_logged(log, cmd, timeout, env=None, cwd=ROOT):
    """Run cmd with its output streamed into the log; at the timeout its whole process group is
    ended (TERM, then KILL). -> (exit status or None on timeout, output lines, seconds)."""
    log("$ " + " ".join(shlex.quote(c) for c in cmd))
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True, errors="replace")
    lines = []

    def pump():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            log(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        rc = None
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        log(f"!! stopped after {timeout:.0f} s (its time budget)")
    reader.join(timeout=10)
    return rc, lines, time.monotonic() - start


def part_passed(status):
    return status == "ok" or status.startswith(("unavailable", "skipped (dry run"))


class Check:
    """One run: the parts, their budgets against the deadline, and the results file."""

    def __init__(self, args, gpu):
        self.args, self.gpu = args, gpu
        self.dry = args.dry_run_on is not None
        self.device = "cpu" if self.dry else "cuda"
        self.start = time.monotonic()
        self.jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        date = datetime.date.today().isoformat()
        stem = f"dryrun-{args.dry_run_on}-{date}" if self.dry else f"cuda-{date}"
        os.makedirs(args.results_dir, exist_ok=True)
        self.json_path = os.path.join(args.results_dir, stem + ".json")
        self.log_path = os.path.join(args.results_dir, stem + ".log")
        self.out_paths = []
        if args.out and os.path.abspath(args.out) != os.path.abspath(args.results_dir):
            os.makedirs(args.out, exist_ok=True)
            self.out_paths = [os.path.join(args.out, stem + ".json"), os.path.join(args.out, stem + ".log")]
        self.log = Log([self.log_path] + self.out_paths[1:])
        self.work = tempfile.mkdtemp(prefix="needle-gpu-check-")
        paths = [HERE, os.path.join(ROOT, "python"), ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", NEEDLE_NO_DOWNLOAD="1", PYTHONPATH=os.pathsep.join(paths))
        self.results = {
            "date": date, "started_at": datetime.datetime.now().isoformat(timespec="seconds"),
            "mode": f"dry run on {args.dry_run_on}" if self.dry else "gpu",
            "device": gpu, "host": {"cores": self.jobs, "python": platform.python_version(),
                                    "platform": platform.platform()},
            "commit": git_commit(), "deadline_s": args.deadline, "parts": {},
        }

    # -- bookkeeping
    def elapsed(self):
        return time.monotonic() - self.start

    def save(self):
        self.results["seconds_total"] = round(self.elapsed(), 1)
        self.results["log"] = {"path": os.path.relpath(self.log_path, ROOT), "tail": self.log.tail()}
        text = json.dumps(self.results, indent=1, default=str)
        for path in [self.json_path] + self.out_paths[:1]:
            with open(path + ".tmp", "w") as fh:
                fh.write(text)
            os.replace(path + ".tmp", path)

    def run(self):
        self.log(f"gpu-check: {self.results['mode']} on {self.gpu['name']}, {self.jobs} cores, "
                 f"deadline {self.args.deadline:.0f} s; results in {self.json_path}")
        for name in PARTS:
            if name not in self.args.only:
                continue
            left = self.args.deadline - self.elapsed()
            budget = min(self.args.budgets_s[name], left)
            entry = self.results["parts"][name] = {"budget_s": round(budget, 1)}
            if budget < MIN_PART_SECONDS:
                entry.update(status=f"skipped: {left:.0f} s left before the deadline", seconds=0.0)
                self.log(f"== {name}: {entry['status']}")
                self.save()
                continue
            self.log(f"== {name} (budget {budget:.0f} s, {self.elapsed():.0f} s into the run)")
            began = time.monotonic()
            try:
                entry["status"] = getattr(self, "part_" + name)(budget)
            except Exception as e:  # a bug in one part must not lose the others' results
                entry["status"] = f"error: {type(e).__name__}: {e}"
            entry["seconds"] = round(time.monotonic() - began, 1)
            self.log(f"-- {name}: {entry['status']} in {entry['seconds']} s")
            self.save()
        self.results["targets"] = targets(self.results)
        self.results["ok"] = all(part_passed(p["status"]) for p in self.results["parts"].values())
        self.save()
        self.log(summary(self.results, self.json_path, self.args.out))
        self.save()
        self.log.close()
        shutil.rmtree(self.work, ignore_errors=True)
        return 0 if self.results["ok"] else 1

    # -- the parts: each returns its status ("ok", "failed: ...", "timeout ...", ...)
    def part_build(self, budget):
        info = self.results["build"] = {}
        if self.dry and not self.args.dry_run_build:
            info["note"] = "dry run: the modules already built are used (--dry-run-build builds too)"
            return "skipped (dry run)"
        nvcc = find_nvcc()
        arch = self.args.arch or (cuda_arch(self.gpu["compute_capability"]) if not self.dry else None)
        if self.dry and arch and not nvcc:
            arch = None  # nothing to compile CUDA with here: the CPU module alone
        if not self.dry and not nvcc:
            return "failed: nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)"
        cmake = find_tool("cmake")
        if not cmake:
            return "failed: cmake not found"
        build_dir = os.path.join(self.work, "build") if self.dry else os.path.join(ROOT, "build-gpu-check")
        out_dir = os.path.join(self.work, "modules") if self.dry else None
        shutil.rmtree(build_dir, ignore_errors=True)
        configure, build = cmake_commands(build_dir, arch, self.jobs, nvcc if arch else None,
                                          find_tool("ninja"), out_dir, cmake)
        info.update(arch=arch, nvcc=nvcc, build_dir=os.path.relpath(build_dir, ROOT) if not self.dry else build_dir,
                    jobs=self.jobs, generator="Ninja" if find_tool("ninja") else "default")
        if nvcc:
            r = subprocess.run([nvcc, "--version"], capture_output=True, text=True)
            info["nvcc_version"] = next((ln for ln in r.stdout.splitlines() if "release" in ln), r.stdout.strip())
        end = time.monotonic() + budget
        for step, cmd in (("configure", configure), ("compile", build)):
            rc, _, seconds = run_logged(self.log, cmd, end - time.monotonic(), self.env)
            info[f"{step}_s"] = round(seconds, 1)
            if step == "compile":
                info["slowest_units_s"] = slowest_units(build_dir)
            if rc is None:
                return f"timeout in {step}"
            if rc != 0:
                return f"failed: {step} exit status {rc}"
        if self.dry:
            built = sorted(os.path.basename(p) for p in glob.glob(os.path.join(out_dir, "*.so")))
            info["modules"] = built
            return "skipped (dry run: built, not used)" if built else "failed: no module was built"
        rc, lines, _ = run_logged(self.log, [sys.executable, "-c", NEEDLE_PROBE], max(end - time.monotonic(), 30),
                                  self.env)
        found = [json.loads(ln[6:]) for ln in lines if ln.startswith("PROBE ")]
        info["probe"] = found[0] if found else None
        if not found or not found[0]["cuda_enabled"]:
            return f"failed: needle's cuda() is not usable after the build ({found[0]['reason'] if found else rc})"
        return "ok"

    def pytest_cmd(self, outcomes_path, test_args, workers):
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "pytest_outcomes", "-rfE"]
        if workers > 1:
            cmd += ["-n", str(workers)]
        if have_module("pytest_timeout"):
            cmd += ["--timeout", "150"]
        return cmd + test_args

    def part_tests(self, budget):
        outcomes_path = os.path.join(self.work, "tests.jsonl")
        test_args = shlex.split(self.args.tests) if self.args.tests is not None else []
        workers = self.args.jobs if self.args.jobs is not None else (
            min(8, self.jobs // 2) if self.jobs >= 4 and have_module("xdist") else 1)
        env = dict(self.env, PYTEST_OUTCOMES=outcomes_path, NEEDLE_CUDA_SYNC="1")
        if workers > 1:  # each worker's kernels get their share of the cores
            share = str(max(1, self.jobs // workers))
            env.update(NEEDLE_NUM_THREADS=share, OMP_NUM_THREADS=share, OPENBLAS_NUM_THREADS=share,
                       MKL_NUM_THREADS=share)
        rc, _, seconds = run_logged(self.log, self.pytest_cmd(outcomes_path, test_args, workers), budget, env)
        s = summarize(read_outcomes(outcomes_path), self.device, {} if self.dry else NO_GPU_CASES)
        d = s["device"]
        self.results["tests"] = dict(s["all"], workers=workers, exit_status=rc, seconds=round(seconds, 1),
                                     other_failures=s["other_failures"])
        self.results["cuda_tests"] = d
        problems = []
        if d["failed"]:
            problems.append(f"{d['failed']} {self.device} cases failed")
        if d["skipped"]:
            problems.append(f"{d['skipped']} {self.device} cases skipped with the device visible")
        if d["total"] == 0:
            problems.append(f"no {self.device} case ran")
        if s["other_failures"]:
            problems.append(f"{len(s['other_failures'])} other tests failed")
        if rc is None:
            return "timeout: " + (", ".join(problems) or f"{s['all']['total']} tests finished")
        if not problems and rc != 0:
            problems.append(f"pytest exit status {rc}")
        return "failed: " + ", ".join(problems) if problems else "ok"

    def part_sanitizer(self, budget):
        info = self.results["sanitizer"] = {}
        nvcc = find_nvcc()
        tool = self.args.sanitizer or find_tool("compute-sanitizer", *(
            [os.path.dirname(nvcc)] if nvcc else []), "/usr/local/cuda/bin")
        if not tool:
            info["note"] = "compute-sanitizer not found"
            return "unavailable: compute-sanitizer not found"
        outcomes_path = os.path.join(self.work, "sanitizer.jsonl")
        test_args = shlex.split(self.args.sanitizer_tests) if self.args.sanitizer_tests is not None else SANITIZER_TESTS
        cmd = [tool, "--tool", "memcheck", "--error-exitcode", str(SANITIZER_EXIT), "--print-limit", "50",
               ] + self.pytest_cmd(outcomes_path, test_args, 1)
        env = dict(self.env, PYTEST_OUTCOMES=outcomes_path, NEEDLE_CUDA_SYNC="1")
        rc, lines, seconds = run_logged(self.log, cmd, budget, env)
        mem = parse_memcheck(lines)
        s = summarize(read_outcomes(outcomes_path), "")
        info.update(tool=tool, tests=test_args, exit_status=rc, seconds=round(seconds, 1), errors=mem["errors"],
                    first_errors=mem["first_errors"], tests_passed=s["all"]["passed"],
                    tests_failed=s["all"]["failed"] + s["all"]["errors"], tests_skipped=s["all"]["skipped"])
        if mem["errors"]:
            return f"failed: {mem['errors']} memcheck errors"
        if rc is None:
            return f"timeout after {info['tests_passed']} tests passed under memcheck"
        if rc == SANITIZER_EXIT:
            return "failed: memcheck reported errors"
        if info["tests_failed"]:
            return f"failed: {info['tests_failed']} tests failed under memcheck"
        if rc != 0 or mem["errors"] is None:
            return f"error: compute-sanitizer exit status {rc}" + ("" if mem["errors"] is not None else ", no summary")
        return "ok"

    def part_apps(self, budget):
        out = os.path.join(self.work, "apps.json")
        cmd = [sys.executable, os.path.join(HERE, "app_smoke.py"), "--device", self.device, "--reference",
               "cpu_numpy" if self.dry else "cpu", "--out", out, "--budget", str(round(budget - 10, 1))]
        if self.dry:
            cmd.append("--tiny")
        if self.args.apps:
            cmd += ["--only", self.args.apps]
        rc, _, _ = run_logged(self.log, cmd, budget, self.env)
        data = load_json(out)
        self.results["apps"] = data.get("apps", {})
        bad = [k for k, v in self.results["apps"].items() if v.get("status") != "ok"]
        if rc is None:
            return f"timeout ({len(self.results['apps']) - len(bad)} apps ok before it)"
        if bad or rc != 0:
            return f"failed: {', '.join(bad) or f'exit status {rc}'}"
        return "ok"

    def part_bench(self, budget):
        out = os.path.join(self.work, "bench.json")
        scale = min(1.0, (budget - 15.0) / sum(BENCH_BUDGETS.values()))
        budgets = ",".join(f"{k}={v * scale:.0f}" for k, v in BENCH_BUDGETS.items())
        cmd = [sys.executable, os.path.join(HERE, "cuda_bench.py"), "--device", self.device, "--out", out,
               "--budgets", budgets]
        if self.dry:
            cmd.append("--tiny")
        rc, _, _ = run_logged(self.log, cmd, budget, self.env)
        data = load_json(out)
        for key in BENCH_KEYS:
            self.results[key] = data.get(key, {})
        self.results["bench_info"] = data.get("info", {})
        parts = data.get("parts", {})
        for entry in parts.values():
            if entry.get("status") == "running":
                entry["status"] = "timeout" if rc is None else f"died (exit status {rc})"
        self.results["parts"]["bench"]["benchmarks"] = parts
        bad = [f"{k}: {v['status']}" for k, v in parts.items() if v.get("status") != "ok"]
        bad += [f"{key} {n}: {v['status']}" for key in ("sgemm", "bf16_matmul", "fp16_matmul")
                for n, v in self.results[key].items() if "status" in v]
        if rc is None:
            return "timeout" + (f" ({'; '.join(bad)})" if bad else "")
        if bad or rc != 0 or not parts:
            return "failed: " + ("; ".join(bad) or f"exit status {rc}")
        return "ok"


def have_module(name):
    import importlib.util
    return importlib.util.find_spec(name) is not None


def load_json(path):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


# ---- report ----------------------------------------------------------------------------------
def targets(r):
    """The issue's targets against what was measured (None: not measured)."""
    def value(*keys):
        node = r
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                return None
            node = node[k]
        return node

    ct = r.get("cuda_tests", {})
    rows = {
        "cuda_tests_all_pass": (None if not ct else ct.get("failed", 1) == 0 and ct.get("skipped", 1) == 0
                                and ct.get("total", 0) > 0, True, True),
        "sgemm_4096_vs_torch": (value("sgemm", "4096", "ratio"), 0.7, 0.9),
        "bf16_matmul_8192_vs_torch": (value("bf16_matmul", "8192", "ratio"), 0.5, 0.8),
        "ewise_add_vs_copy": (value("bandwidth", "ewise_add", "ratio_vs_copy"), 0.7, None),
        "reduce_sum_vs_copy": (value("bandwidth", "reduce_sum", "ratio_vs_copy"), 0.7, None),
        "resnet9_step_vs_torch": (value("resnet9_step", "ratio"), 0.5, 1.0),
        "resnet9_amp_step_vs_torch": (value("resnet9_amp_step", "ratio"), 1.0, None),
    }
    out = {}
    for name, (v, target, goal) in rows.items():
        met = None if v is None else (v is True if isinstance(target, bool) else v >= target)
        out[name] = {"value": v, "target": target, "goal": goal, "met": met}
    return out


def summary(r, json_path, out_dir):
    dev = r["device"]
    lines = ["", f"== gpu-check summary: {'OK' if r['ok'] else 'FAILED'} ({r['mode']}, {dev['name']}, "
                 f"compute capability {dev.get('compute_capability')}) in {r.get('seconds_total', 0):.0f} s",
             f"{'part':10s} {'seconds':>8s} {'budget':>7s}  status"]
    for name, p in r["parts"].items():
        lines.append(f"{name:10s} {p.get('seconds', 0):8.1f} {p.get('budget_s', 0):7.0f}  {p['status']}")
        for sub, q in p.get("benchmarks", {}).items():
            lines.append(f"  {sub:8s} {q.get('seconds', 0):8.1f} {q.get('budget_s', 0):7.0f}  {q['status']}")
    b = r.get("build", {})
    if "compile_s" in b:
        slow = ", ".join(f"{u} {t:.0f} s" for u, t in b.get("slowest_units_s", [])[:3])
        lines.append(f"build: sm_{b.get('arch')}, {b.get('jobs')} jobs, configure {b.get('configure_s')} s, "
                     f"compile {b['compile_s']} s" + (f" (slowest: {slow})" if slow else ""))
    if "cuda_tests" in r:
        c, t = r["cuda_tests"], r["tests"]
        lines.append(f"{c['token']} cases: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped "
                     f"(all tests: {t['passed']} passed, {t['failed'] + t['errors']} failed, {t['skipped']} skipped)")
        for case in (c["failed_cases"] + c["skipped_cases"])[:15]:
            lines.append(f"  {case.get('outcome', 'skipped')}: {case['nodeid']}  {case['reason'][:120]}")
        for case in t["other_failures"][:10]:
            lines.append(f"  {case['outcome']} (not a device case): {case['nodeid']}  {case['reason'][:120]}")
    if r.get("sanitizer", {}).get("errors") is not None:
        s = r["sanitizer"]
        lines.append(f"memcheck: {s['errors']} errors over {s['tests_passed']} passing tests")
    if r.get("apps"):
        lines.append("apps: " + ", ".join(f"{k} {v.get('status', '?')[:60]}" for k, v in r["apps"].items()))
    for key in ("sgemm", "bf16_matmul", "fp16_matmul"):
        for n, v in r.get(key, {}).items():
            if "ratio" in v:
                lines.append(f"{key} {n:>5s}: needle {v['needle_tflops']:7.2f} TFLOP/s, torch "
                             f"{v['torch_tflops']:7.2f}, ratio {v['ratio']:.2f}"
                             + (f" ({v['needle_kernel']})" if v.get("needle_kernel") else ""))
    bw = r.get("bandwidth", {})
    if bw:
        lines.append(f"bandwidth: copy {bw['copy_gbps']} GB/s; ewise_add {bw['ewise_add']['needle_gbps']} GB/s "
                     f"(x{bw['ewise_add']['ratio_vs_copy']} of copy); reduce_sum {bw['reduce_sum']['needle_gbps']} "
                     f"GB/s (x{bw['reduce_sum']['ratio_vs_copy']})")
    for key, what in (("resnet9_step", "resnet9 step"), ("resnet9_amp_step", "resnet9 step, autocast")):
        rs = r.get(key, {})
        if rs:
            lines.append(f"{what} b{rs['batch']}: needle {rs['needle_ms']} ms, torch {rs['torch_ms']} ms, "
                         f"ratio {rs['ratio']}")
    for name, t in r.get("targets", {}).items():
        lines.append(f"target {name}: {t['value']} (target {t['target']}"
                     + (f", goal {t['goal']}" if t["goal"] not in (None, True) else "") + f") "
                     + {True: "met", False: "NOT met", None: "not measured"}[t["met"]])
    lines.append(f"results: {json_path}" + (f" (and in {out_dir})" if out_dir else ""))
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("GPU_CHECK_OUT") or None,
                    help="also write the results JSON and the log here (default: $GPU_CHECK_OUT)")
    ap.add_argument("--results-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--deadline", type=float, default=DEADLINE, help="seconds for the whole run")
    ap.add_argument("--budgets", default="", help="seconds per part, e.g. build=300,tests=240 (default: "
                    + ",".join(f"{k}={v:.0f}" for k, v in BUDGETS.items()) + ")")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ",".join(PARTS))
    ap.add_argument("--tests", default=None, help="pytest arguments (default: the whole suite)")
    ap.add_argument("--sanitizer-tests", default=None, help="pytest arguments run under memcheck")
    ap.add_argument("--sanitizer", default=None, help="compute-sanitizer executable")
    ap.add_argument("--apps", default=None, help="comma-separated apps (benchmarks/app_smoke.py names)")
    ap.add_argument("--jobs", type=int, default=None, help="pytest-xdist workers (default: cores / 2, at most 8)")
    ap.add_argument("--arch", default=None, help="CMAKE_CUDA_ARCHITECTURES (default: the GPU's)")
    ap.add_argument("--dry-run-on", choices=("cpu",), default=None,
                    help="no GPU needed: every part's code runs tiny on cpu() and PyTorch's CPU")
    ap.add_argument("--dry-run-build", action="store_true", help="the dry run also builds (into a temporary dir)")
    args = ap.parse_args(argv)
    args.only = [p for p in args.only.split(",") if p]
    if set(args.only) - set(PARTS):
        ap.error(f"unknown parts {sorted(set(args.only) - set(PARTS))}; choose from {PARTS}")
    args.budgets_s = dict(BUDGETS)
    for item in filter(None, args.budgets.split(",")):
        name, _, value = item.partition("=")
        if name not in BUDGETS:
            ap.error(f"--budgets: unknown part {name!r}; choose from {PARTS}")
        args.budgets_s[name] = float(value)
    if args.dry_run_on and args.tests is None:
        args.tests = "tests/test_broadcasting.py"
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.dry_run_on:
        gpu = {"name": f"{args.dry_run_on} (dry run)", "compute_capability": None, "found_by": "--dry-run-on"}
    else:
        gpu, why = detect_gpu()
        if gpu is None:
            print(f"gpu-check: no GPU visible ({why}); nothing run")
            return 0
    return Check(args, gpu).run()


if __name__ == "__main__":
    sys.exit(main())
