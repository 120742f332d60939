# Validation (target `validate`): one job reads the header and sidecars of every image the
# normalize jobs would read, never their voxel data (and with a parcellation the atlas,
# onto every BOLD run's grid), and reports every problem of the dataset at once
# (bidstrain.ingest.validate): results/validate/problems.txt (readable) and problems.tsv
# (one row per problem: severity, subject, file, problem, fix). The job fails when any
# problem is an error. It has no output, so it runs whenever it is asked for; the
# reports are its logs, which Snakemake keeps when the job fails.
write_if_changed(PLAN.validate_files())


rule validate:
    input:
        paths.PLAN_VALIDATE_ARGS,
    log:
        job=paths.log("validate", "validate"),
        table=paths.VALIDATE_TABLE,
        text=paths.VALIDATE_TEXT,
    localrule: True
    conda:
        ENV
    params:
        bids_dir=CONFIG.bids_dir,
        # config ingest, as the job types it (bidstrain.config.load_section)
        settings=json.dumps(to_plain(CONFIG.ingest), sort_keys=True),
    shell:
        "python -m bidstrain.ingest validate @{input:q} --bids-dir {params.bids_dir:q}"
        " --settings {params.settings:q}"
        " --out-tsv {log.table:q} --out-text {log.text:q} > {log.job:q} 2>&1"
