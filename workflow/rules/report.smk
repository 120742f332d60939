# Report: one PNG per stage output, flagged for `snakemake --report results/report.html`.
# Every rule reads the stage's own output files, so a figure redraws exactly when they change.
import shlex

from bidstrain.report import TRAINING_FIGURES


rule report_coverage:
    input:
        paths.MANIFEST,
    output:
        report(
            paths.coverage_figure(),
            caption="../report/coverage.rst",
            category="1. Ingestion",
            labels={"figure": "coverage"},
        ),
    log:
        paths.log("report", "coverage"),
    conda:
        ENV
    resources:
        mem_mb=CONFIG.resources.report.mem_mb,
        runtime=CONFIG.resources.report.runtime,
    shell:
        "python -m bidstrain.report coverage --manifest {input:q} --out {output:q} > {log:q} 2>&1"


# One job per group of subjects, not per subject (every job costs Snakemake time at cohort
# scale): a subject's group is fixed by its label (bidstrain.plan.figure_group_of), so a
# new subject redraws only its group's figures. The job reads its subjects' tables from
# a file (a command line must not grow with the subjects); they are its inputs too, so a
# changed table redraws its group.
rule report_normalize:
    input:
        tables=lambda wildcards: PLAN.figure_group(wildcards.group).tables,
        arguments=lambda wildcards: PLAN.figure_group(wildcards.group).tables_file,
    output:
        report(
            directory(paths.normalize_figures("{group}")),
            # each subject's figures in its folder, labelled as one figure job per
            # subject labelled them (the subject is in the file name)
            patterns=["sub-{subject,[a-zA-Z0-9]+}/{path}_desc-zscore_{suffix}.png"],
            caption="../report/normalize.rst",
            category="2. Normalization",
            subcategory="{suffix}",
            labels={"image": "{path}_{suffix}"},
        ),
    log:
        paths.log("report", "normalize/group-{group}"),
    wildcard_constraints:
        group=r"[0-9]+",
    conda:
        ENV
    resources:
        mem_mb=CONFIG.resources.report_normalize.mem_mb,
        runtime=lambda wildcards: PLAN.figure_runtime(wildcards.group),
    params:
        # config report, as the job types it (bidstrain.config.load_section)
        settings=json.dumps(to_plain(CONFIG.report), sort_keys=True),
        # the snapshot of the table list this run planned (bidstrain.plan.write_plan)
        arguments=lambda wildcards: SNAPSHOTS[
            PLAN.figure_group(wildcards.group).tables_file
        ],
    shell:
        "python -m bidstrain.report normalize --tables @{params.arguments:q}"
        " --out-dir {output:q} --settings {params.settings:q} > {log:q} 2>&1"


rule report_average:
    input:
        store=paths.average_store_at("{name}"),
        # the subject stores are not inputs: the average store is rewritten whenever one
        # of them is
        members=lambda wildcards: PLAN.average(wildcards.name).stores_file,
    output:
        report(
            paths.average_figure("{name}"),
            caption="../report/average.rst",
            category="3. Averaging",
            labels={"average": "{name}"},
        ),
    log:
        paths.log("report", "average/{name}"),
    wildcard_constraints:
        name=r"task-[a-zA-Z0-9]+(_[a-zA-Z]+-[a-zA-Z0-9]+)*",
    conda:
        ENV
    resources:
        mem_mb=CONFIG.resources.report_average.mem_mb,
        runtime=CONFIG.resources.report_average.runtime,
    params:
        title=lambda wildcards: wildcards.name.replace("_", " "),
        # the snapshot of the store list this run planned (bidstrain.plan.write_plan)
        members=lambda wildcards: SNAPSHOTS[PLAN.average(wildcards.name).stores_file],
    shell:
        "python -m bidstrain.report average --store {input.store:q}"
        " --subject-stores @{params.members:q} --title {params.title:q} --out {output:q}"
        " > {log:q} 2>&1"


