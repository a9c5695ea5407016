"""The ``swapstream`` command."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import cv2

from swapstream.services import options
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
    if not getattr(args, "quiet", False):
        print("starting the model server…", file=sys.stderr, flush=True)  # else seconds of silence
    with repository.embedded_triton(_weight_dirs(args)) as (server, _):
        yield server.grpc_url


def cmd_swap(args) -> int:
    started = time.monotonic()
    from tqdm import tqdm

    from swapstream.pipelines.align import DeviceError
    from swapstream.pipelines.decode import VideoDecodeError, probe_video
    from swapstream.services.engine.encoder import EncodeError
    from swapstream.services.engine.errors import SwapInputError
    from swapstream.services.engine.offline import SwapOptions, run_swap
    from swapstream.services.engine.photos import IMAGE_SUFFIXES
    from swapstream.services.engine.picking import checked
    from swapstream.services.engine.swapper import FaceSwapper
    from swapstream.services.engine.swappers import create_swapper
    from swapstream.services.engine.swappers.choice import choose_swapper
    from swapstream.services.engine.trim import frames_planned
    from swapstream.services.triton.client import SwapstreamClient, TritonCallError

    for role, given in [("--source", path) for path in args.source] + [("--target", args.target),
                                                                       ("--reference", args.reference)]:
        if given and not Path(given).is_file():
            print(f"error: no such file: {given} ({role})" if not Path(given).exists() else
                  f"error: {given} ({role}) is not a file", file=sys.stderr)
            return 2
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
    chosen = SwapOptions(reference=Path(args.reference) if args.reference else None,
                         **{name: getattr(args, name) for name in options.SWAP if name != "swapper"})
    target = Path(args.target)
    try:
        info = None if target.suffix.lower() in IMAGE_SUFFIXES else probe_video(target)
        total, _ = frames_planned(vars(chosen), info)  # also checks start/end/fps against the target, before Triton
        checked(chosen.faces, chosen.pick_time, chosen.pick_points, chosen.pick_sources, len(args.source), target,
                info)
        with triton_url(args) as url:
            client = SwapstreamClient(url)
            try:  # closed before the embedded server stops, so its health probes do not report it leaving
                choice = choose_swapper(args.swapper, repository.real_networks(_weight_dirs(args)))
                swapper = FaceSwapper(client, create_swapper(choice.name, client), chosen.device)
                with tqdm(total=total, unit="frame", disable=args.quiet) as bar:
                    summary = run_swap(swapper, [Path(p) for p in args.source], target, output, chosen,
                                       progress=lambda frames, _summary: bar.update(frames))
            finally:
                client.close()
    except (SwapInputError, VideoDecodeError, EncodeError, TritonCallError, repository.RepositoryError,
            TritonStartError, DeviceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary.notes.insert(0, choice.reason)
    elapsed = time.monotonic() - started
    summary.notes.insert(0, f"{elapsed:.1f} s in all, {elapsed - summary.seconds:.1f} s of it start-up"
                            + ("" if args.triton else " (the model server)"))
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
    from swapstream.services.http.app import create_app
    from swapstream.services.jobs.serve import ServeError, serve
    from swapstream.services.jobs.service import ServiceConfig
    from swapstream.services.jobs.uploads import MB, UploadLimits
    from swapstream.services.live.limits import LiveLimits

    limits = UploadLimits(max_video_bytes=int(args.max_video_mb * MB), max_photo_bytes=int(args.max_photo_mb * MB),
                          max_duration=args.max_duration, max_pixels=args.max_resolution, max_fps=args.max_fps,
                          max_frames=args.max_frames)
    live = LiveLimits(max_streams=args.max_streams, window_ms=args.live_window_ms, max_batch=args.live_max_batch,
                      latency_ms=args.live_latency_ms, idle_timeout=args.live_idle_timeout)
    config = ServiceConfig(data_dir=Path(args.data), triton_url=args.triton or "", store_url=args.store,
                           workers=args.workers, max_queued=args.max_queued, max_attempts=args.max_attempts,
                           token=args.token or None, device=args.device,
                           limits=limits, live=live, stale_after=args.stale_after,
                           min_free_bytes=int(args.min_free_mb * MB), triton_timeout=args.triton_timeout,
                           allowed_hosts=args.allowed_hosts, allowed_origins=args.allowed_origins,
                           swapper=args.swapper,
                           real_networks=frozenset(repository.real_networks(_weight_dirs(args))))
    try:
        serve(config, args.host, args.port, [Path(args.models)] if args.models else None,
              triton_unresponsive_after=args.triton_unresponsive, drain_timeout=args.drain_timeout,
              create_app=create_app)
    except (ServeError, repository.RepositoryError, TritonStartError, DeviceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def cmd_live(args) -> int:
    from swapstream.services.engine.encoder import EncodeError
    from swapstream.services.live.client import DEFAULT_URL, LiveError, LiveRequest, run_live, summary_text

    request = LiveRequest(sources=[Path(p) for p in args.source], input=args.input, url=args.url or DEFAULT_URL,
                          token=args.token or None,
                          output=Path(args.output) if args.output else None,
                          stats=Path(args.stats) if args.stats else None, faces=args.faces,
                          smoothing=args.smoothing, quality=args.quality, frames=args.frames,
                          swapper=args.swapper)
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


def _add_triton(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--triton", help="gRPC address (host:port) of a running Triton, or several: a:8001,b:8001 "
                        "(calls spread over the healthy ones; a name resolving to several addresses counts as "
                        "several); default: start the embedded one")
    parser.add_argument("--models", help="folder with model weights for the embedded Triton")


def _add_triton_command(commands) -> None:
    triton = commands.add_parser("triton", help="run the embedded Triton Inference Server in the foreground")
    triton.add_argument("--address", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    triton.add_argument("--http-port", type=int, default=8000, help="0 picks a free port")
    triton.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port")
    triton.add_argument("--metrics-port", type=int, default=8002, help="0 picks a free port")
    triton.add_argument("--models", help="folder with model weights (default: the models cache, then ../shared/models)")
    triton.add_argument("--log-verbose", type=int, default=0)
    triton.set_defaults(func=cmd_triton)


SWAP_EXAMPLES = """examples:
  swapstream swap --source me.jpg --target clip.mp4 -o swapped.mp4
      every face of the clip becomes the face of me.jpg (a model server is started for the run)
  swapstream swap --source me.jpg me2.jpg --target group.jpg -o swapped.jpg --faces largest
      a photo; several photos of the source person give a steadier identity; only the largest face is swapped
  swapstream swap --source me.jpg --target clip.mp4 -o swapped.mp4 --faces reference --reference them.jpg
      only the person shown in them.jpg is swapped
  swapstream swap --source me.jpg you.jpg --target clip.mp4 -o swapped.mp4 --pick-time 3 --pick 410,180 \
      --pick 820,200 --pick-sources 0,1
      only the two faces under those points (pixels) in the frame at 3 s, followed through the clip; the first
      becomes me.jpg, the second you.jpg (photo numbers from 0)
  swapstream swap --source me.jpg --target clip.mp4 -o swapped.mp4 --triton 127.0.0.1:8001
      use a running model server (`swapstream triton`) instead of starting one
