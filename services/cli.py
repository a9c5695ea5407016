"""The ``swapstream`` command."""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from services import model_store, repository, standins
from services.triton_server import EmbeddedTriton, Ports, TritonStartError, free_port


def _weight_dirs(args) -> list[Path]:
    return [Path(args.models)] if args.models else repository.default_weight_dirs()


def cmd_triton(args) -> int:
    with tempfile.TemporaryDirectory(prefix="swapstream-repository-") as tmp:
        try:
            sources = repository.build_repository(Path(tmp), _weight_dirs(args))
        except repository.RepositoryError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        ports = Ports(args.http_port or free_port(args.address), args.grpc_port or free_port(args.address),
                      args.metrics_port or free_port(args.address))
        server = EmbeddedTriton(Path(tmp), address=args.address, ports=ports, log_verbose=args.log_verbose)
        started = time.monotonic()
        try:
            server.start()
        except TritonStartError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"Triton ready in {time.monotonic() - started:.1f} s")
        print(f"  gRPC     {server.grpc_url}\n  HTTP     {server.http_url}\n  metrics  {server.metrics_url}")
        print("Models (real = pinned weights, verified; stand-in = generated, see services/standins.py):")
        print(repository.describe(sources), flush=True)

        def stop(signum, _frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        try:
            while server.process.poll() is None:
                time.sleep(0.5)
            print(f"tritonserver exited with code {server.process.returncode}\n{server.log()[-3000:]}",
                  file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("stopping Triton ...", flush=True)
            return 0
        finally:
            server.stop()


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
    written = standins.write_standins(model_store.load_manifest(), Path(args.out), args.names or None)
    for key, path in written.items():
        print(f"{key}: stand-in written to {path}")
    return 0


def cmd_models_list(args) -> int:
    manifest = model_store.load_manifest()
    for key, entry in manifest.items():
        found = [d / entry.file for d in _weight_dirs(args) if (d / entry.file).is_file()]
        where = str(found[0]) if found else "absent (a stand-in is used)"
        print(f"{key:<16} {entry.file:<26} {entry.bytes / 1e6:8.1f} MB  {entry.license:<14} {where}")
    return 0


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
    write.set_defaults(func=cmd_models_standins)
    listing = models_commands.add_parser("list", help="the pinned models and where their weights are")
    listing.add_argument("--models", help="folder with model weights")
    listing.set_defaults(func=cmd_models_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
