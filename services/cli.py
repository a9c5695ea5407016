"""The ``swapstream`` command."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from swapstream.services.options import argparse_type, help_text
from swapstream.services.triton import costtrue, model_store, repository, standins
from swapstream.services.triton.server import Ports, TritonStartError, free_port


def _weight_dirs(args) -> list[Path]:
    return repository.weight_dirs_for(args.models)


def cmd_triton(args) -> int:
    ports = Ports(args.http_port or free_port(args.address), args.grpc_port or free_port(args.address),
                  args.metrics_port or free_port(args.address))
    started = time.monotonic()
    try:
        with repository.embedded_triton(_weight_dirs(args), announce=False, address=args.address, ports=ports,
                                        log_verbose=args.log_verbose) as (server, sources):
            print(f"Triton ready in {time.monotonic() - started:.1f} s")
            print(f"  gRPC     {server.grpc_url}\n  HTTP     {server.http_url}\n  metrics  {server.metrics_url}")
            print("Models (real = pinned weights, verified; stand-in = generated, see services/standins.py):")
            print(repository.describe(sources), flush=True)
            return _wait_for_exit(server)
    except (repository.RepositoryError, TritonStartError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, repository.RepositoryError) else 1


def _wait_for_exit(server) -> int:
    try:
        while server.process.poll() is None:
            time.sleep(0.5)
        print(f"tritonserver exited with code {server.process.returncode}\n{server.log()[-3000:]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping Triton ...", flush=True)
        return 0


@contextmanager
def triton_url(args):
    """The URL of ``--triton``, or of an embedded server started (and stopped) for this command."""
    if args.triton:
        yield args.triton
        return
    with repository.embedded_triton(_weight_dirs(args)) as (server, _):
        yield server.grpc_url


def cmd_swap(args) -> int:
    from tqdm import tqdm

    from swapstream.pipelines.align import DeviceError
    from swapstream.pipelines.decode import VideoDecodeError, probe_video
    from swapstream.services.engine.encoder import EncodeError
    from swapstream.services.engine.errors import SwapInputError
    from swapstream.services.engine.offline import SwapOptions, run_swap
    from swapstream.services.engine.photos import IMAGE_SUFFIXES
    from swapstream.services.engine.swapper import FaceSwapper
    from swapstream.services.engine.swappers import create_swapper
    from swapstream.services.triton.client import SwapstreamClient, TritonCallError

    output = Path(args.output)
    if not output.parent.resolve().is_dir():
        print(f"error: output folder {output.parent} does not exist; create it first", file=sys.stderr)
        return 2
    for role, given in [("--target", args.target), ("--reference", args.reference)] + [
            ("--source", path) for path in args.source]:
        if given and _same_file(output, Path(given)):
            print(f"error: the output {output} is the {role} file {given}: it would be overwritten; "
                  "choose another output name", file=sys.stderr)
            return 2
    options = SwapOptions(faces=args.faces, reference=Path(args.reference) if args.reference else None,
                          reference_distance=args.reference_distance, score_threshold=args.score_threshold,
                          batch_size=args.batch_size, smoothing=not args.no_smoothing, crf=args.crf,
                          codec=args.encoder, preset=args.preset, audio=not args.no_audio, device=args.device)
    target = Path(args.target)
    try:
        total = 1 if target.suffix.lower() in IMAGE_SUFFIXES else probe_video(target).frame_count
        with triton_url(args) as url:
            client = SwapstreamClient(url)
            swapper = FaceSwapper(client, create_swapper("simswap", client), options.device)
            with tqdm(total=total, unit="frame", disable=args.quiet) as bar:
                summary = run_swap(swapper, [Path(p) for p in args.source], target, output, options,
                                   progress=lambda frames, _summary: bar.update(frames))
    except (SwapInputError, VideoDecodeError, EncodeError, TritonCallError, repository.RepositoryError,
            TritonStartError, DeviceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{output}: {summary}")
    return 0


def _same_file(a: Path, b: Path) -> bool:
    """The same file, also through symbolic or hard links (or the same path before either exists)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def cmd_serve(args) -> int:
    from swapstream.pipelines.align import DeviceError
    from swapstream.services.jobs.api import ServiceConfig
    from swapstream.services.jobs.serve import ServeError, serve
    from swapstream.services.jobs.uploads import MB, UploadLimits
    from swapstream.services.live.limits import LiveLimits

    limits = UploadLimits(max_video_bytes=int(args.max_video_mb * MB), max_photo_bytes=int(args.max_photo_mb * MB),
                          max_duration=args.max_duration, max_pixels=args.max_resolution, max_fps=args.max_fps,
                          max_frames=args.max_frames)
    live = LiveLimits(max_streams=args.max_streams, window_ms=args.live_window_ms, max_batch=args.live_max_batch,
                      idle_timeout=args.live_idle_timeout)
    config = ServiceConfig(data_dir=Path(args.data), triton_url=args.triton or "", store_url=args.store,
                           workers=args.workers, max_queued=args.max_queued, max_attempts=args.max_attempts,
                           token=args.token or os.environ.get("SWAPSTREAM_TOKEN") or None, device=args.device,
                           limits=limits, live=live, stale_after=args.stale_after,
                           min_free_bytes=int(args.min_free_mb * MB), triton_timeout=args.triton_timeout)
    try:
        serve(config, args.host, args.port, [Path(args.models)] if args.models else None,
              triton_unresponsive_after=args.triton_unresponsive)
    except (ServeError, repository.RepositoryError, TritonStartError, DeviceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def cmd_live(args) -> int:
    from swapstream.services.live.client import DEFAULT_URL, LiveError, LiveRequest, run_live, summary_text
    from swapstream.services.engine.encoder import EncodeError

    request = LiveRequest(sources=[Path(p) for p in args.source], input=args.input, url=args.url or DEFAULT_URL,
                          token=args.token or os.environ.get("SWAPSTREAM_TOKEN") or None,
                          output=Path(args.output) if args.output else None,
                          stats=Path(args.stats) if args.stats else None, faces=args.faces,
                          smoothing=not args.no_smoothing, quality=args.quality, frames=args.frames)
    try:
        figures = run_live(request)
    except (LiveError, EncodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary_text(figures))
    for path in (request.output, request.stats):
        if path:
            print(f"written: {path}")
    return 0


def cmd_repository(args) -> int:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} is not empty; choose a new folder", file=sys.stderr)
        return 2
    try:
        sources = repository.build_repository(out, _weight_dirs(args), link="copy" if args.copy else "symlink")
    except repository.RepositoryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"model repository written to {out}\n{repository.describe(sources)}")
    return 0


