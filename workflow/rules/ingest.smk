# Ingestion: each subject's normalize job (rule normalize_subject, normalize.smk) first
# validates every image header of the subject and writes its ingest record; rule ingest
# lists every image of every record in the manifest, with the store the job wrote and
# its content checksum. One job per subject, not two: Snakemake's cost grows with its
# jobs. So `snakemake ingest` normalizes every subject too.


rule ingest:
    input:
        # the records and the tables reach the job through the plan's argument file; the
        # tables, each its normalize job's last output, stand for both (a table records
        # each store's content checksum: it changes when a store's content does, and
        # only then)
        arguments=paths.PLAN_INGEST_ARGS,
        tables=PLAN.normalized_tables,
    output:
        paths.MANIFEST,
    log:
        paths.log("ingest", "manifest"),
    localrule: True
    conda:
        ENV
    params:
        # subjects whose normalize job failed (no table beside an existing manifest): a
        # changed list reruns this job, and so retries them (docs/reruns.md)
        retry=lambda wildcards: PLAN.subjects_to_retry(),
        # the snapshot of the argument file this run planned (bidstrain.plan.write_plan)
        arguments=SNAPSHOTS[paths.PLAN_INGEST_ARGS],
    shell:
        "python -m bidstrain.ingest manifest @{params.arguments:q} --out {output:q}"
        " > {log:q} 2>&1"
