"""Data collection: sources manifest, readers, cleaning, dataset build, corpus recipes.

    from goushi.data import load_manifest, add_source, build_dataset, BuildOptions, CleanOptions
"""

from goushi.data.build import BuildOptions, build_dataset
from goushi.data.clean import CleanOptions
from goushi.data.sources import Source, add_source, load_manifest

__all__ = ["BuildOptions", "CleanOptions", "Source", "add_source", "build_dataset", "load_manifest"]
