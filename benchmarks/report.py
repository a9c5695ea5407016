"""The harness's results as files (JSON, CSV, a PNG chart) and as a short table for the terminal."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

from swapstream.benchmarks.decoders import reader_over_pyav  # noqa: E402
from swapstream.services.engine.clock import STAGES  # noqa: E402

THROUGHPUT_FIELDS = ["kind", "batch_size", "streams", "frames", "faces", "seconds", "frames_per_s", "faces_per_s",
                     "p50_ms", "p95_ms", "frames_per_s_with_glue", "faces_per_s_with_glue", "per_item"]
STAGE_FIELDS = ["kind", "stage", "seconds", "share_of_wall"]
TRITON_FIELDS = ["model", "requests", "executions", "queue_ms", "compute_input_ms", "compute_infer_ms",
                 "compute_output_ms"]
DECODE_FIELDS = ["file", "codec", "resolution", "decoder", "frames", "seconds", "frames_per_s", "cpu_seconds",
                 "unsupported"]
RATIO_FIELDS = ["batch_size", "pipeline_frames_per_s", "pipeline_over_baseline", "pipeline_over_bound",
                "pipeline_over_bound_with_glue"]
LOAD_FIELDS = ["model", "concurrency", "items_per_request", "seconds", "requests", "requests_per_s", "items_per_s",
               "p50_ms", "p90_ms", "p95_ms", "p99_ms", "triton_queue_ms_per_request",
               "triton_compute_ms_per_request"]


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (";".join(v) if isinstance(v, list) else v) for k, v in row.items()})


def throughput_rows(results: dict) -> list[dict]:
    rows = list(results.get("pipeline", []))
    if results.get("baseline"):
        rows.append(results["baseline"])
    rows += [{**row, "streams": None} for row in results.get("bound", [])]
    return rows


def stage_rows(results: dict) -> list[dict]:
    rows = []
    for kind, part in results.get("stages", {}).items():
        for stage in STAGES:
            seconds = part["stage_seconds"].get(stage, 0.0)
            rows.append({"kind": kind, "stage": stage, "seconds": seconds,
                         "share_of_wall": seconds / part["wall_seconds"] if part["wall_seconds"] else 0.0})
    return rows


def triton_rows(results: dict) -> list[dict]:
    triton = results.get("stages", {}).get("pipeline", {}).get("triton", {})
    return [{"model": model, **row} for model, row in sorted(triton.items())]


def write_results(results: dict, out: Path) -> list[Path]:
    """results.json, throughput.csv, stages.csv, triton.csv, decode.csv, ratios.csv, throughput.png."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json"]
    written[0].write_text(json.dumps(results, indent=2, default=str))
    for name, fields, rows in (("throughput", THROUGHPUT_FIELDS, throughput_rows(results)),
                               ("stages", STAGE_FIELDS, stage_rows(results)),
                               ("triton", TRITON_FIELDS, triton_rows(results)),
                               ("decode", DECODE_FIELDS, results.get("decode", [])),
                               ("ratios", RATIO_FIELDS, results.get("ratios", []))):
        path = out / f"{name}.csv"
        _write_csv(path, fields, rows)
        written.append(path)
    written.append(plot_throughput(results, out / "throughput.png"))
    return written


def write_load_results(results: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps(results, indent=2, default=str))
    _write_csv(out / "load.csv", LOAD_FIELDS, results["load"])
    return [out / "load.json", out / "load.csv"]


