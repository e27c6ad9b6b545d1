"""`python -m his.pharmacy`: run the pharmacy service (same as `his serve pharmacy`)."""

from his.cli import main

main(["serve", "pharmacy"])
