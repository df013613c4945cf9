# Prompts: the generator's prompt table and the retrieval queries of each task. Two rules, so that
# editing the generator's prompts never reruns retrieval and vice versa.


rule generator_prompts:
    input:
        task="results/tasks/{task}/task.json",
    output:
        "results/prompts/{task}/generator.parquet",
    log:
        "logs/prompts/{task}.generator.log",
    params:
        prompts=settings_of("prompts"),
        shard_size=shard_size_of,
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/generator_prompts.py"


rule retrieval_queries:
    input:
        task="results/tasks/{task}/task.json",
    output:
        "results/prompts/{task}/queries.parquet",
    log:
        "logs/prompts/{task}.queries.log",
    params:
        substring=lambda wc: {k: v for k, v in retrieval_setting("substring")(wc).items() if k != "enabled"},
    conda:
        "../envs/synret.yaml"
    script:
        "../workflow_scripts/retrieval_queries.py"
