"""One slide (one patient sample) as a versioned Zarr v3 store: ``<slide_id>.zarr``.

Crops keep their original encoded bytes (a JPEG is never re-encoded) in one flat ``uint8`` array
with ``int64`` offsets, so any Zarr v3 reader can read them (zarr's variable-length dtypes have no
v3 spec) and hundreds of crops share a 4 MiB chunk (one crop per chunk caps reads near 1k/s).
The format is specified in docs/slide-store.md; bump ``FORMAT_VERSION`` on any change a v1
reader would misread.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:
    from bmengine.engine.store.limits import InputLimits

FORMAT = "bmengine.slide-store"
FORMAT_VERSION = 1
ATTRS_KEY = "bmengine_slide_store"
BYTES_CHUNK = 4 << 20  # 4 MiB of encoded crops per chunk: ~250 PBC JPEGs
CELLS_CHUNK = 1 << 17  # per-cell arrays (offsets, labels, formats): 131,072 cells per chunk
UNKNOWN_LABEL = -1
MAX_CELLS = 5_000_000  # one slide; a real marrow slide holds hundreds to a few thousand crops
MAX_SOURCE_BYTES_PER_CELL = 4096  # source names are paths, not payloads

FORMAT_CODES = {"unknown": 0, "jpeg": 1, "png": 2, "tiff": 3}
FORMAT_NAMES = {code: name for name, code in FORMAT_CODES.items()}
_MAGIC = {
    b"\xff\xd8\xff": FORMAT_CODES["jpeg"],
    b"\x89PNG\r\n\x1a\n": FORMAT_CODES["png"],
    b"II*\x00": FORMAT_CODES["tiff"],
    b"MM\x00*": FORMAT_CODES["tiff"],
}
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# array path -> (dtype, what it holds); every v1 store has all of them
ARRAYS = {
    "crops/bytes": ("uint8", "encoded crops, back to back"),
    "crops/offsets": ("int64", "crop i is bytes[offsets[i]:offsets[i+1]]"),
    "cells/label": ("int16", "index into label_names, -1 unknown"),
    "cells/format": ("uint8", "0 unknown, 1 jpeg, 2 png, 3 tiff"),
    "cells/source/bytes": ("uint8", "UTF-8 source names, back to back"),
    "cells/source/offsets": ("int64", "source i is bytes[offsets[i]:offsets[i+1]]"),
}
# Written by bmengine >= 0.2 and checked whenever present; v1 stores written before still read.
OPTIONAL_ARRAYS = {
    "crops/crc32": ("uint32", "CRC-32 of crop i's bytes, checked as each crop is read"),
}
CELL_ARRAYS = ("crops/offsets", "cells/label", "cells/format", "cells/source/offsets", "cells/source/bytes")


def crop_crc32(data: bytes | memoryview) -> int:
    """The per-crop checksum stored at ingest (zlib's CRC-32: ~1 GB/s, in the standard library)."""
    return zlib.crc32(data) & 0xFFFFFFFF


class SlideStoreError(ValueError):
    """A slide store that cannot be written or read as the format says."""


class StoreDamagedError(SlideStoreError):
    """Bytes on disk are not what ingest wrote: a missing, truncated or altered chunk."""


def _cells_digest(group) -> str:
    """sha256 over every per-cell array, so a lost or altered chunk of them is noticed on open
    (zarr reads a missing chunk as its fill value, which would silently relabel cells)."""
    h = hashlib.sha256()
    for name in CELL_ARRAYS + tuple(OPTIONAL_ARRAYS):
        if name in group:
            h.update(name.encode())
            h.update(np.ascontiguousarray(group[name][:]).tobytes())
    return h.hexdigest()


def _chunk_problems(path: Path, group) -> list[str]:
    """Chunk files of the store's arrays that are missing or empty (local stores only)."""
    found = []
    for name in ("crops/bytes",) + CELL_ARRAYS + tuple(OPTIONAL_ARRAYS):
        if name not in group:
            continue
        arr = group[name]
        n_chunks = -(-arr.shape[0] // arr.chunks[0]) if arr.shape[0] else 0
        for c in range(n_chunks):
            chunk = path / name / "c" / str(c)
            if not chunk.is_file():
                found.append(f"{name}/c/{c} is missing")
            elif chunk.stat().st_size == 0:
                found.append(f"{name}/c/{c} is empty")
    return found


def sniff_format(data: bytes | memoryview) -> int:
    """Image format code from the magic bytes (extensions lie; bytes do not)."""
    head = bytes(data[:8])
    return next((code for magic, code in _MAGIC.items() if head.startswith(magic)), FORMAT_CODES["unknown"])


def is_safe_id(name: str) -> bool:
    """Slide ids become file and folder names: letters, digits, ``._-``, not starting with a dot."""
    return isinstance(name, str) and _SAFE_ID.fullmatch(name) is not None


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _blosc():
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")


def _write_array(group, name: str, data: np.ndarray, chunk: int, compressed: bool = True) -> None:
    arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(chunk,),
                             compressors=_blosc() if compressed else None, fill_value=0,
                             config={"write_empty_chunks": True})  # every chunk on disk: a missing one is damage
    if data.size:
        arr[:] = data


class SlideStoreWriter:
    """Streams crops into ``<path>.partial``; :meth:`commit` renames it into place.

    Crop bytes go to disk chunk by chunk (memory stays flat on huge slides); the small per-cell
    columns stay in memory until the end. Used as a context manager it commits on success and
    removes the partial store on any exception, so a half-written store never looks finished.
    """

    def __init__(self, path: Path, slide_id: str, *, patient_id: str | None = None,
                 provenance: dict | None = None):
        import zarr

        self.path = Path(path)
        if not is_safe_id(slide_id):
            raise SlideStoreError(f"slide id {slide_id!r} is not a safe name "
                                  "(letters, digits, '.', '_', '-', starting with a letter or digit)")
        if self.path.suffix != ".zarr":
            raise SlideStoreError(f"{self.path}: a slide store's directory name must end in .zarr")
        try:
            json.dumps(provenance or {})
        except (TypeError, ValueError) as exc:
            raise SlideStoreError(f"{self.path}: provenance must be JSON-serialisable: {exc}") from None
        self.slide_id, self.provenance = slide_id, dict(provenance or {})
        self.patient_id = None if patient_id is None else str(patient_id)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.partial.exists():  # left by a writer that was killed
            shutil.rmtree(self.partial)
        self._group = zarr.create_group(str(self.partial), zarr_format=3)
        self._bytes = self._group.create_array("crops/bytes", shape=(0,), dtype="uint8",
                                               chunks=(BYTES_CHUNK,), compressors=None, fill_value=0,
                                               config={"write_empty_chunks": True})
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._lengths: list[int] = []
        self._crcs: list[int] = []
        self._formats: list[int] = []
        self._labels: list[str | None] = []
        self._sources: list[bytes] = []
        self._digest = hashlib.sha256()
        self._done = False

    def add(self, crop: bytes, source: str, label: str | None = None) -> None:
        """Append one crop exactly as given (its bytes are never decoded or re-encoded)."""
        try:
            data = crop if type(crop) is bytes else bytes(memoryview(crop))
        except TypeError:
            raise SlideStoreError(f"crop {len(self._lengths)} ({source!r}) is {type(crop).__name__}, "
                                  "not bytes") from None
        self._digest.update(data)
        self._pending.append(data)
        self._pending_size += len(data)
        self._lengths.append(len(data))
        self._crcs.append(crop_crc32(data))
        self._formats.append(sniff_format(data))
        self._labels.append(None if label is None else str(label))
        self._sources.append(str(source).encode("utf-8", "backslashreplace"))
        if self._pending_size >= BYTES_CHUNK:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        """Append whole chunks only (so no chunk is ever rewritten); the tail waits for the end."""
        buf = b"".join(self._pending)
        cut = len(buf) if final else len(buf) // BYTES_CHUNK * BYTES_CHUNK
        if cut:
            self._bytes.append(np.frombuffer(buf, dtype=np.uint8, count=cut))
        rest = buf[cut:]
        self._pending, self._pending_size = ([rest] if rest else []), len(rest)

    def commit(self) -> Path:
        """Write the per-cell columns and attributes, then move the store into place."""
        if self._done:
            raise SlideStoreError(f"{self.path}: this writer has already committed or aborted")
        self._flush(final=True)
        n = len(self._lengths)
        label_names = sorted({name for name in self._labels if name is not None})
        if len(label_names) > np.iinfo(np.int16).max:
            raise SlideStoreError(f"{self.path}: {len(label_names)} label names exceed the int16 label column")
        index = {name: i for i, name in enumerate(label_names)}
        labels = np.array([UNKNOWN_LABEL if x is None else index[x] for x in self._labels], dtype=np.int16)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(self._lengths, out=offsets[1:])
        src_offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(s) for s in self._sources], out=src_offsets[1:])
        g = self._group
        _write_array(g, "crops/offsets", offsets, CELLS_CHUNK)
        _write_array(g, "cells/label", labels, CELLS_CHUNK)
        _write_array(g, "cells/format", np.array(self._formats, dtype=np.uint8), CELLS_CHUNK)
        _write_array(g, "cells/source/bytes", np.frombuffer(b"".join(self._sources), dtype=np.uint8),
                     BYTES_CHUNK)
        _write_array(g, "cells/source/offsets", src_offsets, CELLS_CHUNK)
        _write_array(g, "crops/crc32", np.array(self._crcs, dtype=np.uint32), CELLS_CHUNK)
        from bmengine.engine import __version__

        g.attrs[ATTRS_KEY] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "slide_id": self.slide_id,
            "patient_id": self.patient_id,
            "n_cells": n,
            "label_names": label_names,
            "crops_sha256": self._digest.hexdigest(),
            "cells_sha256": _cells_digest(g),
            "created_by": {"software": "bmengine", "version": __version__},
            "created_at": _utc_now(),
            "provenance": self.provenance,
        }
        self._replace_target()
        self._done = True
        return self.path

    def _replace_target(self) -> None:
        """Directories cannot be swapped atomically: move the old aside, move the new in, drop the old."""
        if not (self.path.exists() or self.path.is_symlink()):
            os.replace(self.partial, self.path)
            return
        old = self.path.with_name(f"{self.path.name}.replaced-{os.getpid()}")
        os.replace(self.path, old)
        os.replace(self.partial, self.path)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()

    def abort(self) -> None:
        """Drop the partial store; the existing store (if any) is untouched and nothing commits."""
        self._done = True
        if self.partial.exists():
            shutil.rmtree(self.partial, ignore_errors=True)

    def __enter__(self) -> "SlideStoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise


