"""What the benchmark writes: the machine it ran on, bench.json, bench.md (with the targets met
or missed) and bench.png."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from methods import CAPTURED, EAGER, FLOOR, JIT, LOOP, METHOD_ORDER, PM, SKLEARN, find_placement
from timing import group_of

import portable_mlp as pm
from portable_mlp._backend import TABLE

# ---------------------------------------------------------------------------- machine
VERSIONED = (
    "numpy",
    "torch",
    "jax",
    "jaxlib",
    "array-api-strict",
    "array-api-compat",
    "scikit-learn",
    "cupy-cuda13x",
    "cupy-cuda12x",
    "matplotlib",
    "threadpoolctl",
)
THREAD_ENV = (  # what picks BLAS kernels and thread counts
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "XLA_FLAGS",
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def blas_info() -> list[dict[str, Any]]:
    """The BLAS and OpenMP libraries loaded, with the kernel each runs (threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"error": "threadpoolctl is not installed: the BLAS kernel is unknown"}]
    keep = ("user_api", "internal_api", "version", "architecture", "threading_layer", "num_threads")
    return [
        {**{k: lib.get(k) for k in keep}, "library": Path(lib["filepath"]).name}
        for lib in threadpool_info()
    ]


def torch_info() -> dict[str, Any] | None:
    """The PyTorch reference's BLAS (MKL is linked statically, so threadpoolctl cannot see it)
    and its threads, where it ran."""
    if "torch" not in sys.modules:
        return None
    import torch

    config = torch.__config__.show()
    blas = next(
        (p.split("=", 1)[1] for p in config.replace(",", " ").split() if "BLAS_INFO=" in p), None
    )
    return {
        "blas": blas,
        "num_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),  # "highest": no TF32
    }


def gpu_name() -> str | None:
    """The first CUDA device any backend of the table sees, as the table describes it."""
    for b in TABLE:
        p = find_placement(b, "cuda", "float32")
        if p is not None:
            return p.backend.describe(p.device)
    return None


def machine_info(load_before: tuple[float, float, float]) -> dict[str, Any]:
    versions = {"python": platform.python_version(), "portable_mlp": pm.__version__}
    for dist in VERSIONED:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "gpu": gpu_name(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "blas": blas_info(),
        "torch": torch_info(),
        "env": {k: os.environ.get(k) for k in THREAD_ENV},
        "versions": versions,
    }


def machine_lines(machine: dict[str, Any]) -> list[str]:
    blas = "; ".join(
        lib.get("error")
        or f"{lib['internal_api']} {lib['version']} ({lib['library']}): "
        f"{lib.get('architecture') or '-'}, {lib['num_threads']} threads"
        for lib in machine["blas"]
    )
    env = ", ".join(f"{k}={v}" for k, v in machine["env"].items() if v is not None) or "none set"
    torch = machine["torch"]
    return [
        f"- CPU: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable); "
        f"GPU: {machine['gpu'] or 'none'}",
        f"- load average before/after: {machine['load_average_before'][0]:.2f} / "
        f"{machine['load_average_after'][0]:.2f} (other processes share this machine)",
        f"- BLAS and OpenMP (threadpoolctl): {blas}",
        f"- torch: BLAS {torch['blas']}, {torch['num_threads']} threads, float32 matmul "
        f"precision {torch['float32_matmul_precision']}"
        if torch
        else "- torch: -",
        f"- BLAS and thread environment: {env}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
    ]


