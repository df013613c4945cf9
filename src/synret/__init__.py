"""synret: synthetic versus retrieved training images, compared end to end.

The package holds all logic of the workflow; `rules/*.smk` declare the stages and
`workflow_scripts/*.py` are thin adapters that call into these modules.
"""

__version__ = "0.1.0"
