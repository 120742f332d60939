# Sanity checks before any GPU hour: data scale, normalization, BOLD quality, sample and
# batch counts, the learning-rate plan and the initial loss scale (bidstrain.checks).
# With checks.strict a failed check fails this rule; training takes its summary as input.
# Its outputs are the experiment's (results/checks/<experiment>/): a failed check of one
# experiment leaves another's summary, and so its model, alone.


rule checks:
    input:
        # The stores training and validation read, and every subject store behind them,
        # reach the job through the plan's argument file. Inputs: the average stores, and
        # the manifest, whose job takes every normalize table and lists each store's
        # content checksum: a store with new content changes the manifest and so reruns
        # the checks (one edge, not one per subject: every edge costs Snakemake time at
        # cohort scale). The raw images the scale check samples are not inputs either:
        # each is its normalize job's input already.
        arguments=paths.plan_checks_arguments(PLAN.experiment),
        averages=PLAN.average_stores,
        manifest=paths.MANIFEST,
        # the aligned stimulus stores (stimuli.enabled): every one comes from one job
        stimuli=PLAN.checked_stimuli,
    output:
        json=paths.checks_summary(PLAN.experiment),
        tsv=paths.checks_table(PLAN.experiment),
    log:
        paths.log("checks", PLAN.experiment),
    conda:
        ENV
    resources:
        mem_mb=CONFIG.resources.checks.mem_mb,
        runtime=CONFIG.resources.checks.runtime,
    params:
        # Only the config the checks read (Plan.checks_settings, in a file the plan
        # writes), through its hash: changing it reruns the checks (and training);
        # trainer-only keys (train.lr, model size, logging...) rerun training alone.
        # (the snapshots of the files this run planned: bidstrain.plan.write_plan)
        settings=SNAPSHOTS[paths.plan_checks_settings(PLAN.experiment)],
        arguments=SNAPSHOTS[paths.plan_checks_arguments(PLAN.experiment)],
        settings_digest=PLAN.settings_digest(
            paths.plan_checks_settings(PLAN.experiment)
        ),
        copy_dir=paths.checks_copy_dir(PLAN.experiment),
    shell:
        "python -m bidstrain.checks @{params.arguments:q} --manifest {input.manifest:q}"
        " --settings {params.settings:q} --out-json {output.json:q} --out-tsv {output.tsv:q}"
        " --copy-dir {params.copy_dir:q} > {log:q} 2>&1"
