"""Triton kernels for the feature ops between layer calls and for the fast path's fused layers.

Each op has a module holding its torch reference and its public wrapper (``ramp_lerp.py``)
and a kernel module beside it written as the Triton tutorials write them
(``ramp_lerp_kernel.py``), imported on the first Triton launch. ``ops`` gathers the
feature ops the tasks call; the layer kernels (``conv_epilogue``, ``modulate``, ``demod``,
``to_rgb``) serve the fast backend, and ``packaged_ops`` registers them as
``torch.library.triton_op``s for the CUDA AOTI packages. This package imports nothing from the runtime.
"""