"""


class _Command(argparse.ArgumentParser):
    """A subcommand's parser: an unknown argument is reported with this command's usage, not the top one's."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _add_swap_command(commands) -> None:
    """The inputs here; the options from the options table (``swapstream.services.options.SWAP``)."""
    swap = commands.add_parser("swap", help="swap faces in a video (or photo)", epilog=SWAP_EXAMPLES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    swap.add_argument("--source", nargs="+", required=True, help="one or more photos of the source face")
    swap.add_argument("--target", required=True, help="the video (or photo) whose faces are replaced")
    swap.add_argument("-o", "--output", required=True, help="output file (.mp4, .mkv, .mov; .jpg/.png for a photo)")
    swap.add_argument("--reference", help="with --faces reference: a photo of the person whose face is swapped")
    options.add_arguments(swap, "swap")
    _add_triton(swap)
    swap.add_argument("--quiet", action="store_true", help="no progress bar")
    swap.set_defaults(func=cmd_swap)


def _add_serve_command(commands) -> None:
    serve = commands.add_parser("serve", help="run the ingestion service (HTTP API, job queue, workers, metrics)")
    options.add_arguments(serve, "serve")
    _add_triton(serve)
    serve.set_defaults(func=cmd_serve)


def _add_live_command(commands) -> None:
    live = commands.add_parser("live", help="stream a video or a camera to a running service's live swap")
    live.add_argument("--source", nargs="+", required=True, help="one or more photos of the source face")
    live.add_argument("--input", required=True, help="a video file (streamed at its own frame rate) or a camera "
                                                     "such as /dev/video0")
    live.add_argument("--url", help="the service (default ws://127.0.0.1:8080, `swapstream serve`'s own); several, "
                      "ws://a:8080,ws://b:8080, to come back through another when a replica leaves")
    live.add_argument("--token", default=os.environ.get("SWAPSTREAM_TOKEN"),
                      help="the service's token (default: $SWAPSTREAM_TOKEN)")
    live.add_argument("--output", help="write the swapped frames as a video with the input's frame count and rate")
    live.add_argument("--stats", help="write latency and frame counts as JSON")
    options.add_arguments(live, "live")
    live.add_argument("--frames", type=int, help="stop after this many frames (default: the whole input)")
    live.set_defaults(func=cmd_live)


def _add_other_commands(commands) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    from swapstream.benchmarks.cli import add_bench_command

    parser = argparse.ArgumentParser(prog="swapstream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Command)
    for add in (_add_triton_command, _add_swap_command, _add_serve_command, _add_live_command, _add_other_commands,
                add_bench_command):
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # OpenCV's worker threads took 40 % more CPU for the same wall time on a live face's swap here (29 against 20
    # CPU-ms): its calls are small. The engine has threads of its own (stages, faces in flight, live rounds).
    cv2.setNumThreads(1)
    # A face's swap makes hundreds of short OpenCV calls, each giving up the GIL and waiting to get it back: beside
    # a thread busy in Python, up to the switch interval each (5 ms by default; one swap took 2 s instead of 25 ms,
    # 0.3 s at 0.5 ms).
    sys.setswitchinterval(0.0005)
    # SIGTERM (what Docker and Kubernetes send) stops a command as Ctrl-C does: its clean-up runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
