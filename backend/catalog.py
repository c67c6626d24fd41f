"""What the store holds, as the API sees it: products, versions, manifests and update costs.

``patcher.store.Store`` keeps a sqlite3 connection that belongs to the thread that opened it, so
the catalog opens one Store per worker thread. Manifests and update costs are immutable once
published, so they are cached (bounded LRU).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Generic, TypeVar

from backend.errors import NotFound
from patcher.deltaindex import DeltaIndex
from patcher.errors import PatcherError
from patcher.manifest import Manifest
from patcher.sizing import UpdateCost, install_bytes, update_cost
from patcher.store import Store, VersionRecord


class ManifestForm(StrEnum):
    """The forms a version's signed manifest is published in (``patcher.manifestbin``)."""
    JSON = "json"
    BINARY = "binary"


log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = compute()
        with self._lock:
            self._data[key] = value
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return value


@dataclass(frozen=True, slots=True)
class VersionInfo:
    version_id: str
    seq: int
    created_at: str
    total_size: int
    file_count: int


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    total_size: int
    file_count: int
    install_bytes: int  # what a fresh install downloads


@dataclass(frozen=True, slots=True)
class UpdateInfo:
    from_version: str
    to_version: str
    update_type: str  # delta | full
    download_bytes: int
    delta_bytes: int
    full_bytes: int
    required_disk_bytes: int
    has_delta_index: bool
    # why the store's delta index of this step could not be used (damaged, badly signed): the
    # update is then offered from chunks alone, and the answer says so
    delta_index_error: str | None = None


def choose_update(from_version: str, new: Manifest, cost: UpdateCost | None,
                  has_delta_index: bool) -> UpdateInfo:
    """Pure: the cheaper of a differential (chunk reuse + patches) and a full download."""
    full = install_bytes(new)
    if cost is None:  # the installed version is unknown to the store: only a full install works
        return UpdateInfo(from_version, new.version_id, "full", full, full, full, new.total_size,
                          False)
    delta = cost.download_bytes
    if delta < full:
        return UpdateInfo(from_version, new.version_id, "delta", delta, delta, full,
                          cost.write_bytes, has_delta_index)
    return UpdateInfo(from_version, new.version_id, "full", full, delta, full, new.total_size,
                      has_delta_index)


