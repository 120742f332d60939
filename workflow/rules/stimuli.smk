# Stimuli: per-TR features of the films, sounds and transcripts the BOLD runs presented
# (bidstrain.stimuli). One job per stimulus file, whatever the number of runs and subjects
# that used it. Target `stimuli`; part of `all` only with stimuli.enabled. Changing the
# delay (stimuli.delay_method, delays) reruns none of these jobs: the stores hold raw
# per-TR features.


rule stimulus_features:
    input:
        f"{PLAN.stimuli_root}/{{stimulus}}",
    output:
        directory(paths.stimulus_features("{stimulus}")),
    log:
        paths.log("stimuli", "{stimulus}"),
    conda:
        ENV
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        tr=lambda wildcards: PLAN.stimulus_tr(wildcards.stimulus),
        size=" ".join(map(str, CONFIG.stimuli.video_size)),
        colour=CONFIG.stimuli.video_colour,
        n_mels=CONFIG.stimuli.audio_n_mels,
        window=CONFIG.stimuli.audio_window,
        hop=CONFIG.stimuli.audio_hop,
        method=CONFIG.stimuli.text_method,
        embeddings=CONFIG.stimuli.text_embeddings,
        n_features=CONFIG.stimuli.text_n_features,
    shell:
        "python -m bidstrain.stimuli --stimulus {input:q} --tr {params.tr} --out {output:q}"
        " --video-size {params.size} --video-colour {params.colour}"
        " --audio-n-mels {params.n_mels} --audio-window {params.window}"
        " --audio-hop {params.hop} --text-method {params.method}"
        " --text-embeddings={params.embeddings:q} --text-n-features {params.n_features}"
        " > {log:q} 2>&1"


rule stimuli:
    input:
        PLAN.stimulus_stores,
