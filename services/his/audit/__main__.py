"""`python -m his.audit`: run the audit service (same as `his serve audit`)."""

from his.cli import main

main(["serve", "audit"])
