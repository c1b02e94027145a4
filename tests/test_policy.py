"""What happens after a delivery attempt: delivered, retry at T, or dead-letter."""

from __future__ import annotations

import random

import pytest

from relay.policy import (
    MAX_RETRY_AFTER,
    Backoff,
    DeadLetter,
    Decision,
    Delivered,
    Outcome,
    Retry,
    decide,
    retry_after_seconds,
)

NOW = 1_700_000_000.0
HOUR = 3600.0
DAY = 86400.0
#: Backoff so small that any Retry-After dominates it.
TINY = Backoff(base=0.001, cap=0.001)
#: "Wed, 21 Oct 2015 07:28:00 GMT" as epoch seconds.
DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
DATE_EPOCH = 1_445_412_480.0


def decision(outcome: Outcome, *, attempt: int = 1, age: float = 0.0, max_age: float = DAY,
             now: float = NOW, backoff: Backoff = Backoff(1.0, 300.0), seed: int = 7) -> Decision:
    return decide(outcome, attempt=attempt, age=age, max_age=max_age, now=now, backoff=backoff,
                  rng=random.Random(seed))


def retry(outcome: Outcome, **kwargs: object) -> Retry:
    result = decision(outcome, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, Retry), result
    return result


def dead(outcome: Outcome, **kwargs: object) -> DeadLetter:
    result = decision(outcome, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, DeadLetter), result
    return result


# --- 2xx --------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "body"), [
    (200, ""), (201, "{}"), (202, '{"success": true}'), (204, ""), (200, "accepted"),
    (200, '{"success": "false"}'), (200, '[{"success": false}]'), (299, ""),
])
def test_2xx_is_delivered(status: int, body: str) -> None:
    assert decision(Outcome(status=status, body=body)) == Delivered()


def test_2xx_saying_success_false_is_dead_lettered_with_its_message() -> None:
    result = dead(Outcome(status=200, body='{"success": false, "message": "x"}'))
    assert "x" in result.reason.split("success=false", 1)[1]
    assert "200" in result.reason
    assert result.code == "refused"


def test_2xx_saying_success_false_with_a_distinctive_message() -> None:
    result = dead(Outcome(status=202, body='{"success": false, "message": "device rejected the message"}'))
    assert "device rejected the message" in result.reason


def test_2xx_saying_success_false_without_a_message_is_still_dead_lettered() -> None:
    assert dead(Outcome(status=200, body='{"success": false}')).code == "refused"


def test_2xx_refusal_is_final_even_when_the_message_has_expired() -> None:
    assert dead(Outcome(status=200, body='{"success": false, "message": "m"}'), age=2 * DAY).code == "refused"


def test_2xx_refusal_message_is_bounded() -> None:
    result = dead(Outcome(status=200, body='{"success": false, "message": "%s"}' % ("y" * 10_000)))
    assert len(result.reason) < 600


def test_2xx_with_a_deeply_nested_body_is_delivered_not_a_crash() -> None:
    # letta.py keeps the first 4000 characters of a response body.
    assert decision(Outcome(status=200, body="[" * 4000)) == Delivered()


# --- non-retryable ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 409, 410, 413, 422])
def test_client_errors_are_dead_lettered_with_status_and_body(status: int) -> None:
    result = dead(Outcome(status=status, body='{"detail": "agent not found here"}'))
    assert str(status) in result.reason
    assert "agent not found here" in result.reason
    assert result.code == f"http_{status}"


@pytest.mark.parametrize("status", [300, 301, 302, 304, 307, 308])
def test_redirects_are_dead_lettered(status: int) -> None:
    assert dead(Outcome(status=status, body="moved")).code == f"http_{status}"


def test_non_retryable_failure_is_not_labelled_expired_when_old() -> None:
    assert dead(Outcome(status=400, body="bad"), attempt=9, age=2 * DAY).code == "http_400"