def write_slide_store(
    path: Path,
    slide_id: str,
    crops: Iterable[bytes],
    sources: Sequence[str],
    *,
    patient_id: str | None = None,
    labels: Sequence[str | None] | None = None,
    provenance: dict | None = None,
) -> Path:
    """Write one slide store atomically; an existing store at ``path`` is replaced only at the end.

    ``crops`` may be any iterable (a generator reading files keeps memory flat); ``sources`` and
    ``labels`` (optional, ``None`` = unknown) must have one entry per crop.
    """
    if labels is not None and len(labels) != len(sources):
        raise SlideStoreError(f"{path}: {len(labels)} labels for {len(sources)} sources")
    if hasattr(crops, "__len__") and len(crops) != len(sources):  # type: ignore[arg-type]
        raise SlideStoreError(f"{path}: {len(crops)} crops for {len(sources)} sources")  # type: ignore[arg-type]
    with SlideStoreWriter(path, slide_id, patient_id=patient_id, provenance=provenance) as writer:
        n = 0
        for n, crop in enumerate(crops, start=1):
            if n > len(sources):
                raise SlideStoreError(f"{path}: more crops than the {len(sources)} sources")
            writer.add(crop, sources[n - 1], None if labels is None else labels[n - 1])
        if n != len(sources):
            raise SlideStoreError(f"{path}: {n} crops for {len(sources)} sources")
    return Path(path)


