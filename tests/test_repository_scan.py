"""Scanning a Triton-layout repository: what counts as a model and a version, and how one
unreadable model folder is reported without hiding the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import ConfigError
from runtime.repository import repository


def test_versions_are_ascii_digit_folders(tmp_path: Path) -> None:
    for name in ("1", "3", "²", "x", ".hidden", "01"):
        (tmp_path / "m" / name).mkdir(parents=True)
    (tmp_path / "m" / "7").write_text("a file, not a version folder")
    (tmp_path / "_private" / "1").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    found = repository.scan(tmp_path)
    assert list(found) == ["m"]
    assert found["m"].versions == (1, 3) and found["m"].error == ""


@pytest.mark.parametrize(
    ("name", "ok"),
    [("mlp", True), ("a.b", True), ("", False), (".", False), ("..", False), ("../x", False),
     ("/", False), ("/tmp", False), ("a/b", False), (".hidden", False), ("_x", False)],
)  # fmt: skip
def test_model_names_are_plain_folder_names(name: str, ok: bool) -> None:
    assert repository.is_model_name(name) is ok


def test_an_unreadable_model_folder_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "good" / "1").mkdir(parents=True)
    (tmp_path / "locked" / "1").mkdir(parents=True)
    real_iterdir = Path.iterdir

    def iterdir(self: Path):  # what a folder of another user's with mode 700 does
        if self.name == "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    found = repository.scan(tmp_path)
    assert found["good"].versions == (1,)
    assert (
        "cannot be read" in found["locked"].error and "Permission denied" in found["locked"].error
    )


@pytest.mark.parametrize(
    ("device", "text", "groups"),
    [
        ("cpu", "", [("m_0", 1, "KIND_CPU", [])]),
        ("cuda:1", "", [("m_0", 1, "KIND_GPU", [1])]),
        ("cpu", "instance_group [ { count: 2 } ]", [("m_0", 2, "KIND_CPU", [])]),
        ("cuda:0", 'instance_group [ { name: "g" kind: KIND_GPU gpus: [ 3 ] } ]',
         [("g", 1, "KIND_GPU", [3])]),
    ],
)
def test_config_gets_the_fields_tritonserver_fills_in(
    device: str, text: str, groups: list[tuple[str, int, str, list[int]]]
) -> None:
    """Version policy and named instance groups (the engine's device kind, its GPU), as a
    client reading ModelConfig from tritonserver sees them; what the config says stays."""
    import numpy as np
    from tritonclient.grpc import model_config_pb2 as mc

    from runtime.engines.base import EngineDescription, TensorSpec
    from runtime.repository.config import complete_config, parse_config_text

    spec = TensorSpec("x", np.dtype(np.float32), (-1, 4))
    description = EngineDescription("onnxruntime", device, (spec,), (spec,))
    config = complete_config(parse_config_text(f'name: "m"\n{text}'), "m", description)
    assert config.version_policy.latest.num_versions == 1
    got = [(g.name, g.count, mc.ModelInstanceGroup.Kind.Name(g.kind), list(g.gpus))
           for g in config.instance_group]  # fmt: skip
    assert got == groups


@pytest.mark.parametrize(
    ("name", "inside"),
    [("model.onnx", True), ("sub/model.onnx", True), ("a/../model.onnx", True),
     ("../model.onnx", False), ("a/../../x", False), ("/etc/passwd", False), ("", False),
     ("bad\0name", False)],
)  # fmt: skip
def test_config_file_names_stay_in_their_folder(name: str, inside: bool) -> None:
    assert repository.is_inside_name(name) is inside


def test_a_symlinked_model_file_is_its_folders_file(tmp_path: Path) -> None:
    """Shared storage (a Hugging Face snapshot, DVC) links the file elsewhere; the name in
    the config is what stays inside the folder, as Triton reads it."""
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "abc").write_bytes(b"onnx")
    version = tmp_path / "m" / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").symlink_to(tmp_path / "blobs" / "abc")
    assert repository.model_file(version, "model.onnx") == version / "model.onnx"
    with pytest.raises(ConfigError, match="is not a file in"):
        repository.model_file(version, "../../blobs/abc")
