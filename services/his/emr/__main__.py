"""`python -m his.emr`: run the emr service (same as `his serve emr`)."""

from his.cli import main

main(["serve", "emr"])
