"""autodetr: self-configuring 3D organ detection in CT with detection transformers."""

__version__ = "0.1.0"
