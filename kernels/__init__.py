"""Custom GPU kernels (Triton), each beside a NumPy reference it is tested against with
``TRITON_INTERPRET=1`` on the CPU (tests/test_triton_kernels.py).

- ``garbled_profiles``: the per-row and per-boundary profiles every QC check reads, computed on the
  GPU batch, so only a few numbers per crop (not the QC images) cross to the host;
- ``hue_normalize``: hue mapping + centre crop + normalisation in one pass, to fp16 NCHW.

Importing this package needs neither Triton nor torch; calling a kernel does.
"""

#: kernel name -> what it does (``bmengine doctor`` lists them)
KERNELS = {
    "garbled_profiles": "QC profiles of the resized uint8 batch (engine/qc) on the GPU",
    "hue_normalize": "hue mapping + centre crop + normalise to fp16 NCHW in one pass",
}
