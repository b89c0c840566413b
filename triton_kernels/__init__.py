"""Triton kernels for the feature ops between layer calls and for the fast path's fused layers.

Each op has a module holding its torch reference and its public wrapper (``ramp_lerp.py``)
and a kernel module beside it written as the Triton tutorials write them
(``ramp_lerp_kernel.py``), imported on the first Triton launch. ``ops`` gathers the
feature ops the tasks call; the layer kernels (``conv_epilogue``, ``modulate``, ``demod``,
``to_rgb``) serve the fast backend. This package imports nothing from the runtime.
"""
