# Training: one job (rule and target `train`) reading the normalized/averaged stores after
# the checks passed. It resumes from results/train/<experiment>/checkpoints/ when a
# checkpoint of the same run is there (after a SIGTERM/SIGUSR1 it exits 75); checkpoints
# of another run (settings, world size, stores) move to checkpoints-<hash>/ first.
# The job's shell `exec`s the launcher, so a signal to the job reaches the trainer.


rule train:
    input:
        plan=paths.plan_stores(PLAN.experiment),
        # the stores it reads are not inputs: they are the checks' inputs, and the checks
        # summary is rewritten whenever one of them is
        checks=paths.checks_summary(PLAN.experiment),
        # the aligned stimulus stores of train.stimuli that come with the BOLD windows
        stimuli=PLAN.trained_stimulus_stores,
    output:
        model=paths.trained_model(PLAN.experiment),
        model_json=paths.trained_model_description(PLAN.experiment),
        metrics=paths.training_metrics(PLAN.experiment),
    log:
        paths.log("train", PLAN.experiment),
    conda:
        ENV
    threads: CONFIG.resources.train.cpus
    resources:
        **PLAN.train_resources,
        runtime=CONFIG.resources.train.runtime,
        mem_mb=CONFIG.resources.train.mem_mb,
    params:
        # the train section but the job resources, in a file the plan writes, through its
        # hash: a changed setting reruns training, a changed resource nothing
        # (the snapshots of the files this run planned: bidstrain.plan.write_plan)
        settings=SNAPSHOTS[paths.plan_train_settings(PLAN.experiment)],
        settings_digest=PLAN.settings_digest(paths.plan_train_settings(PLAN.experiment)),
        stores=SNAPSHOTS[paths.plan_stores(PLAN.experiment)],
        world_size=PLAN.world_size,
        checkpoints=paths.checkpoints(PLAN.experiment),
    shell:
        "exec > {log:q} 2>&1; exec python -m bidstrain.train.launch --nodes {resources.nodes}"
        " --gpus-per-node {resources.gpus_per_node} -- --settings {params.settings:q}"
        " --stores {params.stores:q} --world-size {params.world_size} --model-out {output.model:q}"
        " --model-json-out {output.model_json:q}"
        " --metrics-out {output.metrics:q} --checkpoint-dir {params.checkpoints:q}"
