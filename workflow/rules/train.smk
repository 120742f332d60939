# Training: one job (rule and target `train`) reading the normalized/averaged stores after
# the checks passed. It resumes from results/train/<experiment>/checkpoints/ when a
# checkpoint of the same training config is there (after a SIGTERM/SIGUSR1 it exits 75).
import json

TRAIN_DIR = f"{RESULTS}/train/{config['train']['experiment']}"
TRAINED_MODEL = f"{TRAIN_DIR}/model.pt"
# Job resources, not training settings: changing them does not rerun training.
TRAIN_RESOURCE_KEYS = ("runtime", "mem_mb", "cpus")


rule train:
    input:
        stores=flatten_stores(training_stores()),
        validation=flatten_stores(validation_stores()),
        checks=CHECKS_SUMMARY,
    output:
        model=TRAINED_MODEL,
        metrics=f"{TRAIN_DIR}/metrics.jsonl",
    log:
        f"logs/train/{config['train']['experiment']}.log",
    conda:
        ENV
    threads: config["train"]["cpus"]
    resources:
        gpu=config["train"]["gpus"],
        runtime=config["train"]["runtime"],
        mem_mb=config["train"]["mem_mb"],
    params:
        launcher=train_launcher,
        settings=json.dumps(
            {k: v for k, v in config["train"].items() if k not in TRAIN_RESOURCE_KEYS},
            sort_keys=True,
        ),
        stores=json.dumps(training_stores()),
        validation=json.dumps(validation_stores()),
        checkpoints=f"{TRAIN_DIR}/checkpoints",
    shell:
        "{params.launcher} --config-json {params.settings:q}"
        " --train-stores-json {params.stores:q} --validation-stores-json {params.validation:q}"
        " --requested-gpus {resources.gpu} --model-out {output.model:q}"
        " --metrics-out {output.metrics:q} --checkpoint-dir {params.checkpoints:q} > {log:q} 2>&1"
