"""`python -m his.billing`: run the billing service (same as `his serve billing`)."""

from his.cli import main

main(["serve", "billing"])