def plot_throughput(results: dict, path: Path) -> Path:
    """Frames/s against batch size: the pipeline (1 stream, and S streams), the baseline, the bound."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    single = sorted((r for r in results.get("pipeline", []) if r["streams"] == 1), key=lambda r: r["batch_size"])
    if single:
        ax.plot([r["batch_size"] for r in single], [r["frames_per_s"] for r in single], "o-",
                label="pipeline (1 stream)")
    for r in results.get("pipeline", []):
        if r["streams"] > 1:
            ax.plot(r["batch_size"], r["frames_per_s"], "s", label=f"pipeline ({r['streams']} streams)")
    bound = sorted(results.get("bound", []), key=lambda r: r["batch_size"])
    if bound:
        ax.plot([r["batch_size"] for r in bound], [r["frames_per_s"] for r in bound], "^--", label="bound: networks")
        ax.plot([r["batch_size"] for r in bound], [r["frames_per_s_with_glue"] for r in bound], "v:",
                label="bound: networks + glue")
    if results.get("baseline"):
        ax.axhline(results["baseline"]["frames_per_s"], color="grey", linestyle="-.",
                   label="baseline (frame at a time)")
    ax.set_xscale("log", base=2)
    sizes = sorted({r["batch_size"] for r in single + bound})
    ax.set_xticks(sizes, [str(size) for size in sizes])
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("batch size (frames per batch; faces per call for the bound)")
    ax.set_ylabel("frames/s")
    env = results.get("environment", {})
    ax.set_title(f"swapstream throughput ({env.get('device', '?')}, {env.get('cpus', '?')} CPUs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the lines span the plot
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and 0 < abs(value) < 10 ** -digits * 10:  # e.g. 0.16 frames/s with the real compute
        return f"{value:.2g}"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[_fmt(v) if not isinstance(v, str) else v for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_text(results: dict) -> str:
    """The terminal table: throughput per configuration, the ratios, where the time goes."""
    env = results.get("environment", {})
    parts = ["models: " + ", ".join(f"{m['model']} {m['kind']}" for m in env.get("models", [])
                                     if m["kind"] in ("real", "stand-in", "cost-true", "given"))]
    if env.get("startup_seconds") is not None:
        parts.append(f"embedded Triton start-up (repository built, server ready): {env['startup_seconds']:.1f} s")
    if env.get("note"):
        parts.append(f"note: {env['note']}")
    bound = {r["batch_size"]: r for r in results.get("bound", [])}
    ratios = {r["batch_size"]: r for r in results.get("ratios", [])}
    rows = []
    for r in results.get("pipeline", []):
        ratio = ratios.get(r["batch_size"], {}) if r["streams"] == 1 else {}
        rows.append([f"pipeline b={r['batch_size']} s={r['streams']}", r["frames_per_s"], r["faces_per_s"],
                     r["p50_ms"], r["p95_ms"]] + [_fmt(ratio.get(k), 2) for k in RATIO_FIELDS[2:]])
    if results.get("baseline"):
        b = results["baseline"]
        rows.append(["baseline (frame at a time)", b["frames_per_s"], b["faces_per_s"], None, None, None, None, None])
    for size, r in sorted(bound.items()):
        rows.append([f"bound b={size}" + (" *" if r["per_item"] else ""), r["frames_per_s"], r["faces_per_s"],
                     None, None, None, None, None])
        rows.append([f"bound+glue b={size}", r["frames_per_s_with_glue"], r["faces_per_s_with_glue"],
                     None, None, None, None, None])
    if rows:
        parts.append(_table(["run", "frames/s", "faces/s", "p50 ms", "p95 ms", "/baseline", "/bound", "/bound+glue"],
                            rows))
    if any(r["per_item"] for r in bound.values()):
        fixed = sorted({n for r in bound.values() for n in r["per_item"]})
        parts.append(f"* fixed batch 1, run once per item: {', '.join(fixed)}")
    best = results.get("best_batch_size")
    if best in ratios:
        r = ratios[best]
        parts.append(f"best batch size {best}: pipeline/baseline {_fmt(r.get('pipeline_over_baseline'), 2)}, "
                     f"pipeline/bound {_fmt(r.get('pipeline_over_bound'), 3)}, "
                     f"pipeline/bound+glue {_fmt(r.get('pipeline_over_bound_with_glue'), 2)}")
    for kind, part in results.get("stages", {}).items():
        shares = ", ".join(f"{s} {part['stage_seconds'][s]:.1f}" for s in STAGES)
        overlap = " (stages overlap in threads: they add up to more than the wall time)" if part["overlapping"] else ""
        parts.append(f"{kind} stages, s of {part['wall_seconds']:.1f} s wall{overlap}: {shares}; "
                     f"dominant: {part.get('dominant', '-')}")
    triton = triton_rows(results)
    if triton:
        parts.append(_table(["Triton model", "requests", "queue ms", "compute ms"],
                            [[t["model"], t["requests"], t["queue_ms"],
                              t["compute_input_ms"] + t["compute_infer_ms"] + t["compute_output_ms"]] for t in triton]))
    if results.get("decode"):
        parts.append(_table(["decode", "file", "frames/s", "CPU ms a frame"],
                            [[d["decoder"], f"{d['file']} ({d['codec']} {d['resolution']})",
                              d["frames_per_s"] if d["frames_per_s"] is not None else "unsupported",
                              1e3 * d["cpu_seconds"] / d["frames"] if d["frames"] else None]
                             for d in results["decode"]]))
        parts += [f"{r['file']}: swapstream reader / raw PyAV decode to RGB: {r['wall']:.2f} by wall time, "
                  f"{r['cpu']:.2f} by CPU time" for r in reader_over_pyav(results["decode"])]
    if results.get("comparison"):
        c = results["comparison"]
        parts.append(f"baseline vs pipeline output: {c.get('swapped_frames')} frames swapped of {c.get('frames')}, "
                     f"mean |difference| {_fmt(c.get('mean_abs_diff_swapped_pixels'), 2)} levels over the swapped "
                     f"pixels (the swap changed them by {_fmt(c.get('mean_change_swapped_pixels'), 1)})")
    return "\n\n".join(parts)


def load_summary_text(results: dict) -> str:
    rows = [[f"{r['model']} x{r['items_per_request']}", r["concurrency"], r["requests_per_s"], r["items_per_s"],
             r["p50_ms"], r["p90_ms"], r["p95_ms"], r["p99_ms"], r["triton_queue_ms_per_request"],
             r["triton_compute_ms_per_request"]] for r in results["load"]]
    return _table(["model", "clients", "req/s", "items/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "queue ms",
                   "compute ms"], rows)
