"""Agreement between two augmented views of one crop (AugMix's Jensen-Shannon term, Hendrycks et al.,
ICLR 2020): the network is asked for the same answer whatever stain, scale or camera the augmentation
drew, not only for the right answer on each view separately. Not a registered loss: it is added to
whichever classification loss the run uses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def jensen_shannon(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of JS(p_a, p_b) in nats: 0 when the two views agree, at most log 2."""
    log_a, log_b = F.log_softmax(logits_a.float(), dim=1), F.log_softmax(logits_b.float(), dim=1)
    log_mid = torch.logsumexp(torch.stack([log_a, log_b]), dim=0) - torch.log(torch.tensor(2.0))
    kl_a = F.kl_div(log_mid, log_a, reduction="batchmean", log_target=True)
    kl_b = F.kl_div(log_mid, log_b, reduction="batchmean", log_target=True)
    return 0.5 * (kl_a + kl_b)
