# Normalization: one job per image (rules normalize_bold, normalize_T1w, normalize_dwi),
# each streaming one NIfTI into one z-scored Zarr store (bidstrain.normalize). Held-out
# BOLD runs (normalize.heldout) take the stores of the subject's other runs as input and
# are normalized with their pooled statistics.
for suffix in MASK_CONFIG:

    rule:
        name:
            f"normalize_{suffix}"
        input:
            unpack(normalize_inputs(suffix)),
        output:
            directory(f"{RESULTS}/normalized/{{prefix}}_desc-zscore_{suffix}.zarr"),
        log:
            f"logs/normalize/{{prefix}}_{suffix}.log",
        group:
            "subject"
        conda:
            ENV
        # Two threads: one decompresses the next block while the other z-scores.
        threads: 2
        resources:
            mem_mb=2000,
            runtime=30,
        params:
            modality=suffix,
            mask=mask_option(suffix),
            ddof=config["normalize"]["ddof"],
            nonfinite=config["normalize"]["nonfinite"],
            block_volumes=config["normalize"]["block_volumes"],
        shell:
            "python -m bidstrain.normalize {params.modality} --image {input.image:q}"
            " --ingest {input.ingest:q} --mask {params.mask:q} --ddof {params.ddof}"
            " --nonfinite {params.nonfinite} --block-volumes {params.block_volumes}"
            " --stats-from {input.stats:q} --out {output:q} > {log:q} 2>&1"


NORMALIZED_STORES = [
    normalized_store(image) for suffix in MASK_CONFIG for image in images(suffix)
]


rule normalize:
    input:
        NORMALIZED_STORES,
    localrule: True
