# Report: one PNG per stage output, flagged for `snakemake --report results/report.html`.
# Every rule reads the stage's own output files, so a figure redraws exactly when they change.
from bidstrain.report import CHECKS_FIGURES, TRAINING_FIGURES

REPORT = f"{RESULTS}/report"
# Average stores by name (task-<task>[_run-<run>]), in cross_subject mode only.
AVERAGES = (
    {
        Path(average_store(*average_key(image))).name.removesuffix(
            "_desc-average_bold.zarr"
        ): average_key(image)
        for image in images("bold")
    }
    if config["average"]["mode"] == "cross_subject"
    else {}
)
EXPERIMENT = config["train"]["experiment"]


# Every figure of the report, in stage order.
REPORT_FIGURES = [
    f"{REPORT}/ingest/coverage.png",
    *(
        f"{REPORT}/normalize/{image.prefix}_desc-zscore_{image.suffix}.png"
        for modality in ("T1w", "bold", "dwi")
        for image in images(modality)
    ),
    *(f"{REPORT}/average/{name}.png" for name in sorted(AVERAGES)),
    *(f"{REPORT}/checks/{name}.png" for name in CHECKS_FIGURES),
    *(f"{REPORT}/train/{EXPERIMENT}/{name}.png" for name in TRAINING_FIGURES),
]


rule report_coverage:
    input:
        MANIFEST,
    output:
        report(
            f"{REPORT}/ingest/coverage.png",
            caption="../report/coverage.rst",
            category="1. Ingestion",
            labels={"figure": "coverage"},
        ),
    log:
        "logs/report/coverage.log",
    conda:
        ENV
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m bidstrain.report coverage --manifest {input:q} --out {output:q} > {log:q} 2>&1"


rule report_normalize:
    input:
        f"{RESULTS}/normalized/{{prefix}}_desc-zscore_{{suffix}}.zarr",
    output:
        report(
            f"{REPORT}/normalize/{{prefix}}_desc-zscore_{{suffix}}.png",
            caption="../report/normalize.rst",
            category="2. Normalization",
            subcategory="{suffix}",
            labels={"image": "{prefix}_{suffix}"},
        ),
    log:
        "logs/report/normalize/{prefix}_{suffix}.log",
    wildcard_constraints:
        suffix="T1w|bold|dwi",
    group:
        "subject"
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        sample_voxels=config["report"]["sample_voxels"],
    shell:
        "python -m bidstrain.report normalize --store {input:q} --out {output:q}"
        " --sample-voxels {params.sample_voxels} > {log:q} 2>&1"


rule report_average:
    input:
        store=lambda wildcards: average_store(*AVERAGES[wildcards.average]),
        subjects=lambda wildcards: [
            normalized_store(image)
            for image in images("bold")
            if average_key(image) == AVERAGES[wildcards.average]
        ],
    output:
        report(
            f"{REPORT}/average/{{average}}.png",
            caption="../report/average.rst",
            category="3. Averaging",
            labels={"average": "{average}"},
        ),
    log:
        "logs/report/average/{average}.log",
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        title=lambda wildcards: wildcards.average.replace("_", " "),
    shell:
        "python -m bidstrain.report average --store {input.store:q} --subject-stores {input.subjects:q}"
        " --title {params.title:q} --out {output:q} > {log:q} 2>&1"


rule report_checks:
    input:
        CHECKS_SUMMARY,
    output:
        scale_table=report(
            f"{REPORT}/checks/scale_table.png",
            caption="../report/scale_table.rst",
            category="4. Checks",
            labels={"figure": "scale table"},
        ),
        summary=report(
            f"{REPORT}/checks/summary.png",
            caption="../report/checks_summary.rst",
            category="4. Checks",
            labels={"figure": "summary"},
        ),
    log:
        "logs/report/checks.log",
    conda:
        ENV
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m bidstrain.report checks --summary {input:q} --scale-table-out {output.scale_table:q}"
        " --summary-out {output.summary:q} > {log:q} 2>&1"


rule report_train:
    input:
        f"{RESULTS}/train/{{experiment}}/metrics.jsonl",
    output:
        **{
            name: report(
                f"{REPORT}/train/{{experiment}}/{name}.png",
                caption=f"../report/train_{name}.rst",
                category="5. Training",
                subcategory="{experiment}",
                labels={"figure": name.replace("_", " ")},
            )
            for name in TRAINING_FIGURES
        },
    log:
        "logs/report/train_{experiment}.log",
    conda:
        ENV
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        clip_grad_norm=config["train"]["clip_grad_norm"],
        out_dir=lambda wildcards: f"{REPORT}/train/{wildcards.experiment}",
    shell:
        "python -m bidstrain.report train --metrics {input:q} --experiment {wildcards.experiment}"
        " --clip-grad-norm {params.clip_grad_norm} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule report:
    input:
        REPORT_FIGURES,
    localrule: True