def _check_offsets(path: Path, name: str, offsets: np.ndarray, n: int, data_len: int) -> None:
    """Offsets must start at 0, never decrease, and end exactly at the data length."""
    if offsets.shape[0] != n + 1:
        raise SlideStoreError(f"{path}: {name} has {offsets.shape[0]} entries, expected n_cells + 1 = {n + 1}")
    if offsets[0] != 0:
        raise SlideStoreError(f"{path}: {name} starts at {offsets[0]}, expected 0")
    falling = np.diff(offsets) < 0
    if falling.any():
        raise SlideStoreError(f"{path}: {name} decreases at cell {int(np.argmax(falling))}")
    if offsets[-1] != data_len:
        raise SlideStoreError(f"{path}: {name} ends at {offsets[-1]} but the byte array holds {data_len} bytes")


class SlideStore:
    """A validated, read-only slide store. Open with :meth:`open`; every reader may share one."""

    def __init__(self, path: Path, group, attrs: dict[str, Any], offsets: np.ndarray):
        self._path, self._group, self._attrs, self._offsets = path, group, attrs, offsets
        self._bytes = group["crops/bytes"]
        self._direct = _ChunkFiles.for_array(path / "crops" / "bytes")
        self._crcs = group["crops/crc32"][:] if "crops/crc32" in group else None
        self._hash: str | None = None

    @classmethod
    def open(cls, path: Path) -> "SlideStore":
        """Open and validate; any deviation from the format raises :class:`SlideStoreError`."""
        import zarr

        path = Path(path)
        if not path.is_dir():
            raise SlideStoreError(f"{path}: not a directory (a slide store is a <slide_id>.zarr folder)")
        if not (path / "zarr.json").is_file():
            raise SlideStoreError(f"{path}: missing zarr.json (not a Zarr v3 store; build stores with `bmengine ingest`)")
        _check_store_files(path)
        try:
            group = zarr.open_group(str(path), mode="r", zarr_format=3)
        except Exception as exc:
            raise SlideStoreError(f"{path}: zarr.json cannot be read as a Zarr v3 group: {exc}") from None
        attrs = group.attrs.get(ATTRS_KEY)
        if not isinstance(attrs, dict) or attrs.get("format") != FORMAT:
            raise SlideStoreError(f"{path}: not a bmengine slide store (root attribute {ATTRS_KEY!r} "
                                  f"with format {FORMAT!r} is missing)")
        version = attrs.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise SlideStoreError(f"{path}: invalid format_version {version!r}")
        if version > FORMAT_VERSION:
            raise SlideStoreError(f"{path}: format_version {version} is newer than this bmengine reads "
                                  f"(up to {FORMAT_VERSION}); upgrade bmengine")
        offsets = _validate(path, group, attrs)
        return cls(path, group, attrs, offsets)

    # -- identity -------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

    @property
    def slide_id(self) -> str:
        return self._attrs["slide_id"]

    @property
    def patient_id(self) -> str | None:
        return self._attrs.get("patient_id")

    @property
    def n_cells(self) -> int:
        return int(self._attrs["n_cells"])

    @property
    def label_names(self) -> list[str]:
        return list(self._attrs["label_names"])

    @property
    def provenance(self) -> dict:
        return dict(self._attrs.get("provenance") or {})

    @property
    def attrs(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._attrs))  # a deep copy: callers cannot change the store's view

    # -- data -----------------------------------------------------------------------------
    def read_crops(self, start: int, stop: int) -> list[bytes]:
        """Crops ``[start, stop)`` as their encoded bytes: one contiguous read, then slicing."""
        if not 0 <= start <= stop <= self.n_cells:
            raise IndexError(f"{self._path}: crops [{start}, {stop}) outside [0, {self.n_cells})")
        offs = self._offsets[start : stop + 1]
        lo = int(offs[0])
        raw = self._read_range(lo, int(offs[-1]))
        rel = (offs - lo).tolist()
        return [raw[a:b] for a, b in zip(rel, rel[1:])]

    @property
    def has_crop_checksums(self) -> bool:
        """Stores written by bmengine >= 0.2 carry a CRC-32 per crop; older ones only ``crops_sha256``."""
        return self._crcs is not None

    def read_crops_checked(self, start: int, stop: int,
                           limits: "InputLimits | None" = None) -> tuple[list[bytes | None], list[str | None]]:
        """Crops ``[start, stop)`` with a reason for each one that must not be used.

        A crop above the size cap is not read at all; a crop whose bytes fail their ingest-time
        CRC-32 is reported as store damage (the store changed on disk after ingest). A missing or
        truncated chunk raises :class:`StoreDamagedError`, naming the chunk: the slide cannot be trusted.
        """
        from bmengine.engine.store.limits import InputLimits

        limits = limits or InputLimits()
        if not 0 <= start <= stop <= self.n_cells:
            raise IndexError(f"{self._path}: crops [{start}, {stop}) outside [0, {self.n_cells})")
        offs = self._offsets[start : stop + 1]
        n = stop - start
        errors: list[str | None] = [limits.check_size(int(k)) for k in np.diff(offs)]
        crops: list[bytes | None] = [None] * n
        i = 0
        while i < n:  # one contiguous read per run of crops within the size cap
            if errors[i] is not None:
                i += 1
                continue
            j = i
            while j < n and errors[j] is None:
                j += 1
            lo = int(offs[i])
            raw = self._read_range(lo, int(offs[j]))
            rel = (offs[i : j + 1] - lo).tolist()
            crops[i:j] = [raw[a:b] for a, b in zip(rel, rel[1:])]
            i = j
        if self._crcs is not None:
            for k, crop in enumerate(crops):
                if crop is not None and crop_crc32(crop) != int(self._crcs[start + k]):
                    crops[k] = None
                    errors[k] = (f"store damaged: crop bytes differ from the checksum written at ingest "
                                 f"({self._path.name}, cell {start + k}); re-ingest this slide")
        return crops, errors

    def _read_range(self, lo: int, hi: int) -> bytes:
        if self._direct is not None:
            return self._direct.read(lo, hi)
        return self._bytes[lo:hi].tobytes()

    def labels(self) -> list[str | None]:
        names = self.label_names
        return [names[i] if i >= 0 else None for i in self._group["cells/label"][:].tolist()]

    def sources(self) -> list[str]:
        raw = self._group["cells/source/bytes"][:].tobytes()
        rel = self._group["cells/source/offsets"][:].tolist()
        return [raw[a:b].decode("utf-8", "replace") for a, b in zip(rel, rel[1:])]

    def formats(self) -> np.ndarray:
        return self._group["cells/format"][:]

    def content_hash(self) -> str:
        """Changes whenever what a run would compute could change; reads no crop bytes.

        Covers the attributes (minus when/what wrote them), the crop offsets, the labels and the
        sources; the crop bytes enter through ``crops_sha256``, taken over every crop at write
        time. Re-ingesting identical crops keeps the hash, so resume still skips the slide.
        """
        if self._hash is None:
            h = hashlib.sha256()
            ident = {k: v for k, v in self._attrs.items() if k not in ("created_at", "created_by")}
            h.update(json.dumps(ident, sort_keys=True).encode())
            if "cells_sha256" in ident and "crops_sha256" in ident:
                # the ingest-time fingerprints already cover every per-cell array (checked on open)
                # and every crop byte: nothing more to read, however many slides the archive holds
                self._hash = h.hexdigest()
                return self._hash
            h.update(self._offsets.tobytes())
            for name in ("cells/label", "cells/format", "cells/source/offsets", "cells/source/bytes"):
                h.update(np.ascontiguousarray(self._group[name][:]).tobytes())
            self._hash = h.hexdigest()
        return self._hash

    def verify(self) -> None:
        """Re-hash every crop byte against ``crops_sha256`` (slow: reads the whole store)."""
        h = hashlib.sha256()
        total = int(self._offsets[-1])
        for lo in range(0, total, BYTES_CHUNK):
            h.update(self._bytes[lo : min(lo + BYTES_CHUNK, total)].tobytes())  # through zarr, on purpose
        if h.hexdigest() != self._attrs["crops_sha256"]:
            raise SlideStoreError(f"{self._path}: crop bytes do not match crops_sha256 (changed after writing)")

    def __repr__(self) -> str:
        return f"SlideStore({str(self._path)!r}, slide_id={self.slide_id!r}, n_cells={self.n_cells})"