class Catalog:
    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir
        self._local = threading.local()
        self._manifests: LRU[tuple[str, str], Manifest] = LRU(64)
        self._infos: LRU[tuple[str, str], ManifestInfo] = LRU(4096)
        self._updates: LRU[tuple[str, str, str], UpdateInfo] = LRU(4096)
        self._public_key: str | None = None
        self._broken_deltas: set[tuple[str, str, str]] = set()

    @property
    def store(self) -> Store:
        st: Store | None = getattr(self._local, "store", None)
        if st is None:
            st = Store(self.store_dir)
            self._local.store = st
        return st

    @property
    def public_key_hex(self) -> str:
        if self._public_key is None:
            self._public_key = self.store.public_key_hex
        return self._public_key

    def products(self) -> list[str]:
        return self.store.products()

    def versions(self, product: str) -> list[VersionInfo]:
        return [_vinfo(v) for v in self.store.versions(product)]

    def latest(self, product: str) -> VersionInfo:
        versions = self.versions(product)
        if not versions:
            raise NotFound(f"product {product!r} has no published version",
                           code="VERSION_NOT_FOUND")
        return versions[-1]

    def resolve_version(self, product: str, version: str | None, pointer: str) -> VersionInfo:
        if version is None:
            return self.latest(product)
        for v in self.versions(product):
            if v.version_id == version:
                return v
        raise NotFound(f"product {product!r} has no version {version!r}", code="VERSION_NOT_FOUND",
                       pointer=pointer)

    def manifest(self, product: str, version: str) -> Manifest:
        def load() -> Manifest:
            try:
                return self.store.read_manifest(product, version)
            except PatcherError as exc:
                raise NotFound(f"no manifest for {product} {version}: {exc.message}",
                               code="VERSION_NOT_FOUND") from exc

        return self._manifests.get_or_compute((product, version), load)

    def signed_manifest(self, product: str, version: str, form: ManifestForm = ManifestForm.JSON
                        ) -> tuple[Path, os.stat_result, bytes, ManifestForm]:
        """A version's published manifest file (served as it is, in pieces), its stat (taken
        once: the answer's length), its signature and its form: the binary one when asked for
        and published, else the JSON one."""
        store = self.store
        if form is ManifestForm.BINARY:
            path = store.path(store.manifest_bin_rel(product, version))
            try:
                return (path, *_published(path, store.path(store.manifest_bin_sig_rel(
                    product, version))), ManifestForm.BINARY)
            except OSError:
                # published before the binary form existed (or its files unreadable, which the
                # operator's log names): the JSON one, which every engine reads
                if path.exists():
                    log.warning("the binary manifest of %s %s is unusable: serving its JSON",
                                product, version, exc_info=True)
        path = store.path(store.manifest_rel(product, version))
        try:
            return (path, *_published(path, path.with_suffix(".sig")), ManifestForm.JSON)
        except FileNotFoundError as exc:
            raise NotFound(f"no manifest for {product} {version}",
                           code="VERSION_NOT_FOUND") from exc

    def manifest_info(self, product: str, version: str) -> ManifestInfo:
        def compute() -> ManifestInfo:
            m = self.manifest(product, version)
            return ManifestInfo(m.total_size, len(m.files), install_bytes(m))

        return self._infos.get_or_compute((product, version), compute)

    def has_delta(self, product: str, from_version: str, to_version: str) -> bool:
        """A delta index is published for the step (and was not found damaged)."""
        if (product, from_version, to_version) in self._broken_deltas:
            return False
        return self.store.path(self.store.delta_rel(product, from_version, to_version)).exists()

    def _read_delta(self, product: str, from_version: str,
                    to_version: str) -> tuple[DeltaIndex | None, str | None]:
        """The step's delta index, or None and why it cannot be used. A damaged index in the
        store (bad signature, undecodable, its signature missing) must not fail update checks
        with a 500: patches only save bytes, so the update is offered from chunks, the answer
        carries the reason, and the operator's log names the file."""
        try:
            return self.store.read_delta(product, from_version, to_version), None
        except (PatcherError, OSError) as exc:
            reason = getattr(exc, "message", None) or str(exc)
            log.error("DELTA_INDEX_INVALID: the delta index %s of %s in the store is unusable "
                      "(%s); offering the update from chunks — republish the step",
                      self.store.delta_rel(product, from_version, to_version), product, reason)
            self._broken_deltas.add((product, from_version, to_version))
            return None, f"DELTA_INDEX_INVALID: {reason}"

    def update(self, product: str, from_version: str, to_version: str) -> UpdateInfo:
        def compute() -> UpdateInfo:
            new = self.manifest(product, to_version)
            known = {v.version_id for v in self.versions(product)}
            if from_version not in known:
                return choose_update(from_version, new, None, False)
            old = self.manifest(product, from_version)
            delta, error = self._read_delta(product, from_version, to_version)
            info = choose_update(from_version, new, update_cost(old, new, delta),
                                 delta is not None)
            return dataclasses.replace(info, delta_index_error=error) if error else info

        return self._updates.get_or_compute((product, from_version, to_version), compute)


def _vinfo(v: VersionRecord) -> VersionInfo:
    return VersionInfo(v.version, v.seq, v.created_at, v.total_size, v.file_count)


def _published(path: Path, signature: Path) -> tuple[os.stat_result, bytes]:
    """A published file's stat and its signature; FileNotFoundError unless it is a file."""
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise FileNotFoundError(path)
    return st, signature.read_bytes()
