"""Slide stores: one Zarr v3 directory per slide holding the original crop bytes (docs/slide-store.md)."""

from bmengine.engine.store.slide_store import (
    FORMAT,
    FORMAT_CODES,
    FORMAT_VERSION,
    SlideStore,
    SlideStoreError,
    SlideStoreWriter,
    find_slide_stores,
    is_safe_id,
    sniff_format,
    write_slide_store,
)

__all__ = [
    "FORMAT",
    "FORMAT_CODES",
    "FORMAT_VERSION",
    "SlideStore",
    "SlideStoreError",
    "SlideStoreWriter",
    "find_slide_stores",
    "is_safe_id",
    "sniff_format",
    "write_slide_store",
]
