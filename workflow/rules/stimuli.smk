# Stimuli: per-TR features of the films, sounds and transcripts the BOLD runs presented
# (bidstrain.stimuli). One job per stimulus file, whatever the number of runs and subjects
# that used it. Target `stimuli`; part of `all` only with stimuli.enabled. A job's params
# are its TR and the stimuli keys of its kind (video and audio, or text): changing the
# delay (stimuli.delay_method, delays) reruns none of these jobs, the stores holding raw
# per-TR features. A transcript's job also reads the word-vector table, when one is used.


rule stimulus_features:
    input:
        stimulus=f"{PLAN.stimuli_root}/{{stimulus}}",
        embeddings=lambda wildcards: PLAN.stimulus_embeddings(wildcards.stimulus),
    output:
        directory(paths.stimulus_features("{stimulus}")),
    log:
        paths.log("stimuli", "{stimulus}"),
    conda:
        ENV
    resources:
        mem_mb=CONFIG.resources.stimulus_features.mem_mb,
        runtime=CONFIG.resources.stimulus_features.runtime,
    params:
        options=lambda wildcards: PLAN.stimulus_arguments(wildcards.stimulus),
    shell:
        "python -m bidstrain.stimuli --stimulus {input.stimulus:q} --out {output:q} {params.options}"
        " > {log:q} 2>&1"


rule stimuli:
    input:
        PLAN.stimulus_stores,


# Every run's features on the frames of its BOLD store (subject runs and averages), delayed
# and z-scored with the training runs' statistics: one job, since the statistics need
# every training run (two streamed passes, one run in memory at a time).
rule align_stimuli:
    input:
        spec=paths.PLAN_ALIGN_SPEC,
        stores=PLAN.alignment_inputs,
    output:
        [directory(path) for path in PLAN.aligned_stimulus_stores],
    log:
        paths.log("stimuli", "align"),
    conda:
        ENV
    resources:
        mem_mb=CONFIG.resources.align_stimuli.mem_mb,
        runtime=CONFIG.resources.align_stimuli.runtime,
    params:
        # the snapshot of the spec this run planned (bidstrain.plan.write_plan), named by
        # its hash: a change of the stimuli keys, runs or held-out selection reruns it
        spec=lambda wildcards: SNAPSHOTS[paths.PLAN_ALIGN_SPEC],
    shell:
        "python -m bidstrain.stimuli.alignment --spec {params.spec:q} > {log:q} 2>&1"
