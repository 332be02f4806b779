"""Import-compatible entry points for research code written against mamba_ssm and VMamba.

* :mod:`dhkd_kernels.compat.mamba`: ``selective_scan_fn`` / ``selective_scan_ref`` with mamba_ssm's signature
  and return conventions.
* :mod:`dhkd_kernels.compat.vmamba`: ``cross_scan_fn``, ``cross_merge_fn``, ``selective_scan_fn`` and the
  ``CrossScan`` / ``CrossMerge`` functions with VMamba's signatures and layouts.

Both run on :func:`dhkd_kernels.selective_scan`, so they use the C++ CPU, CUDA or Triton kernels and
support autograd everywhere. Complex A is not supported.
"""
