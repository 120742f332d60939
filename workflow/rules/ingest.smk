# Ingestion: validate every image header of a subject, then list all images in a manifest.


rule ingest_subject:
    output:
        paths.ingest_record("{subject}"),
    log:
        paths.log("ingest", "sub-{subject}"),
    conda:
        ENV
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        bids_dir=CONFIG.bids_dir,
        modalities=CONFIG.modalities,
        tasks=CONFIG.tasks,
        tr_mismatch=CONFIG.ingest.repetition_time_mismatch,
        tr_tolerance=CONFIG.ingest.repetition_time_tolerance,
        selection=PLAN.selection_flags,
    shell:
        "python -m bidstrain.ingest subject --bids-dir {params.bids_dir:q} --subject {wildcards.subject}"
        " --modalities {params.modalities} --tasks {params.tasks}"
        " --tr-mismatch {params.tr_mismatch} --tr-tolerance {params.tr_tolerance} {params.selection}"
        " --out {output:q} > {log:q} 2>&1"


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
