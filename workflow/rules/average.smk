# Cross-subject averaging (average.mode: cross_subject): one job per (task, run), reading
# that run's store of every subject (bidstrain.average). In per_subject mode there is
# nothing to average and the `average` target is an empty no-op.

# Subject stores behind each average store, by average store path.
AVERAGE_GROUPS = {}
if config["average"]["mode"] == "cross_subject":
    for _image in images("bold"):
        AVERAGE_GROUPS.setdefault(average_store(*average_key(_image)), []).append(
            normalized_store(_image)
        )


rule average_bold:
    input:
        lambda wildcards: AVERAGE_GROUPS[
            f"{RESULTS}/average/{wildcards.group}_desc-average_bold.zarr"
        ],
    output:
        directory(f"{RESULTS}/average/{{group}}_desc-average_bold.zarr"),
    log:
        "logs/average/{group}.log",
    wildcard_constraints:
        group=r"task-[a-zA-Z0-9]+(_run-[a-zA-Z0-9]+)?",
    conda:
        ENV
    # Streams blocks of volumes: memory is a few 64 MB blocks whatever the subject count.
    resources:
        mem_mb=1000,
        runtime=lambda wildcards, input: 10 + len(input) // 10,
    params:
        mask=config["average"]["mask"],
        truncate="--truncate" if config["average"]["truncate"] else "",
        affine_tolerance=config["average"]["affine_tolerance"],
        tr_tolerance=config["average"]["repetition_time_tolerance"],
    shell:
        "python -m bidstrain.average {input:q} --out {output:q} --mask {params.mask}"
        " {params.truncate} --affine-tolerance {params.affine_tolerance}"
        " --tr-tolerance {params.tr_tolerance} > {log:q} 2>&1"


rule average:
    input:
        sorted(AVERAGE_GROUPS),
    localrule: True
