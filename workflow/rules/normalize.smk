# Normalization: one job per image (rules normalize_bold, normalize_T1w, normalize_dwi),
# each streaming one NIfTI into one z-scored Zarr store (bidstrain.normalize). Held-out
# BOLD runs (normalize.heldout) take the stores of the subject's other runs as input and
# are normalized with their pooled statistics.
from bidstrain.normalize.masking import is_pattern, resolve_pattern
from bidstrain.normalize.heldout import fitting_runs

MASK_CONFIG = {"bold": "mask", "T1w": "t1w_mask", "dwi": "dwi_mask"}


def _resolved_masks():
    """Mask option of every image: the keyword, or its mask file from the pattern."""
    masks = {}
    for suffix, key in MASK_CONFIG.items():
        option = config["normalize"][key]
        for image in images(suffix):
            masks[(suffix, image.prefix)] = (
                resolve_pattern(
                    option, image.entities, config["bids_dir"], f"normalize.{key}"
                )
                if is_pattern(option)
                else option
            )
    return masks


def _fitting_stores():
    """Stores each held-out BOLD run takes its statistics from, by prefix."""
    runs = images("bold")
    return {
        image.prefix: [
            normalized_store(run)
            for run in fitting_runs(
                image, runs, is_heldout, config["normalize"]["heldout"]
            )
        ]
        for image in runs
        if is_heldout(image)
    }


try:
    NORMALIZE_MASKS = _resolved_masks()
    FITTING_STORES = _fitting_stores()
except BidstrainError as error:
    raise WorkflowError(f"bidstrain: {error}") from None


def mask_option(suffix):
    """Params function: ``epi``/``head``/``none`` or the image's mask file."""
    return lambda wildcards: NORMALIZE_MASKS[(suffix, wildcards.prefix)]


def mask_file(suffix):
    """Input function: the image's mask file, when the config gives a path pattern."""

    def inner(wildcards):
        option = NORMALIZE_MASKS[(suffix, wildcards.prefix)]
        return [option] if is_pattern(option) else []

    return inner


def stats_stores(wildcards):
    """Input function: the stores a held-out run is normalized with (none otherwise)."""
    return FITTING_STORES.get(wildcards.prefix, [])


for suffix in MASK_CONFIG:

    rule:
        name:
            f"normalize_{suffix}"
        input:
            image=image_of(suffix),
            ingest=ingest_json_of(suffix),
            mask=mask_file(suffix),
            stats=stats_stores,
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
            "{BIDSTRAIN}.normalize {params.modality} --image {input.image:q}"
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