# The stimulus features of an average's run beside its averaged BOLD (stimuli.enabled).
rule report_stimuli:
    input:
        bold=paths.average_store_at("{name}"),
        aligned=lambda wildcards: list(
            PLAN.aligned_average_stimuli[wildcards.name].values()
        ),
    output:
        report(
            paths.stimulus_figure("{name}"),
            caption="../report/stimuli.rst",
            category="3. Averaging",
            labels={"stimulus": "{name}"},
        ),
    log:
        paths.log("report", "stimuli/{name}"),
    wildcard_constraints:
        name=r"task-[a-zA-Z0-9]+(_[a-zA-Z]+-[a-zA-Z0-9]+)*",
    conda:
        ENV
    resources:
        mem_mb=CONFIG.resources.report_average.mem_mb,
        runtime=CONFIG.resources.report_average.runtime,
    params:
        title=lambda wildcards: f"stimulus and averaged BOLD, {wildcards.name.replace('_', ' ')}",
    shell:
        "python -m bidstrain.report stimuli --bold {input.bold:q} --aligned {input.aligned:q}"
        " --title {params.title:q} --out {output:q} > {log:q} 2>&1"


rule report_checks:
    input:
        paths.checks_summary(PLAN.experiment),
    output:
        scale_table=report(
            paths.checks_figure(PLAN.experiment, "scale_table"),
            caption="../report/scale_table.rst",
            category="4. Checks",
            labels={"experiment": PLAN.experiment, "figure": "scale table"},
        ),
        summary=report(
            paths.checks_figure(PLAN.experiment, "summary"),
            caption="../report/checks_summary.rst",
            category="4. Checks",
            labels={"experiment": PLAN.experiment, "figure": "summary"},
        ),
    log:
        paths.log("report", f"checks_{PLAN.experiment}"),
    conda:
        ENV
    resources:
        mem_mb=CONFIG.resources.report.mem_mb,
        runtime=CONFIG.resources.report.runtime,
    shell:
        "python -m bidstrain.report checks --summary {input:q} --scale-table-out {output.scale_table:q}"
        " --summary-out {output.summary:q} > {log:q} 2>&1"


rule report_train:
    input:
        paths.training_metrics("{experiment}"),
    output:
        **{
            name: report(
                paths.training_figure("{experiment}", name),
                caption=f"../report/train_{name}.rst",
                category="5. Training",
                subcategory="{experiment}",
                labels={"figure": name.replace("_", " ")},
            )
            for name in TRAINING_FIGURES
        },
    log:
        paths.log("report", "train_{experiment}"),
    conda:
        ENV
    resources:
        mem_mb=CONFIG.resources.report.mem_mb,
        runtime=CONFIG.resources.report.runtime,
    params:
        # the settings file the experiment's training read (train.clip_grad_norm), its
        # snapshot for this run's experiment: not an input, as training reruns, and
        # rewrites the metrics, whenever it changes
        settings=lambda wildcards: SNAPSHOTS.get(
            paths.plan_train_settings(wildcards.experiment),
            paths.plan_train_settings(wildcards.experiment),
        ),
        out_dir=lambda wildcards: paths.training_figures_dir(wildcards.experiment),
    shell:
        "python -m bidstrain.report train --metrics {input:q} --experiment {wildcards.experiment}"
        " --settings {params.settings:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule report_model_input:
    input:
        model_json=paths.trained_model_description("{experiment}"),
        # the stimulus features beside the BOLD window the figure draws (train.stimuli)
        stimuli=lambda w: (
            PLAN.model_input_stimuli if w.experiment == PLAN.experiment else []
        ),
    output:
        report(
            paths.training_figure("{experiment}", "model_input"),
            caption="../report/train_model_input.rst",
            category="5. Training",
            subcategory="{experiment}",
            labels={"figure": "model input"},
        ),
    log:
        paths.log("report", "model_input_{experiment}"),
    conda:
        ENV
    resources:
        mem_mb=CONFIG.resources.report_model_input.mem_mb,
        runtime=CONFIG.resources.report_model_input.runtime,
    params:
        stimuli=lambda w, input: shlex.join(
            ["--stimuli", *input.stimuli] if input.stimuli else []
        ),
    shell:
        "python -m bidstrain.report model_input --model-json {input.model_json:q}"
        " {params.stimuli} --experiment {wildcards.experiment} --out {output:q} > {log:q} 2>&1"


rule report:
    input:
        lambda wildcards: PLAN.report_figures,
    localrule: True
