"""Nerfstudio glue: dataparser, dataset, model and checkpoint safety. Imports nerfstudio."""

from unisem_ns.ns import startup  # noqa: F401  (a cheaper Nerfstudio start-up; see its docstring)
