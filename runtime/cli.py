"""Command line: `sparse-runtime <command> ...`; the only place argv is read.

Each command lives in `runtime/commands/<name>.py` and exposes
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only for
the command that runs, so `sparse-runtime health` stays fast and light.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import os
import select
import stat
import sys
from collections.abc import Sequence

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("runtime.commands.serve", "serve a model repository over gRPC (Triton protocol)"),
    "health": ("runtime.commands.health", "check a running server's gRPC health service"),
    "build-samples": ("runtime.commands.build_samples", "build the bundled sample models"),
    "inspect": ("runtime.commands.inspect", "report sparsity and 2:4 compliance per layer"),
    "prune": ("runtime.commands.prune", "prune a model (2:4 or unstructured)"),
    "pack": ("runtime.commands.pack", "pack a model into the compressed .sparse format"),
    "unpack": ("runtime.commands.unpack", "restore the ONNX model from a .sparse file"),
    "compare": ("runtime.commands.compare", "compare dense and sparse variants on a server"),
    "quantize": ("runtime.commands.quantize", "int8 post-training quantization"),
    "sign": ("runtime.commands.sign", "sign model files (Ed25519) for serve --trusted-keys"),
    "keygen": ("runtime.commands.keygen", "make an Ed25519 key pair for signing models"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {
        name: spec
        for name, spec in COMMANDS.items()
        if importlib.util.find_spec(spec[0]) is not None
    }


def _stdout_reader_gone() -> bool:
    """stdout is a pipe whose reader left (`| head`): not an error of ours. Any other
    broken pipe (a socket, a subprocess) is one, and is reported."""
    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # NOTE: no poll() on some platforms
        return False


def _version() -> str:
    try:
        return importlib.metadata.version("sparse-runtime")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


def build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, object | None]:
    parser = argparse.ArgumentParser(prog="sparse-runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    available = _available()
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (module_name, help_text) in available.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, module = build_parser(argv)
    args = parser.parse_args(argv)
    if module is None:  # pragma: no cover - argparse already rejected it
        parser.error(f"unknown command {args.command}")
    try:
        return int(module.run(args) or 0)
    except BrokenPipeError as exc:
        if not _stdout_reader_gone():  # a socket, say: a real error
            print(f"sparse-runtime {args.command}: error: {exc}", file=sys.stderr)
            return 1
        # `inspect --json | head`: the reader left, nothing to report; as the Python docs
        # advise, stdout goes to devnull so the exit flush is quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # a path that cannot be read or written: say which, no traceback
        print(f"sparse-runtime {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
