# Normalization: one job per subject (rule normalize_subject). It first validates every
# image header of the subject and writes its ingest record (bidstrain.ingest: an invalid
# image stops the job before any store is written), then streams each image into its
# z-scored Zarr store (bidstrain.normalize); held-out BOLD runs come after the runs whose
# pooled statistics they are normalized with. The job's last output is the table of the
# stores it wrote (results/normalized/sub-<label>/sub-<label>_scans.tsv): later stages
# take the tables as input and read the store paths from the plan. One job per subject,
# not per image or per stage: Snakemake's cost grows with its jobs.


rule normalize_subject:
    input:
        unpack(lambda wildcards: PLAN.job(wildcards.subject).inputs()),
        atlas=PLAN.atlas_files,
    output:
        # a failed job leaves neither (Snakemake removes them), so the next run retries the
        # subject and nothing downstream reads stores of other settings (docs/reruns.md);
        # the stores themselves are written atomically and kept
        ingest=paths.ingest_record("{subject}"),
        table=paths.normalized_table("{subject}"),
    log:
        paths.log("normalize", "sub-{subject}"),
    conda:
        ENV
    # config resources.normalize_subject (two threads: one decompresses the next block
    # while the other z-scores)
    threads: CONFIG.resources.normalize_subject.cpus
    resources:
        mem_mb=CONFIG.resources.normalize_subject.mem_mb,
        runtime=CONFIG.resources.normalize_subject.runtime,
    params:
        # the settings every job reads (config ingest and normalize, in a file the plan
        # writes) and the subject's images (its own file), through their hashes: a changed
        # setting reruns every job, a changed image list, mask or held-out run that
        # subject's job
        # (the snapshots of both files this run planned: bidstrain.plan.write_plan)
        settings=SNAPSHOTS[paths.PLAN_NORMALIZE_SETTINGS],
        settings_digest=PLAN.settings_digest(paths.PLAN_NORMALIZE_SETTINGS),
        spec=lambda wildcards: SNAPSHOTS[PLAN.job(wildcards.subject).spec_file],
        spec_digest=lambda wildcards: PLAN.job(wildcards.subject).spec_digest(),
    shell:
        "python -m bidstrain.normalize --settings {params.settings:q}"
        " --subject {wildcards.subject} --spec {params.spec:q} --ingest {output.ingest:q}"
        " --out-table {output.table:q} > {log:q} 2>&1"


rule normalize:
    input:
        # a function: Snakemake expands this list of every subject's table only when the
        # target is asked for, not at every parse (so do the `report` and `embed` targets)
        lambda wildcards: PLAN.normalized_tables,
    localrule: True