def test_dead_letter_reason_keeps_only_the_start_of_a_long_body() -> None:
    result = dead(Outcome(status=400, body="e" * 10_000))
    assert result.reason.startswith("HTTP 400: eee")
    assert len(result.reason) < 600


# --- retryable --------------------------------------------------------------------------


def test_404_asks_to_resolve_the_connection_again() -> None:
    result = retry(Outcome(status=404, body="connection not found"))
    assert result.reresolve is True
    assert result.code == "http_404"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_timeouts_rate_limits_and_server_errors_are_retried(status: int) -> None:
    result = retry(Outcome(status=status, body="busy"))
    assert result.code == f"http_{status}"
    assert result.reresolve is False
    assert str(status) in result.reason
    assert NOW + 0.5 <= result.at <= NOW + 1.0  # first attempt: between base/2 and base


@pytest.mark.parametrize("error", ["connect", "timeout", "transport", "unresolved"])
def test_errors_without_a_response_are_retried(error: str) -> None:
    result = retry(Outcome(error=error, detail="something happened"))
    assert result.code == error
    assert error in result.reason
    assert NOW + 0.5 <= result.at <= NOW + 1.0


def test_retry_waits_longer_on_later_attempts() -> None:
    first = retry(Outcome(status=503), attempt=1)
    fifth = retry(Outcome(status=503), attempt=5)
    assert first.at <= NOW + 1.0
    assert NOW + 8.0 <= fifth.at <= NOW + 16.0


def test_retry_after_seconds_is_honoured() -> None:
    assert retry(Outcome(status=503, retry_after="120"), backoff=TINY).at == NOW + 120


def test_retry_after_shorter_than_backoff_does_not_shorten_the_wait() -> None:
    # attempt 10 with base 1 s: the backoff alone is at least 150 s.
    result = retry(Outcome(status=503, retry_after="1"), attempt=10)
    assert result.at >= NOW + 150


@pytest.mark.parametrize(("value", "seconds"), [("7", 7.0), (" 7 ", 7.0), ("0", 0.0), ("3600", 3600.0)])
def test_retry_after_seconds_parses_delta_seconds(value: str, seconds: float) -> None:
    assert retry_after_seconds(value, NOW) == seconds


def test_retry_after_http_date_is_honoured() -> None:
    result = retry(Outcome(status=503, retry_after=DATE), now=DATE_EPOCH - 90, backoff=TINY)
    assert result.at == DATE_EPOCH
    assert retry_after_seconds(DATE, DATE_EPOCH - 90) == 90


def test_retry_after_date_in_the_past_means_no_extra_wait() -> None:
    assert retry_after_seconds(DATE, DATE_EPOCH + 1000) == 0.0
    result = retry(Outcome(status=503, retry_after=DATE), now=DATE_EPOCH + 1000)
    assert DATE_EPOCH + 1000.5 <= result.at <= DATE_EPOCH + 1001


@pytest.mark.parametrize("value", ["soon", "", "   ", "-5", "1.5", "5s", "Mon, 99 Foo 2015 99:99:99 GMT",
                                   "\u0661\u0662"])
def test_bad_retry_after_is_ignored(value: str) -> None:
    assert retry_after_seconds(value, NOW) is None
    with_header = retry(Outcome(status=503, retry_after=value), seed=3)
    without = retry(Outcome(status=503), seed=3)
    assert with_header.at == without.at


