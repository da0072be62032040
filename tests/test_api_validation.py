"""The Python API checks its arguments at the call, naming the parameter, and takes several
iterables as the built-in ``map`` does."""

from __future__ import annotations

import operator
import subprocess
import sys
from pathlib import Path

import pytest

import phalanx
from phalanx import ConfigError


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_workers": "4"}, "max_workers"),
        ({"max_workers": 0}, "max_workers"),
        ({"max_workers": True}, "max_workers"),
        ({"backend": "gpu"}, "backend"),
        ({"batch_size": 0}, "batch_size"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"partition": "random"}, "partition"),
        ({"ordered": "yes"}, "ordered"),
    ],
)
def test_a_bad_option_is_refused_at_the_call_naming_it(options: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=f"^{named} must be"):
        phalanx.map(abs, [1, 2], **options)  # type: ignore[arg-type]  # no next(): the call itself raises


def test_map_takes_several_iterables_like_the_builtin() -> None:
    assert list(phalanx.map(pow, [2, 3, 4], [5, 2], backend="threads")) == [32, 9]
    assert list(phalanx.map(operator.add, range(1000), range(1000), max_workers=2)) == [2 * i for i in range(1000)]


def test_starmap_applies_each_argument_tuple() -> None:
    assert list(phalanx.starmap(pow, [(2, 5), (3, 2)], backend="threads")) == [32, 9]
    assert list(phalanx.starmap(operator.mul, ((i, i) for i in range(500)), max_workers=2)) == [
        i * i for i in range(500)
    ]
    with phalanx.Executor(2, backend="threads") as executor:
        assert list(executor.starmap(divmod, [(7, 2), (9, 4)])) == [(3, 1), (2, 1)]


def test_timeout_zero_means_no_timeout() -> None:
    assert list(phalanx.map(abs, [-1, -2], backend="threads", timeout=0)) == [1, 2]
    with phalanx.Executor(1, backend="threads", timeout=0) as executor:
        assert executor.submit(abs, -3).result() == 3


def test_a_workers_traceback_names_the_users_file_and_source_line(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        "import phalanx\n"
        "def helper(x):\n"
        "    raise ValueError(f'bad {x}')  # the failing line\n"
        "def boom(x):\n"
        "    return helper(x + 1)\n"
        "if __name__ == '__main__':\n"
        "    for isolate in (False, True):\n"
        "        for result in phalanx.map(boom, [1], isolate=isolate, as_results=True):\n"
        "            print(result.error.traceback)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True)
    assert "<dynamic-code>" not in done.stdout
    for shown in (f'File "{script}", line 5, in boom', "return helper(x + 1)",
                  f'File "{script}", line 3, in helper', "raise ValueError(f'bad {x}')  # the failing line"):
        assert done.stdout.count(shown) == 2, (shown, done.stdout)
