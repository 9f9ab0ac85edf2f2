"""Deployable students: integer export and integer inference.

    python -m acs_jax.export --workdir=RUN --out=student.npz

File format and guarantees: docs/export.md. The command's functions live in
`acs_jax.export.tool` (imported on demand: it loads the data pipeline).
"""
from acs_jax.export.exporter import export_variables, trace_layers
from acs_jax.export.format import (FORMAT, FORMAT_VERSION, ExportError,
                                   pack_codes, read_export, unpack_codes,
                                   write_export)
from acs_jax.export.int_forward import (act_codes, int_conv, int_dense,
                                        make_forward, prepare)

__all__ = [
    "ExportError", "FORMAT", "FORMAT_VERSION", "act_codes", "export_variables",
    "int_conv", "int_dense", "make_forward", "pack_codes", "prepare",
    "read_export", "trace_layers", "unpack_codes", "write_export",
]
