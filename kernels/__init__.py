"""Custom GPU kernels (Triton), each beside a NumPy/PyTorch reference it is tested against with
``TRITON_INTERPRET=1`` on the CPU. None is needed yet: the first candidate is the garbled-crop
seam score of ``bmengine.engine.qc``, so that QC runs on the GPU batch without a copy to the host.
"""
