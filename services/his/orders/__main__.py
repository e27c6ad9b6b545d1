"""`python -m his.orders`: run the orders service (same as `his serve orders`)."""

from his.cli import main

main(["serve", "orders"])
