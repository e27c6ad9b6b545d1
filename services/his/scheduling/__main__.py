"""`python -m his.scheduling`: run the scheduling service (same as `his serve scheduling`)."""

from his.cli import main

main(["serve", "scheduling"])
