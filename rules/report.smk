# What the cells trained on and what it cost, for `snakemake --report`: the data-quality panel of each
# curated set (label fidelity, diversity, distance to the test images, CLIP scores, what was dropped),
# per task a grid of sample images of every source beside test images, and the compute behind each
# source's data and each cell (from the jobs' benchmark records). synret.quality, synret.compute.

localrules:
    quality_table,
    sample_grid,
    compute_accounting,
    table_pages,


rule data_quality:
    input:
        unpack(source_images),
        curated="results/curated/{task}/{source}/manifest.parquet",
        curated_summary="results/curated/{task}/{source}/summary.json",
        task="results/tasks/{task}/task.json",
        train="results/tasks/{task}/train.parquet",
        test="results/tasks/{task}/test.parquet",
        model=clip_model_input(),
        pool=lambda wc: pool_parts() if world_truth_of(config, wc.task) else [],
    output:
        quality="results/quality/{task}/{source}/quality.json",
        samples="results/quality/{task}/{source}/samples.parquet",
    log:
        "logs/quality/{task}/{source}.log",
    benchmark:
        "results/benchmarks/quality/{task}/{source}.tsv"
    params:
        report=report_settings,
        clip=clip_params(),
        source=source_kind,
        truth=world_truth_params,
        url_column=pool_columns(config)["url"],
    threads: lambda wc: curate_threads(config, wc.task)
    resources:
        gpu=1,
        mem_mb=sized("mem_mb", "data_quality"),  # it reads no more images than the curation did
        runtime=sized("runtime", "data_quality"),
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/data_quality.py"


rule quality_table:
    input:
        quality=expand("results/quality/{task}/{source}/quality.json", task=TASKS, source=CURATED),
        summary="results/tables/summary.csv",
    output:
        table=report(
            "results/tables/quality.csv",
            caption="../report/quality_table.rst",
            category="2. Data quality",
            labels={"name": "data quality per task and source (CSV)"},
        ),
        plot=report(
            "results/plots/quality.png",
            caption="../report/quality_plot.rst",
            category="2. Data quality",
            labels={"name": "data quality against accuracy"},
        ),
    log:
        "logs/quality/table.log",
    params:
        styles=source_styles(),
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/quality_table.py"


rule sample_grid:
    input:
        samples=expand("results/quality/{{task}}/{source}/samples.parquet", source=CURATED),
        task="results/tasks/{task}/task.json",
        test="results/tasks/{task}/test.parquet",
    output:
        report(
            "results/report/{task}/samples.png",
            caption="../report/samples.rst",
            category="3. Training images",
            subcategory="{task}",
            labels={"name": "sample images of every source", "task": "{task}"},
        ),
    log:
        "logs/report/{task}.samples.log",
    params:
        report=report_settings,
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/sample_grid.py"


rule compute_accounting:
    input:
        table="results/tables/all.csv",
        curated=expand("results/curated/{task}/{source}/summary.json", task=TASKS, source=CURATED),
    output:
        data=report(
            "results/tables/compute_data.csv",
            caption="../report/compute_data.rst",
            category="4. Compute",
            labels={"name": "data compute per source (CSV)"},
        ),
        cells=report(
            "results/tables/compute.csv",
            caption="../report/compute_cells.rst",
            category="4. Compute",
            labels={"name": "compute per cell (CSV)"},
        ),
        plot=report(
            "results/plots/compute.png",
            caption="../report/compute_plot.rst",
            category="4. Compute",
            labels={"name": "accuracy against compute"},
        ),
    log:
        "logs/report/compute.log",
    params:
        plan=canonical(data_plan(config, TASKS, len(pool_parts()))),
        tasks=TASKS,
        styles=source_styles(),
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/compute_accounting.py"


rule table_pages:
    input:
        summary="results/tables/summary.csv",
        paired="results/tables/paired.csv",
        quality="results/tables/quality.csv",
        sources="results/tables/sources.csv",
        compute_data="results/tables/compute_data.csv",
        compute="results/tables/compute.csv",
    output:
        results=report(
            "results/report/tables/results.html",
            caption="../report/table_pages.rst",
            category="1. Results",
            labels={"name": "tables: accuracy per point, paired differences"},
        ),
        quality=report(
            "results/report/tables/data_quality.html",
            caption="../report/table_pages.rst",
            category="2. Data quality",
            labels={"name": "tables: the data-quality panel, curation per source"},
        ),
        compute=report(
            "results/report/tables/compute.html",
            caption="../report/table_pages.rst",
            category="4. Compute",
            labels={"name": "tables: compute per source and stage, per point"},
        ),
    log:
        "logs/report/tables.log",
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/table_pages.py"
