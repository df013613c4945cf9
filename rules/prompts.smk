# Prompts: the generator's prompt table and the retrieval queries of each task. Separate rules, so
# that editing the generator's prompts never reruns retrieval and vice versa. A task whose prompts
# come from a language model (prompts.llm) gets the same job as a GPU job of its own size.

LLM_TASKS = [task for task in TASKS if stage_settings(config, "prompts", task).get("llm")]


rule generator_prompts:
    wildcard_constraints:
        task=one_of([task for task in TASKS if task not in LLM_TASKS]),
    input:
        unpack(caption_files),
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


use rule generator_prompts as generator_prompts_llm with:
    wildcard_constraints:
        task=one_of(LLM_TASKS),
    threads: 2
    resources:
        gpu=1,
        mem_mb=sized("mem_mb", "generator_prompts_llm"),
        runtime=sized("runtime", "generator_prompts_llm"),


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
