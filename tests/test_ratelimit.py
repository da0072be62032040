"""Rate limits on a simulated clock: the limiter is driven as the scheduler drives it.

A client asks at ``now``; when refused it advances ``now`` by exactly the wait returned and
asks again. Windows are checked as the limiter defines them: a grant at ``g`` counts at
time ``t`` while ``g <= t < g + period`` (the half-open window ``(t - period, t]``).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Mapping, Sequence

import pytest
from hypothesis import given, settings, strategies as st

from phalanx.errors import ConfigError
from phalanx.ratelimit import Limiters, Paused, Rate, RateLimit, Use, WindowChanged

Grant = tuple[float, tuple[Use, ...]]


def simulate(
    limiters: Limiters, streams: Mapping[str, Callable[[], Sequence[Use]]], until: float
) -> dict[str, list[Grant]]:
    """Clients that always have a request waiting, each asking again after exactly the wait it
    was told; the earliest ask goes first, so the clock never runs backwards."""
    asks = dict.fromkeys(streams, 0.0)
    pending = {name: tuple(make()) for name, make in streams.items()}
    grants: dict[str, list[Grant]] = {name: [] for name in streams}
    while True:
        name = min(asks, key=lambda n: asks[n])
        now = asks[name]
        if now >= until:
            return grants
        wait = limiters.try_acquire(pending[name], now)
        assert wait >= 0 and math.isfinite(wait)
        if wait == 0:
            grants[name].append((now, pending[name]))
            pending[name] = tuple(streams[name]())
        else:
            asks[name] = now + wait


def charged(grants: Sequence[Grant], name: str, key: str = "") -> list[tuple[float, float]]:
    """(time, cost) of every grant on one limiter key."""
    return [(time, use.cost) for time, uses in grants for use in uses if (use.name, use.key) == (name, key)]


def worst_window(grants: Sequence[tuple[float, float]], period: float) -> float:
    """The largest total in any half-open window (t - period, t]; the worst ends at a grant.
    ``grants`` are in time order; all those at one time count together."""
    worst = total = 0.0
    first = last = 0
    while last < len(grants):
        t = grants[last][0]
        while last < len(grants) and grants[last][0] == t:
            total += grants[last][1]
            last += 1
        while grants[first][0] + period <= t:
            total -= grants[first][1]
            first += 1
        worst = max(worst, total)
    return worst


# -- pacing and the sliding window ----------------------------------------------------------------


def test_fifty_per_second_never_puts_more_than_fifty_in_any_second_and_does_not_burst() -> None:
    limiters = Limiters({"api": RateLimit("50/s")}, max_window=4)
    grants = charged(simulate(limiters, {"client": lambda: [Use("api")]}, until=10.0)["client"], "api")
    assert worst_window(grants, 1.0) <= 50
    assert abs(len(grants) - 500) <= 10
    assert grants[0][0] == 0.0
    assert grants[1][0] == pytest.approx(0.020)  # one every 20 ms from the start, not 50 at once
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(grants)]
    assert min(gaps) == pytest.approx(0.020)


def optimum(costs: Sequence[float], limit: float, period: float, until: float) -> float:
    """Tokens the best possible schedule sends before ``until``: each request at the earliest
    time the sliding window has room (no pacing; no schedule of these costs in this order
    can do better, since each of its requests goes no earlier than here)."""
    sent: list[tuple[float, float]] = []
    now = 0.0
    for cost in costs:
        while sum(c for g, c in sent if g + period > now) + cost > limit:
            now = min(g + period for g, c in sent if g + period > now)
        if now >= until:
            break
        sent.append((now, cost))
    return sum(c for _, c in sent)


def test_weighted_tokens_per_minute_never_exceed_the_limit_in_any_minute() -> None:
    rng = random.Random(20240611)
    costs = [rng.randint(1, 300) for _ in range(1000)]
    queue = iter(costs)
    limiters = Limiters({"tpm": RateLimit("6000/min", weighted=True)}, max_window=4)
    grants = simulate(limiters, {"client": lambda: [Use("tpm", cost=next(queue))]}, until=600.0)
    tokens = charged(grants["client"], "tpm")
    assert worst_window(tokens, 60.0) <= 6000
    total = sum(cost for _, cost in tokens)
    # Within 2% of what any schedule respecting the window could send, and not far below
    # the nominal 60,000: with requests of up to 5% of the limit, waiting for room costs a few.
    assert total >= 0.98 * optimum(costs, 6000, 60.0, 600.0)
    assert 0.95 * 60_000 <= total <= 60_000


def test_small_weighted_costs_get_the_nominal_rate() -> None:
    rng = random.Random(7)
    limiters = Limiters({"tpm": RateLimit("90000/min", weighted=True)}, max_window=4)
    grants = simulate(limiters, {"client": lambda: [Use("tpm", cost=rng.randint(1, 300))]}, until=600.0)
    tokens = charged(grants["client"], "tpm")
    assert worst_window(tokens, 60.0) <= 90_000
    assert sum(cost for _, cost in tokens) == pytest.approx(900_000, rel=0.02)


def test_a_big_weighted_request_goes_at_once_and_the_next_one_pays_for_it() -> None:
    limiters = Limiters({"tpm": RateLimit("90000/min", weighted=True)}, max_window=4)
    assert limiters.try_acquire([Use("tpm", cost=1200)], 0.0) == 0.0
    assert limiters.try_acquire([Use("tpm", cost=1)], 0.0) == pytest.approx(0.8)
    assert limiters.try_acquire([Use("tpm", cost=1)], 0.8) == 0.0


def test_keys_are_limited_independently() -> None:
    limiters = Limiters({"api": RateLimit("50/s")}, max_window=4)
    grants = simulate(
        limiters, {"a": lambda: [Use("api", "gpt")], "b": lambda: [Use("api", "claude")]}, until=10.0
    )
    for name, key in (("a", "gpt"), ("b", "claude")):
        mine = charged(grants[name], "api", key)
        assert abs(len(mine) - 500) <= 10
        assert worst_window(mine, 1.0) <= 50


def test_two_limiters_on_one_use_both_apply_and_the_stricter_wins() -> None:
    limiters = Limiters({"rps": RateLimit("10/s"), "rpm": RateLimit("60/min")}, max_window=4)
    grants = simulate(limiters, {"c": lambda: [Use("rps"), Use("rpm")]}, until=120.0)["c"]
    assert worst_window(charged(grants, "rps"), 1.0) <= 10
    assert worst_window(charged(grants, "rpm"), 60.0) <= 60
    assert abs(len(grants) - 120) <= 3  # 1/s, not 10/s


def test_a_fresh_limiter_sends_one_request_not_a_burst() -> None:
    limiters = Limiters({"api": RateLimit("50/s")}, max_window=4)
    assert limiters.try_acquire([Use("api")], 0.0) == 0.0
    assert limiters.try_acquire([Use("api")], 0.0) == pytest.approx(0.02)


def test_burst_five_sends_five_at_once_then_paces() -> None:
    limiters = Limiters({"api": RateLimit("50/s", burst=5)}, max_window=4)
    grants = charged(simulate(limiters, {"c": lambda: [Use("api")]}, until=1.0)["c"], "api")
    assert [t for t, _ in grants[:5]] == [0.0] * 5
    assert [t for t, _ in grants[5:8]] == pytest.approx([0.02, 0.04, 0.06])
    assert worst_window(grants, 1.0) <= 50


def test_an_idle_limiter_bursts_again_but_no_more_than_burst() -> None:
    limiters = Limiters({"api": RateLimit("10/s", burst=3)}, max_window=4)
    for _ in range(3):
        assert limiters.try_acquire([Use("api")], 0.0) == 0.0
    assert limiters.try_acquire([Use("api")], 0.0) > 0
    for _ in range(3):
        assert limiters.try_acquire([Use("api")], 5.0) == 0.0
    assert limiters.try_acquire([Use("api")], 5.0) == pytest.approx(0.1)


def test_a_refusal_records_nothing() -> None:
    limiters = Limiters({"slow": RateLimit("1/s"), "fast": RateLimit("100/s")}, max_window=4)
    assert limiters.try_acquire([Use("slow")], 0.0) == 0.0
    # "fast" alone would allow it, but "slow" refuses: "fast" must not be charged.
    assert limiters.try_acquire([Use("fast"), Use("slow")], 0.0) == pytest.approx(1.0)
    assert limiters.try_acquire([Use("fast")], 0.0) == 0.0


# -- shared pauses ---------------------------------------------------------------------------------


def test_retry_after_pauses_the_key_for_everyone_and_only_that_key() -> None:
    limiters = Limiters({"api": RateLimit("1000/s", burst=1000)}, max_window=4)
    assert limiters.try_acquire([Use("api", "a")], 0.0) == 0.0
    changes = limiters.release([Use("api", "a")], 0.0, 1.0, throttled=True, retry_after=2.0)
    assert changes == [Paused("api", "a", 3.0, 2.0)]
    assert limiters.paused_until("api", "a") == 3.0
    assert limiters.try_acquire([Use("api", "a")], 1.0) == pytest.approx(2.0)
    assert limiters.try_acquire([Use("api", "a")], 2.5) == pytest.approx(0.5)
    assert limiters.try_acquire([Use("api", "b")], 1.0) == 0.0  # another key goes on
    assert limiters.paused_until("api", "b") == -math.inf
    assert limiters.try_acquire([Use("api", "a")], 3.0) == 0.0


def test_a_longer_pause_wins_and_a_shorter_one_does_not_shorten_it() -> None:
    limiters = Limiters({"api": RateLimit("1000/s", burst=1000)}, max_window=4)
    for _ in range(3):
        limiters.try_acquire([Use("api")], 0.0)
    assert limiters.release([Use("api")], 0.0, 1.0, throttled=True, retry_after=2.0) == [Paused("api", "", 3.0, 2.0)]
    assert limiters.release([Use("api")], 0.0, 1.5, throttled=True, retry_after=5.0) == [Paused("api", "", 6.5, 5.0)]
    assert limiters.release([Use("api")], 0.0, 2.0, throttled=True, retry_after=1.0) == []
    assert limiters.paused_until("api", "") == 6.5
    assert limiters.try_acquire([Use("api")], 3.5) == pytest.approx(3.0)
    assert limiters.pause("api", "", 6.0) is None
    assert limiters.pause("api", "", 8.0, now=4.0) == Paused("api", "", 8.0, 4.0)


# -- AIMD ----------------------------------------------------------------------------------------


def attempt(limiters: Limiters, use: Use, at: float, *, throttled: bool = False) -> list[WindowChanged | Paused]:
    assert limiters.try_acquire([use], at) == 0.0
    return limiters.release([use], at, at, throttled=throttled, retry_after=None)


def adaptive(max_window: int | None = None) -> Limiters:
    return Limiters({"llm": RateLimit("1000/s", burst=1000, adaptive=True, max_window=max_window)}, max_window=8)


def test_the_window_starts_at_the_ceiling_and_a_full_window_waits_for_a_release() -> None:
    limiters = adaptive()
    use = Use("llm", "gpt")
    assert limiters.window("llm", "gpt") == 8
    for _ in range(8):
        assert limiters.try_acquire([use], 0.0) == 0.0
    assert limiters.try_acquire([use], 0.0) == math.inf
    assert limiters.release([use], 0.0, 1.0, throttled=False, retry_after=None) == []  # capped at 8
    assert limiters.window("llm", "gpt") == 8
    assert limiters.try_acquire([use], 1.0) == 0.0
    assert adaptive(max_window=3).window("llm", "gpt") == 3  # the limit's own ceiling wins
    assert Limiters({"api": RateLimit("10/s")}, max_window=8).window("api", "") is None


def test_a_round_of_throttles_halves_the_window_once() -> None:
    limiters = adaptive()
    use = Use("llm")
    for _ in range(8):
        limiters.try_acquire([use], 0.0)
    assert limiters.release([use], 0.0, 1.0, throttled=True, retry_after=None) == [WindowChanged("llm", "", 4)]
    for _ in range(3):  # the same round's other 429s are old news
        assert limiters.release([use], 0.0, 1.5, throttled=True, retry_after=None) == []
    assert limiters.window("llm", "") == 4
    assert limiters.try_acquire([use], 2.0) == math.inf  # 4 in flight, window 4
    assert limiters.release([use], 0.0, 2.0, throttled=False, retry_after=None) == []  # 4.25
    assert limiters.try_acquire([use], 2.0) == 0.0
    # An attempt that started after the decrease is a new signal.
    assert limiters.release([use], 2.0, 3.0, throttled=True, retry_after=None) == [WindowChanged("llm", "", 2)]


def test_the_window_never_drops_below_one_and_grows_about_one_per_window_of_successes() -> None:
    limiters = adaptive()
    use = Use("llm", "k")
    now = 0.0
    seen = []
    for _ in range(6):
        now += 1
        seen += attempt(limiters, use, now, throttled=True)
    assert seen == [WindowChanged("llm", "k", w) for w in (4, 2, 1)]
    assert limiters.window("llm", "k") == 1
    assert limiters.try_acquire([use], now) == 0.0
    assert limiters.try_acquire([use], now) == math.inf
    limiters.release([use], now, now, throttled=False, retry_after=None)
    window = 2  # that success took it from 1 to 2
    successes = 0
    while window < 8:
        now += 1
        successes += 1
        changes = attempt(limiters, use, now)
        if changes:
            assert changes == [WindowChanged("llm", "k", window + 1)]
            assert window <= successes <= window + 1  # about one window's worth
            window, successes = window + 1, 0
    for _ in range(50):
        now += 1
        assert attempt(limiters, use, now) == []
    assert limiters.window("llm", "k") == 8


# -- configuration and checks ----------------------------------------------------------------------


def test_check_names_an_unknown_limiter_and_lists_the_defined_ones() -> None:
    limiters = Limiters({"b": RateLimit("1/s"), "a": RateLimit("1/s")}, max_window=4)
    assert limiters.names() == frozenset({"a", "b"})
    with pytest.raises(ConfigError, match=r"^unknown rate limit 'x' \(defined: a, b\)$"):
        limiters.check([Use("a"), Use("x")])
    with pytest.raises(ConfigError, match=r"defined: none"):
        Limiters({}, max_window=4).check([Use("x")])


@pytest.mark.parametrize("cost", [0, -1, math.inf, math.nan])
def test_check_refuses_a_cost_that_is_not_positive_and_finite(cost: float) -> None:
    limiters = Limiters({"tpm": RateLimit("90000/min", weighted=True)}, max_window=4)
    with pytest.raises(ConfigError, match="positive and finite"):
        limiters.check([Use("tpm", cost=cost)])


def test_check_refuses_a_weighted_cost_that_could_never_be_sent() -> None:
    limiters = Limiters({"tpm": RateLimit("90000/min", weighted=True), "rpm": RateLimit("500/min")}, max_window=4)
    with pytest.raises(ConfigError) as error:
        limiters.check([Use("tpm", "gpt", cost=100_000)])
    assert str(error.value) == "costs 100000, more than rate limit 'tpm' allows in one period (90000/min)"
    with pytest.raises(ConfigError, match="costs 120000"):  # two uses of one key count together
        limiters.check([Use("tpm", cost=60_000), Use("tpm", cost=60_000)])
    limiters.check([Use("tpm", cost=90_000), Use("rpm", cost=100_000)])  # unweighted: charged 1
    with pytest.raises(ConfigError, match="costs 100000"):
        limiters.try_acquire([Use("tpm", cost=100_000)], 0.0)  # never a wait that never ends


def test_uses_charges_tokens_only_where_weighted() -> None:
    limiters = Limiters({"tpm": RateLimit("90000/min", weighted=True), "rpm": RateLimit("500/min")}, max_window=4)
    assert limiters.uses(("rpm", "tpm", "nope"), "gpt", 1200) == (
        Use("rpm", "gpt", 1.0),
        Use("tpm", "gpt", 1200),
        Use("nope", "gpt", 1200),
    )


@pytest.mark.parametrize(
    ("spec", "limit", "period", "canonical"),
    [
        ("50/s", 50, 1, "50/s"),
        ("50/sec", 50, 1, "50/s"),
        ("50/second", 50, 1, "50/s"),
        ("500/min", 500, 60, "500/min"),
        ("500/m", 500, 60, "500/min"),
        ("500/minute", 500, 60, "500/min"),
        ("1000/h", 1000, 3600, "1000/h"),
        ("1000/hour", 1000, 3600, "1000/h"),
        ("10/d", 10, 86400, "10/d"),
        ("10/day", 10, 86400, "10/d"),
        ("10/2s", 10, 2, "10/2s"),
        ("5/30s", 5, 30, "5/30s"),
        ("90000/min", 90000, 60, "90000/min"),
        ("2.5/s", 2.5, 1, "2.5/s"),
        ("1/500ms", 1, 0.5, "1/500ms"),
        ("  7 / 120s ", 7, 120, "7/2min"),
        ("3/0.1s", 3, 0.1, "3/100ms"),
        ("1/1.5s", 1, 1.5, "1/1.5s"),
        ("60/60min", 60, 3600, "60/h"),
    ],
)
def test_rate_parse_reads_the_usual_forms(spec: str, limit: float, period: float, canonical: str) -> None:
    rate = Rate.parse(spec)
    assert (rate.limit, rate.period) == (limit, period)
    assert str(rate) == canonical
    assert Rate.parse(str(rate)) == rate
    assert Rate.parse(rate) is rate


@pytest.mark.parametrize(
    "spec",
    ["50 per s", "50", "50/", "/s", "50/x", "50/s/s", "", "1e3/s", "inf/s", "nan/s", "-5/s", "50/S", "50/2", 50, None],
)
def test_rate_parse_refuses_anything_else_in_one_clear_line(spec: object) -> None:
    with pytest.raises(ConfigError) as error:
        Rate.parse(spec, what="limits.api")  # type: ignore[arg-type]
    message = str(error.value)
    assert message == f"limits.api: expected a rate such as '50/s', '500/min' or '10/2s', got {spec!r}"


@pytest.mark.parametrize("spec", ["0/s", "5/0s", "5/0ms", "0.0/min"])
def test_rate_parse_refuses_zero(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"^rate: a rate's count and period must be positive"):
        Rate.parse(spec)


@given(
    st.floats(min_value=1e-6, max_value=1e15, allow_nan=False),
    st.floats(min_value=1e-6, max_value=1e9, allow_nan=False),
)
def test_str_of_any_rate_reads_back_exactly(limit: float, period: float) -> None:
    rate = Rate(limit, period)
    assert Rate.parse(str(rate)) == rate


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"rate": "10/s", "burst": 0}, "burst must be a number from 1 to the rate's limit (10/s), got 0"),
        ({"rate": "10/s", "burst": 11}, "burst must be a number"),
        ({"rate": "10/s", "burst": True}, "burst must be a number"),
        ({"rate": "0.5/s"}, "0.5/s allows less than one use per period"),
        ({"rate": "10/s", "weighted": "yes"}, "weighted must be true or false, got 'yes'"),
        ({"rate": "10/s", "adaptive": 1}, "adaptive must be true or false"),
        ({"rate": "10/s", "max_window": 0}, "max_window must be a positive integer, got 0"),
        ({"rate": "10/s", "max_window": 2.5}, "max_window must be a positive integer"),
        ({"rate": "10/s", "brust": 2}, "unknown key 'brust' (did you mean 'burst'?)"),
        ({"rate": "10/s", "colour": 2}, "unknown key 'colour' (expected rate, burst, weighted, adaptive, max_window)"),
        ({"burst": 2}, "missing 'rate'"),
        ({"rate": 10}, "limits.api.rate: expected a rate such as"),
        ({"rate": "10 per s"}, "limits.api.rate: expected a rate such as"),
        (10, "limits.api: expected a rate such as '50/s', '500/min' or '10/2s', or a table"),
    ],
)
def test_rate_limit_of_names_the_setting_and_the_key(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        RateLimit.of(value, what="limits.api")  # type: ignore[arg-type]
    assert str(error.value).startswith("limits.api")
    assert message in str(error.value)


def test_rate_limit_of_reads_a_spec_or_a_table() -> None:
    assert RateLimit.of("500/min", what="x") == RateLimit(Rate(500, 60))
    table = {"rate": "90000/min", "burst": 10, "weighted": True, "adaptive": True, "max_window": 8}
    limit = RateLimit.of(table, what="x")
    assert limit == RateLimit(Rate(90000, 60), burst=10.0, weighted=True, adaptive=True, max_window=8)
    assert RateLimit.of(limit, what="x") is limit
    assert RateLimit("50/s").rate == Rate(50, 1)  # a spec is parsed where a Rate is expected
    with pytest.raises(ConfigError, match=r"^rate limit: burst"):
        RateLimit("10/s", burst=20)
    with pytest.raises(ConfigError, match="max_window"):
        Limiters({}, max_window=0)


# -- properties ------------------------------------------------------------------------------------


@st.composite
def rate_limits(draw: st.DrawFn) -> RateLimit:
    limit = draw(st.integers(1, 200))
    period = draw(st.floats(0.1, 120))
    burst = draw(st.one_of(st.integers(1, limit), st.floats(1, limit)))
    return RateLimit(Rate(limit, period), burst=burst, weighted=draw(st.booleans()))


@settings(max_examples=150, deadline=None)
@given(st.lists(rate_limits(), min_size=1, max_size=2), st.data())
def test_grants_respect_every_window_and_waits_are_exact(definitions: list[RateLimit], data: st.DataObject) -> None:
    names = [f"l{i}" for i in range(len(definitions))]
    limiters = Limiters(dict(zip(names, definitions, strict=True)), max_window=4)
    horizon = 3 * max(d.rate.period for d in definitions)
    arrivals = sorted(data.draw(st.lists(st.floats(0, horizon), min_size=1, max_size=40)))
    smallest = min(d.rate.limit for d in definitions)
    grants: list[tuple[float, float]] = []
    now = 0.0
    for arrival in arrivals:
        cost = float(data.draw(st.integers(1, int(smallest))))
        uses = [Use(name, cost=cost) for name in names]
        now = max(now, arrival)
        wait = limiters.try_acquire(uses, now)
        if wait > 0:
            assert math.isfinite(wait)
            # Exact, not an upper bound: any earlier is refused, and that refusal names the same moment.
            sooner = now + wait / 2
            if now < sooner < now + wait:
                again = limiters.try_acquire(uses, sooner)
                assert again > 0
                assert sooner + again == pytest.approx(now + wait, rel=1e-12, abs=1e-12)
            now += wait
            assert limiters.try_acquire(uses, now) == 0.0
        grants.append((now, cost))
    for definition in definitions:
        charges = [(t, c if definition.weighted else 1.0) for t, c in grants]
        assert worst_window(charges, definition.rate.period) <= definition.rate.limit
