"""Nerfstudio glue: dataparser, dataset, model and checkpoint safety. Imports nerfstudio."""