# ---------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """One of the issues' targets, as a same-run float32 ratio of ``method`` on ``backend``
    against ``other``. kind "ratio": ms(method) / ms(other) at most ``bound``; "floor": the
    backend's own GEMM floor ms / ms(method) at least ``bound``; "speedup": ms(other) /
    ms(method) at least ``bound``."""

    size: str
    label: str
    backend: str
    other: str
    kind: str
    bound: float
    method: str = PM
    device: str | None = None  # None: the device kind the run used


# Short names for the captured step's rows below.
C, CPU, GPU = CAPTURED, "cpu", "cuda"

TARGETS = [
    Target("S", "numpy vs the hand-written NumPy loop", "numpy", LOOP, "ratio", 1.2),
    Target("M", "numpy, fraction of NumPy's GEMM floor", "numpy", FLOOR, "floor", 0.75),
    Target("L", "numpy, fraction of NumPy's GEMM floor", "numpy", FLOOR, "floor", 0.90),
    Target("M", "numpy, speed-up over scikit-learn", "numpy", SKLEARN, "speedup", 3.0),
    Target("S", "torch vs PyTorch eager", "torch", EAGER, "ratio", 0.5),
    Target("M", "torch vs PyTorch eager", "torch", EAGER, "ratio", 0.9),
    Target("L", "torch vs PyTorch eager", "torch", EAGER, "ratio", 1.0),
    Target("XL", "torch, fraction of torch's GEMM floor", "torch", FLOOR, "floor", 0.80),
    Target("XL", "cupy, fraction of CuPy's GEMM floor", "cupy", FLOOR, "floor", 0.80),
]


# The captured step's (issue 8), on the device kind named: evaluated where its column exists.
C, CPU, GPU = CAPTURED, "cpu", "cuda"
TARGETS += [
    Target("S", "jax captured vs jax.jit, CPU", "jax", JIT, "ratio", 1.2, C, CPU),
    Target("M", "jax captured vs jax.jit, CPU", "jax", JIT, "ratio", 1.0, C, CPU),
    Target("L", "jax captured vs jax.jit, CPU", "jax", JIT, "ratio", 1.0, C, CPU),
    Target("S", "torch captured vs PyTorch eager, CPU", "torch", EAGER, "ratio", 0.5, C, CPU),
    Target("M", "torch captured vs PyTorch eager, CPU", "torch", EAGER, "ratio", 0.9, C, CPU),
    Target("S", "numpy captured vs the hand-written loop", "numpy", LOOP, "ratio", 1.2, C, CPU),
    Target("L", "torch captured vs jax.jit, same GPU", "torch", JIT, "ratio", 1.2, C, GPU),
    Target("L", "cupy captured vs jax.jit, same GPU", "cupy", JIT, "ratio", 1.2, C, GPU),
    Target("L", "torch captured, fraction of cuBLAS floor", "torch", FLOOR, "floor", 0.8, C, GPU),
    Target("L", "cupy captured, fraction of cuBLAS floor", "cupy", FLOOR, "floor", 0.8, C, GPU),
    Target("XL", "torch captured, fraction of cuBLAS floor", "torch", FLOOR, "floor", 0.9, C, GPU),
    Target("XL", "cupy captured, fraction of cuBLAS floor", "cupy", FLOOR, "floor", 0.9, C, GPU),
]


def measured(t: Target, rows: list[dict[str, Any]]) -> float | None:
    """The target's same-run ratio, or None where this run lacks either side."""

    def matching(r: dict[str, Any], method: str) -> bool:
        return (r["size"], r["dtype"], r["method"]) == (t.size, "float32", method) and (
            t.device is None or r["device"] == t.device
        )

    ours = [r for r in rows if matching(r, t.method) and r["backend"] == t.backend]
    if not ours:
        return None
    # The reference from the same device kind as ours; a floor from our own backend.
    ref = [r for r in rows if matching(r, t.other) and r["device"] == ours[0]["device"]]
    if t.kind == "floor":
        ref = [r for r in ref if r["backend"] == t.backend]
    if not ref:
        return None
    ref_ms = min(r["ms"] for r in ref)
    return ours[0]["ms"] / ref_ms if t.kind == "ratio" else ref_ms / ours[0]["ms"]


def targets(rows: list[dict[str, Any]], captured: bool) -> list[str]:
    """The float32 targets met or missed in this run, as a markdown table."""
    out = [
        "",
        "## Targets (float32, same run)",
        "",
        "| size | target | bound | measured | met |",
        "|---|---|---:|---:|---|",
    ]
    for t in TARGETS:
        value = measured(t, rows)
        if value is None:
            continue
        met = value <= t.bound if t.kind == "ratio" else value >= t.bound
        sign = "<=" if t.kind == "ratio" else ">="
        out.append(
            f"| {t.size} | {t.label} | {sign} {t.bound} | {value:.2f} | {'yes' if met else 'NO'} |"
        )
    if not captured:
        count = sum(t.method == CAPTURED for t in TARGETS)
        out += [
            "",
            f"The captured step (`pm.compile_step`, column {CAPTURED!r}) is not available in "
            f"this build: its {count} targets are not evaluated.",
        ]
    return out


