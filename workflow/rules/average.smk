# Cross-subject averaging (average.mode: cross_subject): one job per task, acquisition and
# run (bidstrain.plan.acquisition), reading that run's store of every subject
# (bidstrain.average), listed in an argument file the plan writes; the inputs are the
# normalize jobs' tables that list those stores. In per_subject mode there is nothing to
# average and the `average` target is an empty no-op.


rule average_bold:
    input:
        members=lambda wildcards: PLAN.average(wildcards.name).members_file,
        tables=lambda wildcards: PLAN.average(wildcards.name).tables,
    output:
        directory(paths.average_store_at("{name}")),
    log:
        paths.log("average", "{name}"),
    wildcard_constraints:
        name=r"task-[a-zA-Z0-9]+(_[a-zA-Z]+-[a-zA-Z0-9]+)*",
    conda:
        ENV
    # Streams blocks of volumes: memory is a few 64 MB blocks whatever the subject count.
    resources:
        mem_mb=1000,
        runtime=lambda wildcards, input: 10 + len(input.tables) // 10,
    params:
        mask=CONFIG.average.mask,
        truncate="--truncate" if CONFIG.average.truncate else "",
        affine_tolerance=CONFIG.average.affine_tolerance,
        tr_tolerance=CONFIG.average.repetition_time_tolerance,
    shell:
        "python -m bidstrain.average @{input.members:q} --out {output:q} --mask {params.mask}"
        " {params.truncate} --affine-tolerance {params.affine_tolerance}"
        " --tr-tolerance {params.tr_tolerance} > {log:q} 2>&1"


rule average:
    input:
        PLAN.average_stores,
    localrule: True
