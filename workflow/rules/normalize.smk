# Normalization: one job per image, each streaming one NIfTI into one z-scored Zarr store
# (bidstrain.normalize). Rules normalize_T1w, normalize_dwi, normalize_bold (the training
# runs) and normalize_bold_heldout: the held-out runs the plan lists take the stores of
# the subject's other runs as input and are normalized with their pooled statistics. They
# are a rule of their own because Snakemake's --until never starts a job that depends on
# a job of the same rule: `snakemake --forcerun normalize_bold --until normalize_bold`
# reruns the training runs and stops.
NORMALIZE_RULES = {
    "normalize_T1w": ("T1w", None),
    "normalize_dwi": ("dwi", None),
    "normalize_bold": ("bold", None),
}
if PLAN.heldout_prefix_pattern:
    NORMALIZE_RULES["normalize_bold_heldout"] = ("bold", PLAN.heldout_prefix_pattern)

    ruleorder: normalize_bold_heldout > normalize_bold


for rule_name, (suffix, prefix_pattern) in NORMALIZE_RULES.items():

    rule:
        name:
            rule_name
        input:
            unpack(
                lambda wildcards, suffix=suffix: PLAN.job(
                    wildcards.prefix, suffix
                ).inputs()
            ),
        output:
            directory(paths.normalized_store_at("{prefix}", suffix)),
        log:
            paths.log("normalize", f"{{prefix}}_{suffix}"),
        wildcard_constraints:
            **({"prefix": prefix_pattern} if prefix_pattern else {}),
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
            mask=lambda wildcards, suffix=suffix: PLAN.job(
                wildcards.prefix, suffix
            ).mask,
            ddof=CONFIG.normalize.ddof,
            nonfinite=CONFIG.normalize.nonfinite,
            block_volumes=CONFIG.normalize.block_volumes,
        shell:
            "python -m bidstrain.normalize {params.modality} --image {input.image:q}"
            " --ingest {input.ingest:q} --mask {params.mask:q} --ddof {params.ddof}"
            " --nonfinite {params.nonfinite} --block-volumes {params.block_volumes}"
            " --stats-from {input.stats:q} --out {output:q} > {log:q} 2>&1"


rule normalize:
    input:
        PLAN.normalized_stores,
    localrule: True
