# Resource requests sized from the config (synret.resources): rules call `sized(...)` for mem_mb and
# runtime, which grow with each attempt so that a retried job gets more. Site-specific keys
# (partition, account, --gres) stay in the cluster profile.

from synret.resources import estimate


def sized(key, job):
    """A resources function: ``key`` (mem_mb or runtime) of one job of ``job``, grown per attempt."""

    def get(wildcards, input, attempt):
        return estimate(job, config, dict(wildcards), attempt, input_mb=lambda: input.size_mb)[key]

    return get
