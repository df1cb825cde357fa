"""Model lifecycle: load, unload, poll, index; per version UNAVAILABLE/LOADING/READY/UNLOADING.

Loading is blocking work (file I/O, analysis, engine start-up) and runs in a worker
thread, so a slow or failing model never stalls requests to the others. A model
that fails to load is UNAVAILABLE with its reason (logs and RepositoryIndex);
every other model keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from runtime.batching.batcher import BatchObserver
from runtime.errors import (
    InvalidArgument,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    unknown_model_message,
)
from runtime.model import ServedModel
from runtime.planning import build_model
from runtime.repository import repository
from runtime.repository.config import read_config
from runtime.settings import Settings

LOGGER = logging.getLogger(__name__)

READY, LOADING, UNLOADING, UNAVAILABLE = "READY", "LOADING", "UNLOADING", "UNAVAILABLE"


@dataclass
class VersionState:
    """One version's lifecycle state, and the served model when READY."""

    state: str
    reason: str = ""
    model: ServedModel | None = None


@dataclass
class ModelSlot:
    """Everything known about one model name."""

    versions: dict[int, VersionState] = field(default_factory=dict)
    fingerprint: tuple[object, ...] = ()
    reason: str = ""  # model-level failure (e.g. bad config) when no version exists
    unloaded: bool = False  # unloaded on request: "has no available versions", as Triton
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def fingerprint(model_dir: Path) -> tuple[object, ...]:
    """Cheap change detector for poll mode: names, sizes and mtimes of the model's files."""
    items: list[tuple[object, ...]] = []
    try:
        paths = sorted(model_dir.rglob("*"))
    except OSError as exc:  # unreadable: the load reports it; poll retries when it changes
        return (("unreadable", str(exc)),)
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        items.append((str(path.relative_to(model_dir)), st.st_size, st.st_mtime_ns))
    return tuple(items)


