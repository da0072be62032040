"""A stand-in for one clnrm scenario: start its "containers", hold some memory, do its work.

    python3 scenario.py NAME --seconds 0.5 --memory-mb 40 [--fail]

It allocates and touches ``--memory-mb`` megabytes (as a containerised service would),
works for ``--seconds``, prints a line per step, and reports what it did as JSON in
``$PHALANX_RESULT_FILE``, which phalanx adds to the run's structured results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--seconds", type=float, default=0.3)
    parser.add_argument("--memory-mb", type=int, default=20)
    parser.add_argument("--fail", action="store_true", help="end as a failed scenario")
    args = parser.parse_args()

    started = time.monotonic()
    # Touch every page, so the memory is resident (what a limit measures), not just reserved.
    held = [bytearray(1 << 20) for _ in range(args.memory_mb)]
    for block in held:
        block[::4096] = b"x" * len(block[::4096])
    print(f"{args.name}: containers up, {args.memory_mb} MB held", flush=True)
    time.sleep(args.seconds)
    passed = not args.fail
    print(f"{args.name}: {'passed' if passed else 'FAILED: assertion on step 3'}", flush=True)
    result_file = os.environ.get("PHALANX_RESULT_FILE")
    if result_file:
        with open(result_file, "w", encoding="utf-8") as out:
            json.dump({"steps": 3, "memory_mb": args.memory_mb,
                       "seconds": round(time.monotonic() - started, 3)}, out)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
