# Sanity checks before any GPU hour: data scale, normalization, BOLD quality, sample and
# batch counts, the learning-rate plan and the initial loss scale (bidstrain.checks).
# With checks.strict a failed check fails this rule; training takes its summary as input.
import json

CHECKED_TRAIN_KEYS = (
    "batch_size batching gpus epochs grad_accum_steps warmup_steps min_lr_ratio shapes "
    "seed loss"
).split()


CHECKS_SUMMARY = f"{RESULTS}/checks/summary.json"


rule checks:
    input:
        training=flatten_stores(training_stores()),
        validation=flatten_stores(validation_stores()),
        # every subject store of the selected images, those behind the averages too
        subjects=[
            normalized_store(im) for m in config["modalities"] for im in images(m)
        ],
        raw=[str(im.path) for m in config["modalities"] for im in images(m)],
        manifest=MANIFEST,
    output:
        json=CHECKS_SUMMARY,
        tsv=f"{RESULTS}/checks/summary.tsv",
    log:
        "logs/checks/checks.log",
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        # Only the config the checks read: changing it reruns the checks (and training);
        # trainer-only keys (train.lr, model size, logging...) rerun training alone.
        config=json.dumps(
            {
                "checks": config["checks"],
                "train": {key: config["train"][key] for key in CHECKED_TRAIN_KEYS},
                "normalize": {"ddof": config["normalize"]["ddof"]},
            }
        ),
        copy_dir="logs/checks",
    shell:
        "python -m bidstrain.checks --training {input.training:q}"
        " --validation {input.validation:q} --subject-stores {input.subjects:q}"
        " --manifest {input.manifest:q} --config {params.config:q}"
        " --out-json {output.json:q} --out-tsv {output.tsv:q}"
        " --copy-dir {params.copy_dir:q} > {log:q} 2>&1"
