#!/usr/bin/env bash
# scripts/gpu-check.sh DIR -- the GPU checks in one command, for a machine with an NVIDIA GPU and
# no network (python3 with torch+CUDA, CuPy, JAX, pytest, hypothesis, ...; no nox):
#   1. the test suite on CuPy, 2. on torch (tests/conftest.py adds torch-cuda cases on a GPU),
#   3. the GPU benchmark: sizes L and XL, float32, portable_mlp on torch-cuda and CuPy.
# Each part has a time limit and a failing part does not stop the others. Writes into DIR:
# nvidia-smi.txt, junit-cupy.xml, junit-torch.xml, bench.json, bench.md, bench.png,
# summary.json, gpu-check.log. Without a GPU the GPU parts are skipped, saying so, and the
# torch tests run on the CPU. Exit status: 1 if any part failed, 2 on bad usage, else 0.
#
# Pure-Python dependencies missing there (array-api-compat) come as wheels in .whl/ (git-ignored),
# made beforehand with `python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12
# --implementation cp --platform manylinux2014_x86_64 -d .whl array-api-compat==VERSION`; they
# are installed into /tmp/site. The package itself is imported from src/, not installed.
# Limits in seconds, from the environment: GPU_CHECK_TEST_TIMEOUT (150, each test run) and
# GPU_CHECK_BENCH_TIMEOUT (160): with them the whole check ends within 8 minutes.
set -u

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd) || exit 2
mkdir -p "$1" && out=$(cd "$1" && pwd) || exit 2
test_timeout=${GPU_CHECK_TEST_TIMEOUT:-150}
bench_timeout=${GPU_CHECK_BENCH_TIMEOUT:-160}
parts=$(mktemp) || exit 2 # one line per part: name, status, exit code, seconds, detail
trap 'rm -f "$parts"' EXIT

record() { # record NAME STATUS RC SECONDS DETAIL
    printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$parts"
    echo "== $1: $2 ($5)"
}

# run_part NAME TIMEOUT COMMAND...: run it under a time limit and record how it ended.
run_part() {
    local name=$1 limit=$2 start rc status
    shift 2
    echo "== $name: $*"
    start=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    case $rc in
        0) status=passed ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    record "$name" "$status" "$rc" "$((SECONDS - start))" "exit code $rc, limit ${limit}s"
}

main() {
    cd "$root" || return 2
    echo "gpu-check in $root -> $out ($(date -u +%Y-%m-%dT%H:%M:%SZ))"

    rm -f "$out"/junit-*.xml "$out"/bench.{json,md,png} # no stale results from an earlier run

    local pypath=${PYTHONPATH:-}
    if compgen -G ".whl/*.whl" >/dev/null; then
        local site=/tmp/site start=$SECONDS
        if python3 -m pip install -q --no-index --no-deps --no-compile --upgrade \
            --target "$site" .whl/*.whl; then
            record wheels passed 0 "$((SECONDS - start))" "$(cd .whl && echo *.whl)"
            pypath="$site${pypath:+:$pypath}"
        else
            record wheels failed 1 "$((SECONDS - start))" "pip install --target $site failed"
        fi
    fi
    export PYTHONPATH="$root/src${pypath:+:$pypath}"
    echo "PYTHONPATH=$PYTHONPATH"
    python3 -c 'import sys, array_api_compat, portable_mlp as pm
print("python", sys.version.split()[0], "| portable_mlp", pm.__version__, "from", pm.__file__)
print("array_api_compat", array_api_compat.__version__, "from", array_api_compat.__file__)
print("backends:", pm.installed_backends())'

    local gpu=""
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
        nvidia-smi >"$out/nvidia-smi.txt" 2>&1
        nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,temperature.gpu,clocks.sm \
            --format=csv >>"$out/nvidia-smi.txt" 2>&1
        echo "GPU: $gpu"
    else
        echo "no NVIDIA GPU here (nvidia-smi finds none)" | tee "$out/nvidia-smi.txt"
    fi

    if [ -n "$gpu" ]; then
        run_part tests-cupy "$test_timeout" env PORTABLE_MLP_BACKEND=cupy python3 -m pytest tests \
            --ignore=tests/reference -q -p no:cacheprovider --junitxml="$out/junit-cupy.xml"
    else
        record tests-cupy skipped "" 0 "no NVIDIA GPU"
    fi
    # On a GPU this includes the torch-cuda cases; without one it is the torch CPU suite.
    run_part tests-torch "$test_timeout" env PORTABLE_MLP_BACKEND=torch python3 -m pytest tests \
        --ignore=tests/reference -q -p no:cacheprovider --junitxml="$out/junit-torch.xml"
    if [ -n "$gpu" ]; then
        run_part bench "$bench_timeout" python3 benchmarks/bench.py --device cuda --sizes L XL \
            --backends torch cupy --out "$out"
    else
        record bench skipped "" 0 "no NVIDIA GPU"
    fi

    # summary.json and the summary: pass/fail counts from the junit files, then the bench table.
    python3 - "$parts" "$out" "$gpu" <<'EOF'
import json, sys
import xml.etree.ElementTree as ET
from pathlib import Path

parts_file, out, gpu = sys.argv[1], Path(sys.argv[2]), sys.argv[3] or None
parts = []
for line in Path(parts_file).read_text().splitlines():
    name, status, rc, seconds, detail = line.split("\t")
    part = {"name": name, "status": status, "exit_code": int(rc) if rc else None,
            "seconds": int(seconds),
            "detail": detail}
    junit = out / f"junit-{name.removeprefix('tests-')}.xml"
    if name.startswith("tests-") and status != "skipped" and junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        part.update(counts)
    parts.append(part)
failed = [p["name"] for p in parts if p["status"] in ("failed", "timeout")]
(out / "summary.json").write_text(json.dumps(
    {"gpu": gpu, "parts": parts, "failed": failed}, indent=1) + "\n")
print("\n==================== gpu-check summary")
print(f"GPU: {gpu or 'NONE (GPU parts skipped)'}")
for p in parts:
    counts = (f"{p['passed']} passed, {p['failures']} failed, {p['errors']} errors, "
              f"{p['skipped']} skipped" if "tests" in p else p["detail"])
    print(f"{p['name']:12} {p['status'].upper():8} {p['seconds']:4d}s  {counts}")
bench = out / "bench.md"
if any(p["name"] == "bench" and p["status"] != "skipped" for p in parts) and bench.exists():
    print("\n" + bench.read_text())
print("FAILED: " + ", ".join(failed) if failed else "no part failed")
sys.exit(1 if failed else 0)
EOF
}

main 2>&1 | tee "$out/gpu-check.log"
exit "${PIPESTATUS[0]}"
