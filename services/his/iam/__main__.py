"""`python -m his.iam`: run the iam service (same as `his serve iam`)."""

from his.cli import main

main(["serve", "iam"])
