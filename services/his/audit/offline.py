"""`python -m his.audit.offline`: what an auditor does with checkpoints outside the system.

- `public-key KEY_FILE`: print the public key of the checkpoint key (PEM), to keep elsewhere.
- `verify PUBLIC_KEY CHECKPOINTS`: check a checkpoint log (the service's JSON lines, or lines
  kept from ListChainCheckpoints) with only the public key: every signature, and that each
  checkpoint links to the one before it. Exit status 0 when all are genuine, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from his.audit.anchor import (
    CheckpointVerifier,
    SignedCheckpoint,
    load_private_key,
    load_public_key,
    public_key_pem,
)
from his.audit.checkpoint_log import checkpoint_from_json


def verify_lines(verifier: CheckpointVerifier, lines: Sequence[str]) -> list[str]:
    """What is wrong with the checkpoints in `lines` (JSON each); empty when all are genuine
    and each one that follows another links to it."""
    problems: list[str] = []
    previous: SignedCheckpoint | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            checkpoint = checkpoint_from_json(json.loads(line))
        except (ValueError, KeyError, TypeError):
            problems.append(f"line {number}: not a checkpoint")
            previous = None
            continue
        name = f"line {number} (checkpoint {checkpoint.checkpoint_number})"
        if not verifier.genuine(checkpoint):
            problems.append(f"{name}: the signature does not verify")
        if (
            previous is not None
            and checkpoint.checkpoint_number == previous.checkpoint_number + 1
            and checkpoint.previous_digest != previous.digest()
        ):
            problems.append(f"{name}: does not link to checkpoint {previous.checkpoint_number}")
        previous = checkpoint
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m his.audit.offline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    public = commands.add_parser("public-key", help="print the public key of a checkpoint key")
    public.add_argument("key_file", type=Path)
    verify = commands.add_parser("verify", help="verify a checkpoint log with the public key")
    verify.add_argument("public_key", type=Path)
    verify.add_argument("checkpoints", type=Path)
    args = parser.parse_args(argv)
    if args.command == "public-key":
        sys.stdout.write(public_key_pem(load_private_key(args.key_file).public_key()).decode())
        return 0
    verifier = CheckpointVerifier([load_public_key(args.public_key)])
    lines = args.checkpoints.read_text(encoding="utf-8").splitlines()
    problems = verify_lines(verifier, lines)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{sum(1 for line in lines if line.strip())} checkpoints genuine")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
