# Aggregate every cell into results/tables/all.csv and draw accuracy-vs-scale figures.


localrules:
    aggregate,


rule aggregate:
    input:
        cell_metrics(),
    output:
        table="results/tables/all.csv",
        plots=expand("results/plots/{task}.png", task=TASKS),
        summary="results/plots/summary.png",
    log:
        "logs/aggregate.log",
    params:
        tasks=TASKS,
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/aggregate.py"
