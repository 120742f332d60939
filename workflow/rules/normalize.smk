# Normalization: one job per image, each streaming one NIfTI into one z-scored Zarr store
# (bidstrain.normalize). Rules normalize_T1w, normalize_dwi, normalize_bold (the training
# runs) and normalize_bold_heldout: held-out runs (normalize.heldout) take the stores of the
# subject's other runs as input and are normalized with their pooled statistics. They are
# a rule of their own because Snakemake's --until never starts a job that depends on a job
# of the same rule: `snakemake --forcerun normalize_bold --until normalize_bold` reruns the
# training runs and stops.
NORMALIZE_RULES = {
    "normalize_T1w": ("T1w", PREFIX),
    "normalize_dwi": ("dwi", PREFIX),
    "normalize_bold": ("bold", f"(?!{heldout_lookahead()}){PREFIX}"),
}
if config["normalize"]["heldout"]:
    NORMALIZE_RULES["normalize_bold_heldout"] = (
        "bold",
        f"{heldout_lookahead()}{PREFIX}",
    )
else:
    NORMALIZE_RULES["normalize_bold"] = ("bold", PREFIX)

for rule_name, (suffix, prefix_pattern) in NORMALIZE_RULES.items():

    rule:
        name:
            rule_name
        input:
            unpack(normalize_inputs(suffix)),
        output:
            directory(f"{RESULTS}/normalized/{{prefix}}_desc-zscore_{suffix}.zarr"),
        log:
            f"logs/normalize/{{prefix}}_{suffix}.log",
        wildcard_constraints:
            prefix=prefix_pattern,
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
