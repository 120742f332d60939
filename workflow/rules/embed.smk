# Embed: apply the trained model to normalized images (bidstrain.embed). Target `embed`;
# part of `all` only with embed.enabled. The job reads the stores listed in the plan's
# embed.json, with its settings (the embed section, checks.max_scale_ratio, train.seed),
# and writes one embedding store per image and their table; a new model.pt
# (retraining after a changed train.lr, say) reruns it.
SNAPSHOTS.update(write_plan(PLAN.embed_files()))


rule embed_images:
    input:
        model=paths.trained_model(PLAN.experiment),
        model_json=paths.trained_model_description(PLAN.experiment),
        spec=paths.plan_embed(PLAN.experiment),
        tables=PLAN.embed_inputs,
    output:
        paths.embed_table(PLAN.experiment),
    log:
        paths.log("embed", PLAN.experiment),
    conda:
        ENV
    threads: CONFIG.resources.embed_images.cpus
    resources:
        gpu=CONFIG.resources.embed_images.gpus,
        runtime=CONFIG.resources.embed_images.runtime,
        mem_mb=CONFIG.resources.embed_images.mem_mb,
    params:
        # the snapshot of the spec this run planned (bidstrain.plan.write_plan)
        spec=SNAPSHOTS[paths.plan_embed(PLAN.experiment)],
    shell:
        "python -m bidstrain.embed --model {input.model:q} --spec {params.spec:q}"
        " --out-table {output:q} > {log:q} 2>&1"


rule report_embed:
    input:
        table=paths.embed_table(PLAN.experiment),
        metrics=paths.training_metrics(PLAN.experiment),
    output:
        report(
            paths.embed_figure(PLAN.experiment),
            caption="../report/embed.rst",
            category="6. Embedding",
            labels={"experiment": PLAN.experiment},
        ),
    log:
        paths.log("report", f"embed_{PLAN.experiment}"),
    conda:
        ENV
    resources:
        mem_mb=CONFIG.resources.report.mem_mb,
        runtime=CONFIG.resources.report.runtime,
    params:
        experiment=PLAN.experiment,
    shell:
        "python -m bidstrain.report embed --table {input.table:q} --metrics {input.metrics:q}"
        " --experiment {params.experiment} --out {output:q} > {log:q} 2>&1"


rule embed:
    input:
        lambda wildcards: PLAN.embed_targets,
    localrule: True
