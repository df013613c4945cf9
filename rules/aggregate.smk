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
        table=report("results/tables/all.csv", caption="../report/all_table.rst", category="1. Results",
                     labels={"name": "every cell (CSV)"}),
        summary_table=report("results/tables/summary.csv", caption="../report/summary_table.rst",
                             category="1. Results", labels={"name": "per point, over seeds (CSV)"}),
        paired_table=report("results/tables/paired.csv", caption="../report/paired_table.rst",
                            category="1. Results", labels={"name": "paired differences (CSV)"}),
        exchange_table=report("results/tables/exchange.csv", caption="../report/exchange_table.rst",
                              category="1. Results", labels={"name": "exchange rates against real images (CSV)"}),
        sources_table=report("results/tables/sources.csv", caption="../report/sources_table.rst",
                             category="2. Data quality", labels={"name": "curation per source (CSV)"}),
        plots=expand("results/plots/{task}.png", task=TASKS),
        mix_plots=expand("results/plots/{task}_mix.png", task=TASKS if MIXED_TASK_PLOTS else []),
        summary=report("results/plots/summary.png", caption="../report/summary_plot.rst", category="1. Results",
                       labels={"name": "accuracy against training images, all tasks"}),
        paired=report("results/plots/paired.png", caption="../report/paired_plot.rst", category="1. Results",
                      labels={"name": "paired differences, per task and scale"}),
        clip_benchmark=directory("results/clip_benchmark"),  # every cell's results as clip_benchmark eval writes them
        eval_set_plots=[f"results/plots/eval_sets/{task}/{name}.png" for task in TASKS for name in eval_sets_of(config, task)],
    log:
        "logs/aggregate.log",
    params:
        grid=aggregate_grid(config),
        bootstrap=canonical(config["aggregate"].get("bootstrap", {})),
        clip=canonical({k: config["clip"].get(k) for k in ("model", "pretrained")}),
        eval_sets=canonical({task: list(eval_sets_of(config, task)) for task in TASKS}),  # each task's extra sets
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/aggregate.py"
