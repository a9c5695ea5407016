"""``swapstream bench``: the throughput harness (``run``, the default) and the Triton load mode (``load``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

QUICK = {"frames": 24, "batch_sizes": [1, 4], "streams": [1], "repeats": 1, "bound_repeats": 1, "seconds": 3.0,
         "concurrency": [1, 2]}


def _sizes(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _parts(text: str) -> tuple[str, ...]:
    from swapstream.benchmarks.harness import PARTS

    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"parts are {', '.join(PARTS)}; got {text!r}")
    return parts


def add_bench_command(commands) -> None:
    bench = commands.add_parser(
        "bench", help="throughput benchmark: pipeline vs frame-at-a-time baseline vs model bound; Triton load",
        description="run (default): the pipeline at each batch size and stream count, a frame-at-a-time baseline "
                    "(PyAV, onnxruntime batch 1, OpenCV, ffmpeg), the networks alone, and decode, on one clip with "
                    "the same model files. load: N concurrent gRPC clients calling one Triton model. live: N "
                    "concurrent live streams of a clip at real-time pace, cross-stream batching against frame by "
                    "frame.")
    bench.add_argument("mode", nargs="?", choices=["run", "load", "live", "quality"], default="run")
    bench.add_argument("--clip", help="target video (default: the first frames of the shared talking-head clip, "
                                      "or a clip made from a shared photo)")
    bench.add_argument("--frames", type=int, help="use the first N frames of the clip (default clip: 60); live: "
                                                  "frames per stream, the clip looped (default: the clip once)")
    bench.add_argument("--source", help="source face photo (default: a shared photo)")
    bench.add_argument("--batch-sizes", type=_sizes, default=[1, 2, 4, 8, 16], help="sweep (1,2,4,8,16)")
    bench.add_argument("--streams", type=_sizes, default=None,
                       help="concurrent streams, at the best batch size (1,2); live: concurrent live streams "
                            "(1,2,4,8)")
    bench.add_argument("--parts", type=_parts, default=None, help="pipeline,baseline,bound,decode (all)")
    bench.add_argument("--repeats", type=int, default=1,
                       help="runs of each pipeline configuration and of the baseline, the median kept; of each "
                            "decoder, the least time kept (1)")
    bench.add_argument("--bound-repeats", type=int, default=3, help="timed runs per batch size for the bound (3)")
    bench.add_argument("--concurrency", type=_sizes, default=[1, 2, 4], help="load: clients (1,2,4)")
    bench.add_argument("--faces", type=int, default=4, help="load: faces (or frames for detect) per request (4)")
    bench.add_argument("--seconds", type=float, default=10.0, help="load: seconds per concurrency level (10)")
    bench.add_argument("--model", choices=["swap", "detect"], default="swap", help="load: the model called (swap)")
    bench.add_argument("--quick", action="store_true",
                       help="a short run (overrides the sweeps): 24 frames, batch 1,4, 1 stream, 1 bound repeat; "
                            "load: 3 s, 1,2 clients")
    bench.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                       help="where DALI and the in-process onnxruntime run (cpu)")
    bench.add_argument("--triton", help="host:port of a running Triton's gRPC (default: start the embedded one)")
    bench.add_argument("--repository", help="the runtime repository the models come from (with --triton: the one "
                                            "it serves); default: built from --models")
    bench.add_argument("--models", help="folder with model weights (default: the models cache, then ../shared/models); "
                                        "cost-true: the real networks' architectures with generated weights")
    bench.add_argument("--swapper", choices=["mesh", "simswap"],
                       help="quality: the swapper judged; live: the streams' swapper (default: as a swap run, or "
                            "the service, chooses)")
    bench.add_argument("--targets", nargs="+", metavar="NAME",
                       help="quality: shared clips and photos (names in ../shared/media) or paths (default: all)")
    bench.add_argument("--judge-every", type=int, default=6, help="quality: judge every Nth frame of a clip (6)")
    bench.add_argument("--tracking", choices=["mesh", "detector"], default="mesh",
                       help="quality: how faces are followed between frames, as swap's --tracking (mesh)")
    bench.add_argument("--out", default="bench-results", help="results folder (bench-results)")
    bench.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from swapstream.benchmarks import report
    from swapstream.benchmarks.harness import PARTS, BenchConfig, run_bench, run_load_bench
    from swapstream.services.live.client import LiveError
    from swapstream.services.triton.repository import RepositoryError
    from swapstream.services.triton.server import TritonStartError

    if args.quick:
        vars(args).update(QUICK)
    config = BenchConfig(
        out=Path(args.out), clip=Path(args.clip) if args.clip else None, frames=args.frames,
        source=Path(args.source) if args.source else None, batch_sizes=args.batch_sizes, streams=args.streams or [1, 2],
        parts=args.parts or PARTS, repeats=args.repeats, bound_repeats=args.bound_repeats, device=args.device,
        models=Path(args.models) if args.models else None,
        repository=Path(args.repository) if args.repository else None, triton=args.triton)
    try:
        if args.mode == "quality":
            from swapstream.benchmarks.judge import JudgeUnavailable
            from swapstream.benchmarks.quality import quality_summary_text, run_quality_bench, write_quality_results

            try:
                results = run_quality_bench(config, args.swapper, args.frames or 90, args.judge_every, args.targets,
                                            args.tracking)
            except JudgeUnavailable as error:
                raise ValueError(str(error)) from None
            written = write_quality_results(results, config.out)
            print(quality_summary_text(results))
        elif args.mode == "live":
            from swapstream.benchmarks.live import live_summary_text, run_live_bench, write_live_results

            results = run_live_bench(config, args.streams or [1, 2, 4, 8], swapper=args.swapper)
            written = write_live_results(results, config.out)
            print(live_summary_text(results))
        elif args.mode == "load":
            results = run_load_bench(config, args.concurrency, args.faces, args.seconds, args.model)
            written = report.write_load_results(results, config.out)
            print(report.load_summary_text(results))
        else:
            results = run_bench(config)
            written = report.write_results(results, config.out)
            print(report.summary_text(results))
    except (RepositoryError, TritonStartError, LiveError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\nwritten: " + ", ".join(str(p) for p in written))
    return 0
