"""Where the time goes in ``swapstream swap``: py-spy samples of the job and of the Triton server's Python stubs,
per stage and per copy.

    python -m swapstream.benchmarks.profile record --target clip.mp4 --out DIR [--batch-size 16] [--source face.jpg]
    python -m swapstream.benchmarks.profile table DIR

``record`` starts ``swapstream triton`` (its start-up is not sampled), then samples ``swapstream swap --triton``
(every thread, 100 Hz) and, at the same time, every process under the server (50 Hz): each model's stub is its own
process. py-spy counts only threads that are running, so the samples are CPU time, not wall time; on a shared
machine they are the steadier figure. The job's samples are read by the source line they point at (a C call such
as a DALI run or a colour conversion is charged to the Python line that made it), so ``table`` needs the sources
the job ran (``--root``, default this checkout).
"""
from __future__ import annotations

import argparse
import linecache
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

JOB_RATE, SERVER_RATE = 100, 50
ROOT = Path(__file__).resolve().parents[1]

# Stage of a job sample: the first of these found in its stack, innermost frame first.
STAGE_MARKERS = [
    ("Downscaler", "detect"), ("SwapstreamClient.detect", "detect"),
    # facemesh calls are made by VideoLocator / MeshFollower (follow) and MeshSwapper (swap): their frames decide.
    ("VideoLocator", "follow"), ("MeshFollower", "follow"), ("FaceTracker", "track"),
    ("Aligner", "align"), ("SwapstreamClient.swap", "swap"), ("MeshSwapper", "swap"), ("Blender", "blend"),
    ("swap_face", "swap"),
    ("VideoWriter", "encode"),
    ("VideoReader", "decode"), ("probe_video", "decode"), ("open_video", "decode"), ("_batches", "re-batch"),
    ("_drain", "queues"), ("_put", "queues"), ("source_embedding", "source identity"), ("<module>", "start-up"),
    ("build", "start-up"), ("__init__", "start-up"),
]
# What a job sample did: the first rule that matches its innermost frames (function names, then the source line).
PART_RULES = [
    (r"feed_input", "copy into DALI"), (r"to_numpy|np\.asarray\(result", "copy out of DALI"),
    (r"to_ndarray|reformat", "YUV->RGB conversion"), (r"container\.decode", "video decode (libavcodec)"),
    (r"set_data_from_numpy|serialize|_transform|as_numpy|_get_inference_request|InferInput", "gRPC copy"),
    (r"_blocking|_channel", "waiting on Triton"), (r"_composite|np\.copyto|np\.rint|np\.clip", "composite"),
    (r"(?<!_)Pipeline\.run|_run_once|_pipe\.run|run_into", "DALI compute"),
    (r"stack|\.copy\(|ascontiguousarray|empty_like|batch\[filled\]|np\.array\(", "copy"),
    (r"\.write\(|stdin", "pipe to ffmpeg"), (r"Condition\.wait|\.get\(|\.put\(", "waiting"),
    # the mesh swap's steps (mesh_warp.py), run in its thread pool
    (r"^warp_map ", "mesh warp"), (r"^(transfer_creases|_detail) ", "expression lines"),
    (r"^(colour_match|match_shading) ", "colour match"),
    (r"^(_feather|_smooth_inside|_hole|_features|match_sharpness|Box\.fill) ", "mask and sharpness"),
]
SERVER_PARTS = [(r"Session\.run", "onnxruntime"), (r"as_numpy|get_input_tensor|_feeds", "input copy"),
                (r"pb_utils\.Tensor|ascontiguousarray|_respond", "output copy")]


def _frames(stack: str) -> list[tuple[str, str, int]]:
    """(function, file, line) per frame, outermost first, of one py-spy raw stack."""
    out = []
    for frame in stack.split(";"):
        match = re.match(r"(.*) \((.*):(\d+)\)$", frame)
        if match:
            out.append((match.group(1), match.group(2), int(match.group(3))))
    return out


def _source(file: str, line: int, root: Path) -> str:
    if not file.startswith("swapstream/"):
        return ""
    return linecache.getline(str(root / file.removeprefix("swapstream/")), line).strip()


def _read_raw(path: Path):
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            yield stack, int(count)


