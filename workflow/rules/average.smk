# Cross-subject averaging (average.mode: cross_subject): one job per task, acquisition and
# run (bidstrain.plan.acquisition), reading that run's store of every subject
# (bidstrain.average), listed in an argument file the plan writes. The input that stands
# for those stores is the manifest, one edge instead of one per member (every edge costs
# Snakemake time at cohort scale, and members grow as subjects x runs): its job takes
# every normalize table and lists each store's content checksum, so an average waits for
# every normalize job and reruns after any of them changes a store's content, also one
# of a subject without this run. In per_subject mode there is nothing to average and the
# `average` target is an empty no-op.


rule average_bold:
    input:
        members=lambda wildcards: PLAN.average(wildcards.name).members_file,
        manifest=paths.MANIFEST,
    output:
        # with a parcellation the job also averages the runs' parcel stores
        **(
            {
                "parcels": directory(
                    paths.average_parcel_store_at("{name}", PLAN.atlas.name)
                )
            }
            if PLAN.atlas
            else {}
        ),
        store=directory(paths.average_store_at("{name}")),
    log:
        paths.log("average", "{name}"),
    wildcard_constraints:
        name=r"task-[a-zA-Z0-9]+(_[a-zA-Z]+-[a-zA-Z0-9]+)*",
    conda:
        ENV
    # config resources.average_bold: streams blocks of volumes, so memory is a few 64 MB
    # blocks whatever the subject count; the time grows with the members
    resources:
        mem_mb=CONFIG.resources.average_bold.mem_mb,
        runtime=lambda wildcards: PLAN.average_runtime(wildcards.name),
    params:
        # config average, as the job types it (bidstrain.config.load_section)
        settings=json.dumps(to_plain(CONFIG.average), sort_keys=True),
        # the snapshot of the member list this run planned (bidstrain.plan.write_plan)
        members=lambda wildcards: SNAPSHOTS[PLAN.average(wildcards.name).members_file],
    shell:
        "python -m bidstrain.average @{params.members:q} --out {output.store:q}"
        " --settings {params.settings:q} > {log:q} 2>&1"


rule average:
    input:
        PLAN.average_outputs,
    localrule: True