def cmd_models_fetch(args) -> int:
    return model_store.fetch_command(args.dir, args.names, progress=not args.quiet)


def cmd_models_standins(args) -> int:
    manifest = model_store.load_manifest()
    if args.cost_true:
        unknown = sorted(set(args.names) - set(costtrue.BUILDERS))
        if unknown:
            print(f"error: no cost-true model for {', '.join(unknown)} (there are: {', '.join(costtrue.BUILDERS)})",
                  file=sys.stderr)
            return 2
        written = costtrue.write(manifest, Path(args.out), args.names or None)
    else:
        written = standins.write_standins(manifest, Path(args.out), args.names or None)
    for key, path in written.items():
        print(f"{key}: {'cost-true ' if args.cost_true else ''}stand-in written to {path}")
    return 0


def cmd_models_list(args) -> int:
    manifest = model_store.load_manifest()
    for key, entry in manifest.items():
        found = [d / entry.file for d in _weight_dirs(args) if (d / entry.file).is_file()]
        where = str(found[0]) if found else "absent (a stand-in is used)"
        print(f"{key:<16} {entry.file:<26} {entry.bytes / 1e6:8.1f} MB  {entry.license:<14} {where}")
    return 0


def _pixels(text: str) -> int:
    """WIDTHxHEIGHT -> the pixel count."""
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1920x1080, got {text!r}")
    return int(width) * int(height)


