# Preflight (real models and data only, i.e. without a demo `world`): before the grid starts, check every
# model, dataset, pool and index the configuration names, and fail once with the list of what is missing.
# The task rule, which every later stage follows, waits for its marker. The marker is an `ancient` input
# there, so re-running the preflight after a config edit never reruns finished work by itself.


if not WORLD:

    from synret.preflight import preflight_spec

    localrules:
        preflight,

    rule preflight:
        output:
            "results/preflight.json",
        log:
            "logs/preflight.log",
        params:
            spec=preflight_spec(config),
        conda:
            "../envs/synret.yaml"
        script:
            "../workflow_scripts/preflight.py"
