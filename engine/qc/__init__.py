"""Image quality checks on decoded crops; a flagged crop is kept in the cells table but not counted."""

from bmengine.engine.qc.seams import SEAM_THRESHOLD, garbled_flags, seam_scores

__all__ = ["SEAM_THRESHOLD", "garbled_flags", "seam_scores"]