def _on_daemon_thread(fn: Callable[[], object], name: str) -> asyncio.Future[object]:
    """Run fn on a daemon thread (the interpreter does not wait for it at exit)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[object] = loop.create_future()

    def settle(result: object, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def run() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting side
            result, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed meanwhile: nobody waits any more
            pass

    threading.Thread(target=run, name=name, daemon=True).start()
    return done


class ModelManager:
    """Owns every model of the repository and their states."""

    def __init__(
        self,
        settings: Settings,
        observer_factory: Callable[[str, int], BatchObserver] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._root = settings.model_repository
        self._slots: dict[str, ModelSlot] = {}
        self._observer_factory = observer_factory
        self._on_change = on_change
        self._poll_task: asyncio.Task[None] | None = None

    @property
    def control_mode(self) -> str:
        return self._settings.model_control_mode

    # ---- queries (event loop, no I/O) -------------------------------------------------
    def get(self, name: str, version: str = "") -> ServedModel:
        """The READY model for a request, or Triton's NOT_FOUND / UNAVAILABLE errors."""
        if version and not (version.isascii() and version.isdigit()):
            raise InvalidArgument(  # NOTE: Triton's code and words; parsed before the lookup
                f"failed to get model version from specified version string '{version}', "
                "version should be an integral value > 0"
            )
        slot = self._slots.get(name)
        if slot is None:
            raise ModelNotFound(unknown_model_message(name, version))
        if version:
            vs = slot.versions.get(int(version))
            if vs is None:
                raise ModelNotFound(unknown_model_message(name, version))
            if vs.model is None:
                raise ModelNotReady(
                    f"Request for unknown model: '{name}' version {version} is not at ready "
                    f"state{': ' + vs.reason if vs.reason else ''}"
                )
            return vs.model
        ready = [v for v in slot.versions.values() if v.model is not None]
        if not ready:
            reason = slot.reason or next((v.reason for v in slot.versions.values()), "")
            if not slot.versions and not slot.reason and not slot.unloaded:
                raise ModelNotFound(unknown_model_message(name))
            # NOTE: NOT_FOUND, as Triton's ModelLifeCycle::GetModel answers a model it knows
            # (failed to load, or unloaded) with no READY version; we add why
            raise ModelNotFound(
                f"Request for unknown model: '{name}' has no available versions"
                f"{': ' + reason if reason else ''}"
            )
        return max(ready, key=lambda v: v.model.version).model  # type: ignore[union-attr]

    def ready_models(self) -> list[ServedModel]:
        return [v.model for s in self._slots.values() for v in s.versions.values() if v.model]

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except (ModelNotFound, ModelNotReady):
            return False
        return True

    def index(self, ready_only: bool = False) -> list[tuple[str, str, str, str]]:
        """(name, version, state, reason) rows, models on disk included (RepositoryIndex)."""
        rows: list[tuple[str, str, str, str]] = []
        names = set(self._slots)
        try:
            names |= set(repository.scan(self._root))
        except ModelLoadError:
            pass
        for name in sorted(names):
            slot = self._slots.get(name)
            if slot is None or (not slot.versions and not slot.reason):
                if not ready_only:
                    rows.append((name, "", UNAVAILABLE, "unloaded"))
                continue
            if not slot.versions:
                if not ready_only:
                    rows.append((name, "", UNAVAILABLE, slot.reason))
                continue
            for version, vs in sorted(slot.versions.items()):
                if ready_only and vs.state != READY:
                    continue
                rows.append((name, str(version), vs.state, vs.reason))
        return rows

    def all_started_ready(self) -> bool:
        """Server readiness: every model we tried to load is READY (Triton's strict mode);
        always true under `--strict-readiness false`, where only serving matters."""
        if not self._settings.strict_readiness:
            return True
        return all(
            vs.state == READY for s in self._slots.values() for vs in s.versions.values()
        ) and not any(s.reason for s in self._slots.values())

    # ---- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        mode = self._settings.model_control_mode
        names = list(repository.scan(self._root))
        if mode == "explicit":
            wanted = self._settings.load_model
            for missing in sorted(set(wanted) - set(names) - {"*"}):
                reason = f"--load-model names '{missing}', which is not in {self._root}"
                LOGGER.error("%s", reason)
                self._slots[missing] = ModelSlot(reason=reason)  # shown in the index, not ready
            names = names if "*" in wanted else [n for n in names if n in wanted]
        results = await asyncio.gather(*(self.load(n) for n in names), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, ModelLoadError):
                LOGGER.error("unexpected load failure", exc_info=result)
        if mode == "poll":
            self._poll_task = asyncio.create_task(self._poll_loop())

    async def start_safely(self) -> None:
        """Start, logging (not raising) models that fail: the others must serve."""
        try:
            await self.start()
        except ModelLoadError:
            pass  # already logged per model and visible in RepositoryIndex

    async def load(self, name: str, config_override: mc.ModelConfig | None = None) -> None:
        """(Re)load a model: new versions come up before old ones go, failures are recorded.

        The load is shielded: a caller that goes away (client deadline, cancelled poll)
        must not leave versions half-loaded or engines loaded but unowned.
        """
        if not repository.is_model_name(name) or not (self._root / name).is_dir():
            raise ModelNotFound(f"failed to load '{name}', no version is available")
        slot = self._slots.setdefault(name, ModelSlot())
        await asyncio.shield(self._load_serialized(name, slot, config_override))

    async def _load_serialized(
        self, name: str, slot: ModelSlot, config_override: mc.ModelConfig | None
    ) -> None:
        try:
            async with slot.lock:
                await self._load_locked(name, slot, config_override)
        finally:
            if self._on_change:
                self._on_change()

    async def _load_locked(
        self, name: str, slot: ModelSlot, config_override: mc.ModelConfig | None
    ) -> None:
        model_dir = self._root / name
        slot.reason = ""
        slot.unloaded = False
        # NOTE: taken first, so poll mode retries a broken model only once its files change
        slot.fingerprint = await asyncio.to_thread(fingerprint, model_dir)
        try:
            config = config_override or await asyncio.to_thread(read_config, model_dir)
            entry = (await asyncio.to_thread(repository.scan, self._root)).get(name)
            if entry is not None and entry.error:
                raise ModelLoadError(entry.error)
            available = entry.versions if entry else ()
            policy = config.version_policy if config else mc.ModelVersionPolicy()
            versions = repository.select_versions(available, policy)
            if not versions:
                raise ModelLoadError(f"no version folder with a model in {model_dir}")
        except ModelLoadError as exc:
            LOGGER.error("model %s failed to load: %s", name, exc)
            if not any(vs.model for vs in slot.versions.values()):
                slot.versions.clear()
                slot.reason = str(exc)
            # else: as Triton, the versions already serving keep serving
            raise
        for v in versions:
            old = slot.versions.get(v)
            if old is None or old.model is None:
                slot.versions[v] = VersionState(LOADING)
        results = await asyncio.gather(
            *(self._load_version(name, model_dir, v, config) for v in versions),
            return_exceptions=True,
        )
        retire = {v for v in slot.versions if v not in versions}
        errors = []
        for v, result in zip(versions, results, strict=True):
            if isinstance(result, BaseException):
                reason = str(result)
                LOGGER.error("model %s version %d failed to load: %s", name, v, reason)
                errors.append(f"version {v} is at UNAVAILABLE state: {reason}")
                old = slot.versions.get(v)
                if old is None or old.model is None:  # a failed reload keeps the serving copy
                    slot.versions[v] = VersionState(UNAVAILABLE, reason)
                continue
            old = slot.versions.get(v)
            slot.versions[v] = VersionState(READY, "", result)
            if old is not None and old.model is not None:
                await self._drain_and_unload(old.model)
        if errors and retire:
            # NOTE: as Triton, a failed (re)load leaves what serves serving: a version folder
            # being copied in (poll mode sees it before its file) must not take the old one down
            LOGGER.warning("model %s: versions %s keep serving until the new ones load",
                           name, sorted(retire))  # fmt: skip
        else:
            await self._retire(slot, retire)
        if errors:
            raise ModelLoadError(f"load failed for model '{name}': " + "; ".join(errors))

    async def _load_version(
        self, name: str, model_dir: Path, version: int, config: mc.ModelConfig | None
    ) -> ServedModel:
        start = time.perf_counter()
        model = await asyncio.to_thread(
            build_model, name, model_dir, version, config, self._settings
        )
        model.load_seconds = time.perf_counter() - start
        try:
            observer = self._observer_factory(name, version) if self._observer_factory else None
            model.start(self._settings.max_queue_size, observer)
        except BaseException:
            await asyncio.to_thread(model.unload)
            raise
        LOGGER.info(
            "loaded %s version %d in %.2fs: engine=%s device=%s; %s",
            name,
            version,
            model.load_seconds,
            model.description.engine,
            model.description.device,
            model.info.get("dispatch_reason", ""),
        )
        return model

    async def _retire(self, slot: ModelSlot, versions: set[int]) -> None:
        for v in sorted(versions):
            vs = slot.versions.pop(v, None)
            if vs is not None and vs.model is not None:
                vs.state = UNLOADING
                await self._drain_and_unload(vs.model)

    async def _drain_and_unload(self, model: ServedModel) -> None:
        if model.batcher is not None:
            await model.batcher.drain(self._settings.shutdown_grace_secs)
        await asyncio.to_thread(model.unload)
        LOGGER.info("unloaded %s version %d", model.name, model.version)

    async def unload(self, name: str) -> None:
        """Unload every version of a model, after its in-flight requests.

        Shielded like `load`: a caller that goes away mid-drain must not leave versions
        popped but their engines loaded, or the model stuck in UNLOADING.
        """
        slot = self._slots.get(name)
        if slot is None:
            if name in await asyncio.to_thread(repository.scan, self._root):
                return
            raise ModelNotFound(unknown_model_message(name))
        await asyncio.shield(self._unload_serialized(slot))

    async def _unload_serialized(self, slot: ModelSlot) -> None:
        try:
            async with slot.lock:
                for vs in slot.versions.values():
                    vs.state = UNLOADING
                await self._retire(slot, set(slot.versions))
                slot.reason = ""
                slot.fingerprint = ()
                slot.unloaded = True
        finally:
            if self._on_change:
                self._on_change()

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.repository_poll_secs)
            try:
                await self.poll_once()
            except Exception:  # a broken repository must not kill the poller
                LOGGER.exception("repository poll failed")

    async def poll_once(self) -> None:
        """Load new or changed models, unload removed ones."""
        on_disk = await asyncio.to_thread(repository.scan, self._root)
        for name in set(self._slots) - set(on_disk):
            LOGGER.info("model %s removed from repository; unloading", name)
            await self.unload(name)
            self._slots.pop(name, None)
        for name, entry in on_disk.items():
            fp = await asyncio.to_thread(fingerprint, entry.path)
            slot = self._slots.get(name)
            if slot is not None and slot.fingerprint == fp:
                continue
            LOGGER.info("model %s changed on disk; (re)loading", name)
            try:
                await self.load(name)
            except ModelLoadError:
                pass  # recorded in the slot and logged

    async def stop(self, grace: float) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        models = self.ready_models()
        await asyncio.gather(*(m.batcher.drain(grace) for m in models if m.batcher is not None))
        # NOTE: an engine whose unload waits for a call still running (the GPU engine takes
        # its lock) must not hold the exit past the grace period: unloads run on daemon
        # threads, given what is left of it (at least half a second, for the normal case)
        unloads = [_on_daemon_thread(m.unload, f"unload-{m.name}") for m in models]
        if unloads:
            finished, pending = await asyncio.wait(
                unloads, timeout=max(deadline - loop.time(), 0.5)
            )
            for f in finished:
                if f.exception() is not None:
                    LOGGER.warning("unload failed at exit: %s", f.exception())
            if pending:
                LOGGER.warning("%d model(s) still unloading at exit", len(pending))
