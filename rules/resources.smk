# Resource requests sized from the config (synret.resources): rules call `sized(...)` for mem_mb and
# runtime, which grow with each attempt so that a retried job gets more. Site-specific keys
# (partition, account, --gres) stay in the cluster profile.

from synret.resources import cell_threads, curate_threads, estimate, parquet_rows


def sized(key, job):
    """A resources function: ``key`` (mem_mb or runtime) of one job of ``job``, grown per attempt, for the
    threads the job gets (its data-loader workers come out of them). Curation counts its candidates from
    the source's manifests once they exist (before, from the config: see synret.resources.curate_work)."""

    def get(wildcards, input, threads, attempt):
        manifests = input.get("manifests") if hasattr(input, "get") else None
        return estimate(job, config, dict(wildcards), attempt, input_mb=lambda: input.size_mb, threads=threads,
                        manifest_rows=lambda: parquet_rows(manifests) if manifests else None)[key]

    return get
