"""img2dataset's ``download`` in a process of its own, without the imports it never uses here.

    python -m synret.img2dataset_child KWARGS_JSON

img2dataset's modules import, at their top, torch (through webdataset), wandb (its logger) and
albumentations (its resizer and blurrer): ~7 CPU s per process on a 2-core machine. Its multiprocessing
distributor and its logger are *spawned* processes that import them all over again, so a download with one
worker paid that three times (most of the ~18 CPU s of a demo download job). Run this way instead:

- torch is hidden. webdataset replaces its few torch names with stand-ins of its own when torch is not
  installed (it is written to run without it), and the downloader never makes a tensor.
- wandb and albumentations are deferred: they run on the first use of one of their names, so wandb never with ``enable_wandb=False`` and albumentations only in a worker that resizes.

This module is the main module of the process, so a spawned child imports it again (as ``__mp_main__``)
before it unpickles its work: the same holds in every process of the download. So does the bounded fetch
(``synret.safe_fetch``) that replaces img2dataset's per-URL ``download_image`` here: http(s) only, a total
deadline and a byte cap per URL, limits from the environment that ``synret.fetch.run_img2dataset`` sets.
"""

from __future__ import annotations

import sys

from .imports import defer, hide

hide("torch")
defer("wandb", "albumentations")

from .safe_fetch import install  # noqa: E402 - after hide/defer, which must precede img2dataset's import

install()

if __name__ == "__main__":
    import json

    from img2dataset import download

    download(**json.loads(sys.argv[1]))