# ---------------------------------------------------------------------------- markdown
def fmt_bytes(b: float) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if b >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def result_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        "ms/step: median over rounds (IQR: quartiles); x eager: ms / torch eager ms; "
        "floor: fastest GEMM floor ms / ms (1 = only matrix products).",
        "",
        "| size | device | dtype | backend | method | ms/step | IQR ms | samples/s "
        "| x eager | floor |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['size']} | {r['device']} | {r['dtype']} | {r['backend']} | {r['method']} "
            f"| {r['ms']:.3f} | {r['ms_q1']:.3f}-{r['ms_q3']:.3f} | {r['samples_per_s']:,.0f} "
            f"| {fmt(r['ratio_to_torch_eager'], '.2f')} | {fmt(r['floor_fraction'], '.2f')} |"
        )
    if not report["config"]["captured_step"]:
        lines += ["", f"{CAPTURED} (`pm.compile_step`): not available in this build."]
    return lines


def memory_lines(report: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Memory of one float32 step (portable_mlp)",
        "",
        report["memory_note"],
        "",
        "| size | backend | device | minimum | step peak | peak/min | largest layer output "
        "| predict peak (/output) | predict kept | cached forward peak | cached forward kept |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report["memory"]:
        lines.append(
            f"| {m['size']} | {m['backend']} | {m['device']} | {fmt_bytes(m['minimum'])} "
            f"| {fmt_bytes(m['step_peak'])} | {m['peak_over_minimum']:.2f} "
            f"| {fmt_bytes(m['largest_layer_output'])} "
            f"| {fmt_bytes(m['predict_new_peak'])} ({m['predict_over_layer_output']:.2f}) "
            f"| {fmt_bytes(m['predict_kept'])} | {fmt_bytes(m['forward_cached_new_peak'])} "
            f"| {fmt_bytes(m['forward_cached_kept'])} |"
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# portable_mlp: one training step (forward, loss, backward, SGD update)",
        "",
        *machine_lines(report["machine"]),
        "",
        *result_lines(report),
        *targets(report["results"], report["config"]["captured_step"]),
    ]
    for s in report["skipped"]:
        lines.append(
            f"\nSkipped {s['size']} {s['backend']} {s['method']} {s['dtype']}: {s['error']}"
        )
    if report["memory"]:
        lines += memory_lines(report)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- chart and files
def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Bars of ms/step over torch eager's, one panel per size, device kind and dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["ratio_to_torch_eager"] is not None:
            groups.setdefault(group_of(r), []).append(r)
    if not groups:
        return
    fig, axes = plt.subplots(
        1, len(groups), figsize=(2.6 * len(groups) + 2, 4.8), squeeze=False, sharey=True
    )
    for ax, ((size, device, dtype), group) in zip(axes[0], groups.items(), strict=True):
        ratios = [r["ratio_to_torch_eager"] for r in group]
        colors = [f"C{METHOD_ORDER.index(r['method'])}" for r in group]
        bars = ax.bar(range(len(group)), ratios, color=colors)
        ax.bar_label(bars, labels=[f"{v:.2g}" for v in ratios], fontsize=7)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(group)))
        ax.set_xticklabels(
            [f"{r['backend']}\n{r['method']}" for r in group], rotation=90, fontsize=7
        )
        ax.set_title(f"{size} {device} {dtype}", fontsize=9)
    axes[0][0].set_ylabel("ms/step / torch eager ms/step (log)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(report: dict[str, Any], out: Path) -> str:
    """bench.json, bench.md and bench.png in ``out``; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (out / "bench.md").write_text(text)
    chart(report["results"], out / "bench.png")
    return text