def job_table(raw: Path, root: Path = ROOT) -> Counter:
    """(stage, part) -> CPU seconds of the job process."""
    table: Counter = Counter()
    for stack, count in _read_raw(raw):
        frames = _frames(stack)
        names = [f for f, _, _ in reversed(frames)]
        stage = next((s for marker, s in STAGE_MARKERS if any(marker in n for n in names)),
                     "other" if frames else "native threads (DALI, gRPC, no Python frame)")
        inner = [f"{f} {_source(file, line, root)}" for f, file, line in reversed(frames)][:4]
        part = next((p for text in inner for rule, p in PART_RULES if re.search(rule, text)), "python")
        table[stage, part] += count / JOB_RATE
    return table


def server_table(raw: Path) -> Counter:
    """(model, part) -> CPU seconds of the Triton stubs (the stub's own C++ when no Python frame is running)."""
    table: Counter = Counter()
    for stack, count in _read_raw(raw):
        stub = [p for p in stack.split(";") if p.startswith("process") and "triton_python_backend_stub" in p]
        if not stub:
            continue  # the launcher and the reaper
        model = stub[-1].split()[-2].removesuffix("_0_0")
        frames = [f"{f} {file}" for f, file, _ in _frames(stack)]
        part = next((p for rule, p in SERVER_PARTS for text in frames if re.search(rule, text)),
                    "stub, no Python frame (messages, shared memory)" if not frames else "python")
        table[model, part] += count / SERVER_RATE
    return table


def markdown(table: Counter, first: str) -> str:
    total = sum(table.values())
    rows = [f"| {first} | part | CPU s | share |", "|---|---|---|---|"]
    for (group, part), seconds in sorted(table.items(), key=lambda kv: -kv[1]):
        rows.append(f"| {group} | {part} | {seconds:.2f} | {seconds / total:.1%} |")
    return "\n".join(rows + [f"| all | | {total:.2f} | |"])


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def record(target: Path, source: Path, out: Path, batch_size: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    python, spy = sys.executable, _py_spy()
    server = subprocess.Popen([python, "-m", "swapstream.services.cli", "triton", "--grpc-port", "0",
                               "--http-port", "0", "--metrics-port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not any(line.strip().startswith("gRPC") for line in lines):  # printed after "Triton ready"
            line = server.stdout.readline()
            if not line:
                raise SystemExit("swapstream triton exited:\n" + "".join(lines))
            lines.append(line)
        url = next(line.split()[1] for line in lines if line.strip().startswith("gRPC"))
        load_before = os.getloadavg()
        sampler = subprocess.Popen([spy, "record", "--subprocesses", "--nonblocking", "-r", str(SERVER_RATE),
                                    "-f", "raw", "-o", str(out / "server.raw"), "-p", str(server.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        started = time.perf_counter()
        subprocess.run([spy, "record", "--threads", "--nonblocking", "-r", str(JOB_RATE), "-f", "raw",
                        "-o", str(out / "job.raw"), "--", python, "-m", "swapstream.services.cli", "swap",
                        "--triton", url, "--source", str(source), "--target", str(target),
                        "-o", str(out / "swapped.mp4"), "--batch-size", str(batch_size)], check=True)
        wall = time.perf_counter() - started
        sampler.send_signal(signal.SIGINT)
        sampler.wait(60)
        (out / "run.txt").write_text(f"wall {wall:.1f} s; load average before {load_before[0]:.1f}, "
                                     f"after {os.getloadavg()[0]:.1f}\n")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swapstream.benchmarks.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record")
    rec.add_argument("--target", required=True, type=Path)
    rec.add_argument("--source", type=Path)
    rec.add_argument("--out", required=True, type=Path)
    rec.add_argument("--batch-size", type=int, default=16)
    tab = commands.add_parser("table")
    tab.add_argument("out", type=Path)
    tab.add_argument("--root", type=Path, default=ROOT, help="the sources the job ran (default: this checkout)")
    args = parser.parse_args(argv)
    if args.command == "record":
        from swapstream.benchmarks.media import default_source

        record(args.target, args.source or default_source(), args.out, args.batch_size)
        print((args.out / "run.txt").read_text())
        return 0
    print(markdown(job_table(args.out / "job.raw", args.root), "job stage"))
    print()
    print(markdown(server_table(args.out / "server.raw"), "Triton model"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
