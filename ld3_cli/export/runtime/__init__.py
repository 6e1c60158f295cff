"""The torch-only files ``ld3 export`` copies next to ``schedule.json`` (read them as files, not as ld3 code).

* ``ld3_sampler.py``: the runner of an export (every solver ld3 exports), one network evaluation at a time;
* ``ld3_kdiffusion.py``: it with k-diffusion's sampler signature (``sample_ld3``);
* ``ld3_diffusers.py``: it as a diffusers scheduler (``LD3Scheduler``);
* ``comfyui_nodes.py``: the ComfyUI node pack (written as ``comfyui_ld3/__init__.py``).

None of them imports ``ld3_cli``: they are tested here against ld3's own :class:`~ld3_cli.solvers.sampler.Sampler`
and shipped as they are (:func:`runtime_source`).
"""
from __future__ import annotations

from pathlib import Path

FILES = ("ld3_sampler.py", "ld3_kdiffusion.py", "ld3_diffusers.py", "comfyui_nodes.py")


def runtime_source(name: str) -> str:
    """The text of runtime file ``name`` (one of :data:`FILES`)."""
    if name not in FILES:
        raise KeyError(f"unknown runtime file {name!r}; one of {FILES}")
    return (Path(__file__).with_name(name)).read_text()
