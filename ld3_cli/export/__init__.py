"""Write a schedule for other samplers: JSON, diffusers, k-diffusion and ComfyUI (``ld3 export``).

One module per format; :class:`ExportSchedule` carries the schedule and its context, and
:func:`write_export` writes the chosen formats.  See docs/export.md.
"""
from .comfyui_out import comfyui_json, comfyui_text, parse_comfyui_text
from .diffusers_out import diffusers_snippet, integer_timesteps, karras_ramp, vp_beta_config
from .json_out import load_schedule_json, schedule_json
from .kdiffusion_out import kdiffusion_snippet, parse_tensor_literal
from .record import ExportSchedule, decimal_text, py_float
from .writer import FILES, FORMATS, export_texts, parse_formats, write_export

__all__ = ["ExportSchedule", "FILES", "FORMATS", "comfyui_json", "comfyui_text", "decimal_text", "diffusers_snippet",
           "export_texts", "integer_timesteps", "karras_ramp", "kdiffusion_snippet", "load_schedule_json",
           "parse_comfyui_text", "parse_formats", "parse_tensor_literal", "py_float", "schedule_json",
           "vp_beta_config", "write_export"]
