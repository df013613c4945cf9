# Aggregate every cell into the results tables (per cell, per point across seeds, paired
# comparisons, exchange rates against the real source, all with bootstrap intervals) and draw the
# accuracy-vs-scale figures (and, with a mixed source, accuracy against the mix).


localrules:
    aggregate,


MIXED_TASK_PLOTS = any(s.kind == "mixed" for s in CELL_SOURCES.values())


rule aggregate:
    input:
        metrics=cell_files("metrics.json"),
        predictions=cell_files("predictions.parquet"),
        tasks=expand("results/tasks/{task}/task.json", task=TASKS),
        curated=expand("results/curated/{task}/{source}/summary.json", task=TASKS, source=CURATED),
    output:
        table="results/tables/all.csv",
        summary_table="results/tables/summary.csv",
        paired_table="results/tables/paired.csv",
        exchange_table="results/tables/exchange.csv",
        sources_table="results/tables/sources.csv",
        plots=expand("results/plots/{task}.png", task=TASKS),
        mix_plots=expand("results/plots/{task}_mix.png", task=TASKS if MIXED_TASK_PLOTS else []),
        summary="results/plots/summary.png",
        paired="results/plots/paired.png",
    log:
        "logs/aggregate.log",
    params:
        grid=aggregate_grid(config),
        bootstrap=canonical(config["aggregate"].get("bootstrap", {})),
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/aggregate.py"
