"""Procedural abdominal CT phantom, written as an nnU-Net v2 raw dataset (`autodetr_make_phantom`)."""
from autodetr.phantom.anatomy import CLASS_NAMES
from autodetr.phantom.generator import PhantomCase, case_grid, generate_case, make_phantom_dataset, write_case

__all__ = ["CLASS_NAMES", "PhantomCase", "case_grid", "generate_case", "make_phantom_dataset", "write_case"]
