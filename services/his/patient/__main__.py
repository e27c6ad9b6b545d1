"""`python -m his.patient`: run the patient service (same as `his serve patient`)."""

from his.cli import main

main(["serve", "patient"])
