# The encoding model (docs/encoding.md), included when encoding.enabled and stimuli are on:
# stimulus features (aligned stores of every cross-subject average) -> averaged BOLD,
# trained and validated in one job launched like `train` (it resumes from its
# checkpoints/; exit 75 after SIGTERM/SIGUSR1), its figures, and the predicted BOLD of
# every average from its own stimulus.

import shlex

from bidstrain.plan import ENCODING_FIGURES, ENCODING_OUTPUTS

ENCODING_GPUS = CONFIG.resources.encoding.gpus


rule encoding_model:
    input:
        settings=paths.plan_encoding_settings(PLAN.experiment),
        inputs=paths.plan_encoding_inputs(PLAN.experiment),
        stores=PLAN.encoding_stores,
        # as for train: no model before the checks passed (stimulus features at another
        # scale than BOLD, say), and none that outlives a store the checks saw change
        checks=paths.checks_summary(PLAN.experiment),
    output:
        [paths.encoding_output(PLAN.experiment, name) for name in ENCODING_OUTPUTS],
    log:
        paths.log("encoding", PLAN.experiment),
    conda:
        ENV
    threads: CONFIG.resources.encoding.cpus
    resources:
        gpu=ENCODING_GPUS,
        mem_mb=CONFIG.resources.encoding.mem_mb,
        runtime=CONFIG.resources.encoding.runtime,
    params:
        # (the snapshots of the files this run planned: bidstrain.plan.write_plan)
        settings=lambda wildcards: SNAPSHOTS[
            paths.plan_encoding_settings(PLAN.experiment)
        ],
        inputs=lambda wildcards: SNAPSHOTS[paths.plan_encoding_inputs(PLAN.experiment)],
        settings_digest=PLAN.settings_digest(
            paths.plan_encoding_settings(PLAN.experiment)
        ),
        world_size=max(1, ENCODING_GPUS),
        out_dir=lambda wildcards, output: str(Path(output[0]).parent),
    shell:
        "exec > {log:q} 2>&1; exec python -m bidstrain.train.launch --nodes 1"
        " --gpus-per-node {resources.gpu} --module bidstrain.encoding --"
        " --settings {params.settings:q} --inputs {params.inputs:q}"
        " --world-size {params.world_size} --out-dir {params.out_dir:q}"


rule encoding_figures:
    input:
        [paths.encoding_output(PLAN.experiment, name) for name in ENCODING_OUTPUTS],
    output:
        timecourse=report(
            paths.encoding_output(PLAN.experiment, ENCODING_FIGURES[0]),
            caption="../report/encoding_timecourses.rst",
            category="7. Encoding model",
            subcategory=PLAN.experiment,
            labels={"figure": "held-out time courses"},
        ),
        map=report(
            paths.encoding_output(PLAN.experiment, ENCODING_FIGURES[1]),
            caption="../report/encoding_correlation_map.rst",
            category="7. Encoding model",
            subcategory=PLAN.experiment,
            labels={"figure": "held-out correlation map"},
        ),
    log:
        paths.log("encoding", "figures"),
    conda:
        ENV
    resources:
        mem_mb=CONFIG.resources.report.mem_mb,
        runtime=CONFIG.resources.report.runtime,
    params:
        # the grid of the map (a voxel average), and the atlas of a model of parcels
        figure_args=shlex.join(PLAN.encoding_figure_arguments()),
        targets=CONFIG.encoding.figure_targets,
        out_dir=lambda wildcards, input: str(Path(input[0]).parent),
    shell:
        "python -m bidstrain.report encoding --encoding-dir {params.out_dir:q}"
        " {params.figure_args} --targets {params.targets}"
        " --timecourse-out {output.timecourse:q} --map-out {output.map:q} > {log:q} 2>&1"


rule encoding_apply:
    input:
        model=paths.encoding_output(PLAN.experiment, "model.pt"),
        bold=lambda w: PLAN.encoding_inputs()["averages"][w.average]["bold"],
        features=lambda w: [
            item.split("=", 1)[1] for item in PLAN.encoding_apply_features(w.average)
        ],
    output:
        directory(paths.encoding_prediction(PLAN.experiment, "{average}")),
    log:
        paths.log("encoding", "apply-{average}"),
    conda:
        ENV
    resources:
        mem_mb=CONFIG.resources.encoding_apply.mem_mb,
        runtime=CONFIG.resources.encoding_apply.runtime,
    params:
        features=lambda w: shlex.join(PLAN.encoding_apply_features(w.average)),
    shell:
        "python -m bidstrain.encoding.apply --model {input.model:q} --bold {input.bold:q}"
        " --features {params.features} --out {output:q} > {log:q} 2>&1"


rule encoding:
    input:
        PLAN.encoding_targets,