@pytest.mark.parametrize("value", ["999999999", "3601", "9" * 40, "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_huge_retry_after_is_capped(value: str) -> None:
    assert MAX_RETRY_AFTER == 3600.0
    assert retry(Outcome(status=503, retry_after=value), backoff=TINY).at == NOW + MAX_RETRY_AFTER


def test_429_pauses_every_delivery_until_the_retry() -> None:
    result = retry(Outcome(status=429, retry_after="30"), backoff=TINY)
    assert result.pause_until == result.at == NOW + 30


@pytest.mark.parametrize("outcome", [Outcome(status=500), Outcome(status=503, retry_after="30"),
                                     Outcome(status=404), Outcome(error="timeout")])
def test_other_retries_do_not_pause_everything(outcome: Outcome) -> None:
    assert retry(outcome).pause_until is None


@pytest.mark.parametrize("age", [DAY, DAY + 1, 10 * DAY])
def test_retryable_failure_past_max_age_is_dead_lettered_as_expired(age: float) -> None:
    result = dead(Outcome(status=503, body="busy"), attempt=7, age=age, max_age=DAY)
    assert result.code == "expired"
    assert "7 attempts" in result.reason
    assert "HTTP 503" in result.reason


def test_expired_after_errors_mentions_the_last_error() -> None:
    result = dead(Outcome(error="timeout", detail="read timed out"), attempt=3, age=HOUR, max_age=HOUR)
    assert result.code == "expired"
    assert "3 attempts" in result.reason and "read timed out" in result.reason


def test_retryable_failure_just_under_max_age_is_retried() -> None:
    assert retry(Outcome(status=503), attempt=50, age=DAY - 1, max_age=DAY).code == "http_503"


# --- Backoff ----------------------------------------------------------------------------

#: attempt → the longest wait for base 1 s, cap 300 s.
CEILINGS = {1: 1, 2: 2, 3: 4, 4: 8, 5: 16, 6: 32, 7: 64, 8: 128, 9: 256, 10: 300, 11: 300, 20: 300,
            100: 300, 1000: 300, 1024: 300}


@pytest.mark.parametrize(("attempt", "ceiling"), sorted(CEILINGS.items()))
def test_backoff_stays_between_half_and_whole_ceiling(attempt: int, ceiling: float,
                                                      rng: random.Random) -> None:
    backoff = Backoff(base=1.0, cap=300.0)
    delays = [backoff.delay(attempt, rng) for _ in range(500)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)


def test_backoff_never_exceeds_the_cap_over_many_attempts(rng: random.Random) -> None:
    backoff = Backoff(base=0.05, cap=0.2)
    delays = [backoff.delay(attempt, rng) for attempt in range(1, 1000) for _ in range(5)]
    assert max(delays) <= 0.2
    assert min(delays) >= 0.025


def test_backoff_scales_with_base() -> None:
    assert 2.5 <= Backoff(base=5.0, cap=300.0).delay(1, random.Random(1)) <= 5.0
    assert 10.0 <= Backoff(base=5.0, cap=300.0).delay(3, random.Random(1)) <= 20.0


def test_backoff_is_jittered_across_the_whole_range(rng: random.Random) -> None:
    delays = [Backoff(base=1.0, cap=300.0).delay(12, rng) for _ in range(2000)]
    assert min(delays) < 160 and max(delays) > 290
    assert len(set(delays)) > 1900


def test_backoff_with_the_same_seed_repeats() -> None:
    one = [Backoff().delay(n, random.Random(99)) for n in range(1, 20)]
    two = [Backoff().delay(n, random.Random(99)) for n in range(1, 20)]
    assert one == two


@pytest.mark.parametrize("attempt", [1025, 5000, 100_000])
def test_backoff_stays_capped_for_very_high_attempt_counts(attempt: int, rng: random.Random) -> None:
    # Reachable: RELAY_RETRY_CAP=5s with RELAY_MAX_AGE=24h allows ~17 000 attempts.
    assert 150.0 <= Backoff(base=1.0, cap=300.0).delay(attempt, rng) <= 300.0


# --- Outcome ----------------------------------------------------------------------------


def test_outcome_code_is_body_free() -> None:
    assert Outcome(status=503, body="secret upstream details").code == "http_503"
    assert Outcome(error="timeout", detail="read timed out after 30 s").code == "timeout"


def test_outcome_describe_includes_body_or_detail() -> None:
    assert Outcome(status=502, body="  bad gateway \n").describe() == "HTTP 502: bad gateway"
    assert Outcome(status=502).describe() == "HTTP 502"
    assert Outcome(error="connect", detail="refused").describe() == "connect: refused"
    assert Outcome(error="connect").describe() == "connect"
