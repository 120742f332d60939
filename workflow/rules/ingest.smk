# Ingestion: validate every image header of a subject, then list all images in a manifest.


rule ingest_subject:
    output:
        f"{RESULTS}/ingest/sub-{{subject}}.json",
    log:
        "logs/ingest/sub-{subject}.log",
    group:
        "subject"
    conda:
        ENV
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        bids_dir=config["bids_dir"],
        modalities=config["modalities"],
        tasks=config["tasks"],
        tr=config["ingest"],
    shell:
        "python -m bidstrain.ingest subject --bids-dir {params.bids_dir:q} --subject {wildcards.subject}"
        " --modalities {params.modalities} --tasks {params.tasks}"
        " --tr-mismatch {params.tr[repetition_time_mismatch]}"
        " --tr-tolerance {params.tr[repetition_time_tolerance]}"
        " --out {output:q} > {log:q} 2>&1"


MANIFEST = f"{RESULTS}/ingest/manifest.tsv"


rule ingest:
    input:
        expand(ingest_json("{subject}"), subject=SUBJECTS),
    output:
        MANIFEST,
    log:
        "logs/ingest/manifest.log",
    localrule: True
    conda:
        ENV
    shell:
        "python -m bidstrain.ingest manifest {input:q} --out {output:q} > {log:q} 2>&1"
