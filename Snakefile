# bidstrain: BIDS -> ingest -> normalize -> average -> checks -> train -> report.
# Read this file to see the DAG: each stage is one file under workflow/rules/, and each
# has a target rule of the same name (`snakemake ingest`, `snakemake normalize`, ...).
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"


rule all:
    default_target: True
    input:
        rules.ingest.output,
