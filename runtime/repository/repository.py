"""Scan a Triton-layout repository: `<root>/<model>/config.pbtxt`, `<root>/<model>/<N>/`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from runtime.errors import ConfigError

LOGGER = logging.getLogger(__name__)
MODEL_FILENAMES = ("model.onnx", "model.sparse")


@dataclass(frozen=True)
class ModelEntry:
    """One model folder as found on disk; `error` says why it could not be read."""

    name: str
    path: Path
    versions: tuple[int, ...]
    error: str = ""


def is_model_name(name: str) -> bool:
    """A plain, visible folder name: what `scan` lists (no paths, no '.', '..' or hidden)."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith((".", "_"))


def _is_version(name: str) -> bool:
    """A version folder: ASCII digits ("²".isdigit() is True), no leading zero ("01" would be
    version 1 but not the folder named 1)."""
    return name.isascii() and name.isdigit() and (name == "0" or not name.startswith("0"))


def scan(root: Path) -> dict[str, ModelEntry]:
    """Every model folder under `root` (hidden folders skipped), with its numeric versions.

    One unreadable model folder is reported in its entry, not raised: the others still load.
    """
    if not root.is_dir():
        raise ConfigError(f"model repository '{root}' is not a directory")
    try:
        children = sorted(root.iterdir())
    except OSError as exc:
        raise ConfigError(f"model repository '{root}' cannot be read: {exc}") from exc
    models = {}
    for path in children:
        if not is_model_name(path.name) or not path.is_dir():
            continue
        try:
            versions = tuple(
                sorted(int(p.name) for p in path.iterdir() if _is_version(p.name) and p.is_dir())
            )
        except OSError as exc:
            models[path.name] = ModelEntry(
                path.name, path, (), f"model folder cannot be read: {exc}"
            )
            continue
        models[path.name] = ModelEntry(path.name, path, versions)
    return models


def is_inside_name(name: str) -> bool:
    """A relative name that stays in its folder (`sub/model.onnx`, not `../x` or `/x`).

    The name is judged, not where a symlink points: a version folder whose file links to
    shared storage (a Hugging Face snapshot, DVC) is still that folder's file, as in Triton.
    """
    if not name or "\0" in name or os.path.isabs(name):
        return False
    normal = os.path.normpath(name)
    return normal != ".." and not normal.startswith(".." + os.sep)


def model_file(version_dir: Path, default_filename: str = "") -> Path:
    """The model file in a version folder: config's default_model_filename, model.onnx or
    model.sparse (a packed 2:4 model)."""
    if default_filename and not is_inside_name(default_filename):
        # NOTE: a config must not load a model file from elsewhere on the filesystem
        raise ConfigError(
            f"default_model_filename '{default_filename}' is not a file in {version_dir}"
        )
    candidates = (default_filename,) if default_filename else MODEL_FILENAMES
    found = [version_dir / name for name in candidates if (version_dir / name).is_file()]
    if len(found) > 1:
        LOGGER.warning("%s holds both %s; serving %s", version_dir,
                       " and ".join(p.name for p in found), found[0].name)  # fmt: skip
    if found:
        return found[0]
    raise ConfigError(f"no model file ({' or '.join(candidates)}) in {version_dir}")


def select_versions(available: tuple[int, ...], policy: mc.ModelVersionPolicy) -> tuple[int, ...]:
    """Triton's version policy: latest N (default latest 1), all, or specific."""
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return available
    if which == "specific":
        wanted = set(policy.specific.versions)
        missing = wanted - set(available)
        if missing:
            raise ConfigError(f"version policy names missing versions {sorted(missing)}")
        return tuple(v for v in available if v in wanted)
    n = policy.latest.num_versions if which == "latest" else 1
    return available[-max(n, 1) :]