class _ChunkFiles:
    """Reads a byte range straight from the chunk files of an uncompressed local uint8 array.

    Zarr reads whole chunks (a 256-crop batch straddling two 4 MiB chunks reads 8 MiB); with the
    plain ``bytes`` codec a chunk file *is* the data, so a seek + read of just the range is exact
    and ~3x faster. Used only when the array's metadata says so; otherwise zarr reads.
    """

    def __init__(self, folder: Path, chunk: int, separator: str):
        self.folder, self.chunk, self.separator = folder, chunk, separator

    @classmethod
    def for_array(cls, folder: Path) -> "_ChunkFiles | None":
        try:
            meta = json.loads((folder / "zarr.json").read_text())
            codecs = [c.get("name") for c in meta.get("codecs", [])]
            encoding = meta["chunk_key_encoding"]
            grid = meta["chunk_grid"]
            plain = (codecs == ["bytes"] and meta.get("data_type") == "uint8" and not meta.get("storage_transformers")
                     and encoding.get("name") == "default" and grid.get("name") == "regular")
            if not plain:
                return None
            separator = encoding.get("configuration", {}).get("separator", "/")
            return cls(folder, int(grid["configuration"]["chunk_shape"][0]), separator)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
            return None

    def read(self, lo: int, hi: int) -> bytes:
        parts = []
        for c in range(lo // self.chunk, (hi + self.chunk - 1) // self.chunk):
            first, last = max(lo, c * self.chunk) - c * self.chunk, min(hi, (c + 1) * self.chunk) - c * self.chunk
            try:
                with open(self.folder / f"c{self.separator}{c}", "rb") as f:
                    f.seek(first)
                    part = f.read(last - first)
            except FileNotFoundError:  # every chunk of crop bytes is written: a missing one is damage
                raise StoreDamagedError(f"{self.folder.parent.parent}: store damaged: chunk file "
                                        f"crops/bytes/c{self.separator}{c} is missing; re-ingest this slide") from None
            if len(part) != last - first:
                raise StoreDamagedError(f"{self.folder.parent.parent}: store damaged: chunk file "
                                        f"crops/bytes/c{self.separator}{c} is truncated (holds {first + len(part)} "
                                        f"bytes, needs {last}); re-ingest this slide")
            parts.append(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)


_REQUIRED_ATTRS = {
    "slide_id": str, "n_cells": int, "label_names": list, "crops_sha256": str, "provenance": dict,
}


def _validate(path: Path, group, attrs: dict) -> np.ndarray:
    """Check attributes, arrays, dtypes, lengths and offsets; return the crop offsets."""
    for key, kind in _REQUIRED_ATTRS.items():
        if not isinstance(attrs.get(key), kind) or isinstance(attrs.get(key), bool):
            raise SlideStoreError(f"{path}: attribute {key!r} is missing or not a {kind.__name__} "
                                  f"(got {attrs.get(key)!r})")
    if not is_safe_id(attrs["slide_id"]):
        raise SlideStoreError(f"{path}: slide_id {attrs['slide_id']!r} is not a safe name")
    if attrs.get("patient_id") is not None and not isinstance(attrs["patient_id"], str):
        raise SlideStoreError(f"{path}: patient_id must be a string or null, got {attrs['patient_id']!r}")
    n = attrs["n_cells"]
    if n < 0:
        raise SlideStoreError(f"{path}: n_cells is negative ({n})")
    if n > MAX_CELLS:
        raise SlideStoreError(f"{path}: n_cells {n:,} is above the {MAX_CELLS:,} a slide store may hold")
    arrays = {}
    for name, (dtype, _) in ARRAYS.items():
        try:
            arr = group[name]
        except KeyError:
            raise SlideStoreError(f"{path}: array {name!r} is missing") from None
        if not hasattr(arr, "dtype") or arr.ndim != 1 or arr.dtype != np.dtype(dtype):
            raise SlideStoreError(f"{path}: {name!r} must be a 1-d {dtype} array, "
                                  f"found {getattr(arr, 'dtype', 'a group')}")
        arrays[name] = arr
    if arrays["cells/source/bytes"].shape[0] > MAX_SOURCE_BYTES_PER_CELL * max(n, 1):
        raise SlideStoreError(f"{path}: 'cells/source/bytes' holds {arrays['cells/source/bytes'].shape[0]:,} bytes, "
                              f"more than {MAX_SOURCE_BYTES_PER_CELL} per cell")
    for name in ("cells/label", "cells/format"):
        if arrays[name].shape[0] != n:
            raise SlideStoreError(f"{path}: {name!r} has {arrays[name].shape[0]} entries but n_cells is {n}")
    for name in ("crops/offsets", "cells/source/offsets"):  # checked before reading: shapes can lie hugely
        if arrays[name].shape[0] != n + 1:
            raise SlideStoreError(f"{path}: '{name}' has {arrays[name].shape[0]} entries, expected n_cells + 1 = {n + 1}")
    for name, (dtype, _) in OPTIONAL_ARRAYS.items():
        if name in group:
            arr = group[name]
            if not hasattr(arr, "dtype") or arr.ndim != 1 or arr.dtype != np.dtype(dtype) or arr.shape[0] != n:
                raise SlideStoreError(f"{path}: {name!r} must be a 1-d {dtype} array of n_cells = {n} entries")
    try:
        offsets = arrays["crops/offsets"][:]
        labels = arrays["cells/label"][:]
        src_offsets = arrays["cells/source/offsets"][:]
    except Exception as exc:  # a chunk that is missing or cannot be decompressed
        raise SlideStoreError(f"{path}: cannot read the per-cell arrays: {exc}") from None
    _check_offsets(path, "'crops/offsets'", offsets, n, arrays["crops/bytes"].shape[0])
    _check_offsets(path, "'cells/source/offsets'", src_offsets, n, arrays["cells/source/bytes"].shape[0])
    _check_cells_digest(path, group, attrs)  # before labels are judged: "damaged" is the better answer
    n_names = len(attrs["label_names"])
    bad = (labels < UNKNOWN_LABEL) | (labels >= n_names)
    if bad.any():
        i = int(np.argmax(bad))
        raise SlideStoreError(f"{path}: 'cells/label' of cell {i} is {labels[i]}, outside -1..{n_names - 1} "
                              f"({n_names} label_names)")
    return offsets


MAX_METADATA_BYTES = 16 << 20  # a zarr.json; bmengine's are a few KB


def _check_store_files(path: Path) -> None:
    """Only plain files and folders inside a store: a FIFO would hang zarr's reads, a link to a device
    would feed it endless bytes, and a huge zarr.json would be parsed whole. bmengine writes none."""
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            entry = Path(dirpath) / name
            mode = entry.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise SlideStoreError(f"{path}: {entry.relative_to(path)} is a link; a slide store holds only "
                                      "plain files (copy the store instead of linking into it)")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise SlideStoreError(f"{path}: {entry.relative_to(path)} is not a regular file")
            if name == "zarr.json" and entry.stat().st_size > MAX_METADATA_BYTES:
                raise SlideStoreError(f"{path}: {entry.relative_to(path)} is {entry.stat().st_size:,} bytes, "
                                      f"above the {MAX_METADATA_BYTES:,} a store's metadata may take")


def _check_cells_digest(path: Path, group, attrs: dict) -> None:
    """Stores that record ``cells_sha256`` (bmengine >= 0.2) must still match it."""
    expected = attrs.get("cells_sha256")
    if expected is None:
        return
    if _cells_digest(group) != expected:
        where = "; ".join(_chunk_problems(path, group)) or "a per-cell chunk was altered"
        raise StoreDamagedError(f"{path}: store damaged: per-cell arrays differ from what ingest wrote ({where}); "
                                "re-ingest this slide")


def find_slide_stores(root: Path) -> list[Path]:
    """Every ``*.zarr`` entry directly in ``root``, sorted by name.

    Entries without the format marker are returned too, so the caller opens each and records the
    ones that fail: a store that is not a slide store is reported, never silently skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise SlideStoreError(f"slide folder {root} does not exist or is not a folder")
    found = sorted((p for p in root.iterdir() if p.name.endswith(".zarr")), key=lambda p: p.name)
    if not found:
        raise SlideStoreError(f"no slide stores (*.zarr) in {root}; build them with `bmengine ingest`")
    return found
