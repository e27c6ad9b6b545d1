"""`python -m his.lab`: run the lab service (same as `his serve lab`)."""

from his.cli import main

main(["serve", "lab"])
