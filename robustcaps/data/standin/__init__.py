"""The rendered stand-in for smallNORB: 50 objects (`shapes`, `figures`, `vehicles`) built from meshes,
shot in a studio (`scene`) by our rasteriser (`raster`) on smallNORB's viewpoint grid (`render`)."""

from robustcaps.data.standin.render import default_data_root, render_dataset

__all__ = ["default_data_root", "render_dataset"]
