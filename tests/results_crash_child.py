"""The child of tests/test_results_crash.py: a `phalanx.run` of COUNT tasks writing a CSV and
a JSONL results file, printing each task's id once both rows are out, until it is killed."""

from __future__ import annotations

import sys
import threading
import time

import phalanx
from phalanx.runner import results_sink

TEXTS = ("plain", "a, comma", 'a "quoted" word', "two\nlines", "unicode é ✓ 😀", "tab\there", "")


def answer(number: int) -> dict[str, object]:
    time.sleep(0.002)  # the run lasts long enough to be killed in its middle
    text = TEXTS[number % len(TEXTS)]
    if number % 50 == 7:
        text = ("big, \"row\"\n" * 3000)[: 30_000]  # rows that cross page boundaries
    return {"number": number, "text": text, "square": number * number}


def main() -> None:
    csv_path, jsonl_path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tasks = [phalanx.Task(f"t{n}", answer, args=(n,)) for n in range(count)]
    out = sys.stdout

    def heard(event: phalanx.Event) -> None:
        if isinstance(event, phalanx.TaskFinished):
            out.write(event.task_id + "\n")
            out.flush()

    phalanx.run(tasks, max_workers=4, results=csv_path, sinks=[results_sink(jsonl_path)], on_event=heard)
    threading.Event().wait()  # finished: wait for the kill, which must find the files whole anyway


if __name__ == "__main__":
    main()
