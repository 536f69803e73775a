"""unisem_ns: semantic 3D Gaussian splatting methods as a Nerfstudio plugin.

The core (``unisem_ns.render``, ``unisem_ns.data``, ``unisem_ns.metrics``) imports without
nerfstudio; the Nerfstudio glue lives in ``unisem_ns.ns`` and is loaded by the entry points.
"""

__version__ = "0.1.0"
