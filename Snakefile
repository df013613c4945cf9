# Synthetic vs retrieved training images: the whole comparison as one workflow.
#
#   snakemake --cores 8 results/tables/all.csv
#
# Stages, one file each in rules/, data flowing one way:
#   world      (demo only) pool + images served over HTTP, tiny CLIP, tiny SD pipeline, kNN index, datasets
#   preflight  (real data only) every model, dataset, pool and index the config names  results/preflight.json
#   tasks      class names, templates, split manifests            results/tasks/{task}/
#   prompts    generator prompts and retrieval queries            results/prompts/{task}/
#   synthetic  generated webdataset shards + manifests, per generator   results/{generator}/{task}/ (synthetic, ...)
#   img2img    a curated source's images regenerated (optional)   results/<img2img source>/{task}/
#   retrieval  kNN + substring hits, img2dataset download         results/retrieval/{task}/
#              (and a random source's untargeted pool sample)     results/random/{task}/
#   curate     CLIP-score filter, eval-set dedup, per source      results/curated/{task}/{source}/
#   finetune   one cell per (task, source, size, seed)            results/cells/{task}/{source}/{size}/seed{seed}/
#              size: n<images>, or k<per class> / kall for the task's own training images (source real)
#   aggregate  the tables and the figures                         results/tables/*.csv, results/plots/
#   report     data-quality panel, sample images, compute         results/quality/, results/report/,
#              (`snakemake --report report.html` shows them all)   results/tables/{quality,compute}*.csv
# The sources (synthetic, more generators, retrieved, random, real, mixed) are defined in synret.sources.
# Logs mirror the results under logs/, Snakemake benchmark records under results/benchmarks/.

import os

from snakemake.utils import min_version

min_version("9.21.1")


# the default config sits next to this file, so that `--directory elsewhere` still finds it
configfile: os.path.join(workflow.basedir, "config.yaml")


include: "rules/common.smk"
include: "rules/resources.smk"
include: "rules/world.smk"
include: "rules/preflight.smk"
include: "rules/tasks.smk"
include: "rules/prompts.smk"
include: "rules/synthetic.smk"
include: "rules/img2img.smk"
include: "rules/retrieval.smk"
include: "rules/curate.smk"
include: "rules/finetune.smk"
include: "rules/aggregate.smk"
include: "rules/report.smk"


# `snakemake --report report.html`: one self-contained HTML page of the tables, figures, training
# images and data-quality panel (captions in report/)
report: "report/workflow.rst"


# one run per working directory: a second one that would execute jobs stops here with a message
# naming the first (synret.workflow.hold_run_lock); dry runs and --report are not held back
onstart:
    hold_run_lock()


# short torch jobs run in a fork server that imported the libraries once (synret.jobserver); it
# exits when the run does, or when idle
onsuccess:
    stop_job_server()


onerror:
    stop_job_server()


rule all:
    default_target: True
    input:
        rules.aggregate.output,
        rules.quality_table.output,
        rules.compute_accounting.output,
        expand(rules.sample_grid.output, task=TASKS),
        rules.table_pages.output,
