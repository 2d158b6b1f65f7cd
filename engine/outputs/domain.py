"""Say when the model does not apply to a slide, in a sentence a morphologist cannot miss.

The model flags each crop that looks unlike its training data (``unknown``, set by its card's
out-of-distribution threshold, which flags a known share ``rate`` of the model's own validation
crops, 5% by default). A slide from the lab the model was trained in shows about that share; a
slide whose unknown share is far above it — more than a binomial draw at ``rate`` would give, one
time in a thousand — is from somewhere the counts may not hold. Not an error: the slide is still
counted, its exit status unchanged, but the warning stands in differential.csv, run.json, the
report and on the console.
"""

from __future__ import annotations

import math

from scipy.special import bdtrc  # binomial upper tail; scipy.stats costs seconds to import

SIGNIFICANCE = 1e-3


def domain_warning(n_unknown: int, n_classified: int, rate: float | None) -> str:
    """The warning sentence for a slide, or "" when its unknown share is what the model expects."""
    if rate is None or not n_classified or not math.isfinite(rate):
        return ""
    if n_unknown == 0 or bdtrc(n_unknown - 1, n_classified, rate) >= SIGNIFICANCE:  # P(X >= n_unknown)
        return ""
    share = 100.0 * n_unknown / n_classified
    return (f"{share:.0f}% of this slide's crops ({n_unknown} of {n_classified}) look unlike the model's training "
            f"images, where {100 * rate:.0f}% would be expected: the counts may not hold for this lab's slides. "
            "Check the slide by eye, or fine-tune the model on local labels (bmengine finetune).")