def _positive(kind, zero: bool = False):
    """An argparse type: a number of ``kind`` above 0 (or 0 too)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0 or (value == 0 and not zero):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if zero else 'more than 0'}, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swapstream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    triton = commands.add_parser("triton", help="run the embedded Triton Inference Server in the foreground")
    triton.add_argument("--address", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    triton.add_argument("--http-port", type=int, default=8000, help="0 picks a free port")
    triton.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port")
    triton.add_argument("--metrics-port", type=int, default=8002, help="0 picks a free port")
    triton.add_argument("--models", help="folder with model weights (default: the models cache, then ../shared/models)")
    triton.add_argument("--log-verbose", type=int, default=0)
    triton.set_defaults(func=cmd_triton)

    swap = commands.add_parser("swap", help="swap faces in a video (or photo)")
    swap.add_argument("--source", nargs="+", required=True, help="one or more photos of the source face")
    swap.add_argument("--target", required=True, help="the video (or photo) whose faces are replaced")
    swap.add_argument("-o", "--output", required=True, help="output file (.mp4, .mkv, .mov; .jpg/.png for a photo)")
    swap.add_argument("--faces", choices=["all", "largest", "reference"], default="all",
                      help="which faces to swap (default all)")
    swap.add_argument("--reference", help="with --faces reference: a photo of the person whose face is swapped")
    for name, default in (("reference_distance", 0.6), ("score_threshold", 0.6), ("batch_size", 16)):
        swap.add_argument(f"--{name.replace('_', '-')}", type=argparse_type(name), default=default,
                          help=help_text(name, default))
    swap.add_argument("--no-smoothing", action="store_true", help="do not smooth landmarks across frames")
    swap.add_argument("--encoder", default="libx264", help="ffmpeg video encoder (libx264, libx265, libvpx-vp9 ...)")
    swap.add_argument("--crf", type=argparse_type("crf"), default=18, help=help_text("crf", 18))
    swap.add_argument("--preset", default="medium", help="encoder preset (medium)")
    swap.add_argument("--no-audio", action="store_true", help="drop the audio (default: copied from the target)")
    swap.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="where DALI runs (cpu)")
    swap.add_argument("--triton", help="URL (host:port) of a running Triton's gRPC; default: start the embedded one")
    swap.add_argument("--models", help="folder with model weights for the embedded Triton")
    swap.add_argument("--quiet", action="store_true", help="no progress bar")
    swap.set_defaults(func=cmd_swap)

    serve = commands.add_parser("serve", help="run the ingestion service (HTTP API, job queue, workers, metrics)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; any other needs a token)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--data", default="swapstream-data", help="folder for uploads, results and the SQLite store")
    serve.add_argument("--store", help="job store URL, e.g. postgresql://user@db/swapstream (default: SQLite in --data)")
    serve.add_argument("--triton", help="gRPC URL (host:port) of a running Triton; default: start the embedded one")
    serve.add_argument("--models", help="folder with model weights for the embedded Triton")
    serve.add_argument("--workers", type=_positive(int, zero=True), default=1,
                       help="jobs run at once by this process, >=0; 0 only queues them (1)")
    serve.add_argument("--max-queued", type=_positive(int), default=16,
                       help="queued jobs before new ones get 429, >0 (16)")
    serve.add_argument("--max-attempts", type=_positive(int), default=3,
                       help="times a job is started before it fails, when its worker dies or Triton fails; a full "
                            "disk does not count, >0 (3)")
    serve.add_argument("--token", help="bearer token required on /v1 (default: $SWAPSTREAM_TOKEN)")
    serve.add_argument("--max-video-mb", type=_positive(float), default=1024, help="largest video upload, >0 (1024 MB)")
    serve.add_argument("--max-photo-mb", type=_positive(float), default=20, help="largest photo upload, >0 (20 MB)")
    serve.add_argument("--max-duration", type=_positive(float), default=600,
                       help="longest video in seconds, >0 (600)")
    serve.add_argument("--max-fps", type=_positive(float), default=120, help="highest average frame rate, >0 (120)")
    serve.add_argument("--max-frames", type=_positive(int), default=36000, help="most frames in a video, >0 (36000)")
    serve.add_argument("--max-resolution", type=_pixels, default="3840x2160",
                       help="largest frame and largest photo, WIDTHxHEIGHT (3840x2160)")
    serve.add_argument("--min-free-mb", type=_positive(float, zero=True), default=100,
                       help="free space kept on the data folder's disk: below it /readyz is 503, no job starts and "
                            "submissions get 507, >=0 (100 MB)")
    serve.add_argument("--stale-after", type=_positive(float), default=300,
                       help="seconds without a heartbeat before a running job is re-queued, >0 (300)")
    serve.add_argument("--triton-timeout", type=_positive(float), default=120,
                       help="deadline of one Triton call in seconds, >0 (120)")
    serve.add_argument("--triton-unresponsive", type=_positive(float), default=30,
                       help="seconds without an answer before the embedded Triton is restarted, >0 (30)")
    serve.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="where DALI runs (cpu)")
    serve.add_argument("--max-streams", type=_positive(int), default=8,
                       help="live streams open at once; one more is closed with 1013, try later (8)")
    serve.add_argument("--live-window-ms", type=_positive(float, zero=True), default=4.0,
                       help="how long the live scheduler waits for other streams' frames to join a batch (4 ms)")
    serve.add_argument("--live-max-batch", type=_positive(int), default=16,
                       help="live frames per detect/swap batch; 1 = frame by frame, batch-1 calls (16)")
    serve.add_argument("--live-idle-timeout", type=_positive(float), default=30.0,
                       help="seconds without a message before a live stream is closed (30)")
    serve.set_defaults(func=cmd_serve)

    live = commands.add_parser("live", help="stream a video or a camera to a running service's live swap")
    live.add_argument("--source", nargs="+", required=True, help="one or more photos of the source face")
    live.add_argument("--input", required=True, help="a video file (streamed at its own frame rate) or a camera "
                                                     "such as /dev/video0")
    live.add_argument("--url", help="the service (default ws://127.0.0.1:8080, `swapstream serve`'s own)")
    live.add_argument("--token", help="the service's token (default: $SWAPSTREAM_TOKEN)")
    live.add_argument("--output", help="write the swapped frames as a video with the input's frame count and rate")
    live.add_argument("--stats", help="write latency and frame counts as JSON")
    live.add_argument("--faces", choices=["all", "largest"], default="all", help="which faces to swap (all)")
    live.add_argument("--no-smoothing", action="store_true", help="do not smooth the faces across frames")
    live.add_argument("--quality", type=int, default=80, help="JPEG quality of the frames sent and returned (80)")
    live.add_argument("--frames", type=int, help="stop after this many frames (default: the whole input)")
    live.set_defaults(func=cmd_live)

    repo = commands.add_parser("repository", help="write a runnable model repository (e.g. for NVIDIA's container)")
    repo.add_argument("out", help="an empty or new folder")
    repo.add_argument("--models", help="folder with model weights")
    repo.add_argument("--copy", action="store_true", help="copy weights instead of symlinking (for mounting elsewhere)")
    repo.set_defaults(func=cmd_repository)

    models = commands.add_parser("models", help="the real model weights and their stand-ins")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    fetch = models_commands.add_parser("fetch", help="download, resume and verify the pinned models")
    fetch.add_argument("names", nargs="*", help="manifest keys (default: all)")
    fetch.add_argument("--dir", help="models folder (default: $SWAPSTREAM_MODELS or ~/.cache/swapstream/models)")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    fetch.set_defaults(func=cmd_models_fetch)
    write = models_commands.add_parser("standins", help="write the deterministic stand-in models")
    write.add_argument("--out", required=True)
    write.add_argument("names", nargs="*", help=f"which (default: {', '.join(standins.BUILDERS)})")
    write.add_argument("--cost-true", action="store_true",
                       help="the real networks' architectures with generated weights (full compute, ~0.9 GB), "
                            "instead of the tiny stand-ins with a known behaviour")
    write.set_defaults(func=cmd_models_standins)
    listing = models_commands.add_parser("list", help="the pinned models and where their weights are")
    listing.add_argument("--models", help="folder with model weights")
    listing.set_defaults(func=cmd_models_list)
    from swapstream.benchmarks.cli import add_bench_command
    add_bench_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (what Docker and Kubernetes send) stops a command as Ctrl-C does: its clean-up runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
