"""glibc malloc tuning for large tensors: applied when asked, skipped cleanly otherwise."""

from __future__ import annotations

import argparse
import platform

import pytest

from runtime import settings as settings_mod
from runtime.hostmem import MMAP_THRESHOLD_MAX, keep_large_buffers, thresholds


def test_zero_leaves_malloc_alone() -> None:
    assert keep_large_buffers(0) is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_takes_the_thresholds() -> None:
    assert keep_large_buffers(64 * 2**20) is True


def test_thresholds_are_clamped() -> None:
    assert thresholds(64 * 2**20) == (64 * 2**20, 128 * 2**20)
    assert thresholds(2**40) == (MMAP_THRESHOLD_MAX, MMAP_THRESHOLD_MAX)


def test_setting_flag_and_default() -> None:
    assert settings_mod.Settings().host_buffer_reuse_bytes == 64 * 2**20
    parser = argparse.ArgumentParser()
    settings_mod.add_arguments(parser)
    args = parser.parse_args(["--host-buffer-reuse-bytes", "0"])
    assert settings_mod.from_args(args).host_buffer_reuse_bytes == 0
