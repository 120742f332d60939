# Ingestion: each subject's normalize job (rule normalize_subject, normalize.smk) first
# validates every image header of the subject and writes its ingest record; rule ingest
# lists every image of every record in the manifest. One job per subject, not two:
# Snakemake's cost grows with its jobs. So `snakemake ingest` normalizes every subject too.


rule ingest:
    input:
        arguments=paths.PLAN_INGEST_ARGS,
        records=[paths.ingest_record(subject) for subject in PLAN.subjects],
    output:
        paths.MANIFEST,
    log:
        paths.log("ingest", "manifest"),
    localrule: True
    conda:
        ENV
    shell:
        "python -m bidstrain.ingest manifest @{input.arguments:q} --out {output:q} > {log:q} 2>&1"
