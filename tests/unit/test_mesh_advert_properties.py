"""FR-001 as properties (hypothesis): every advert the schema allows survives the wire and is
accepted from its own node; the same bytes from any other signer, or dated past the clock
skew, or with a field broken, are refused with the reason's kind."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from qtask.mesh.adverts import Rejection, check_advert
from qtask.mesh.protocol import MAX_CLOCK_SKEW_S, Advert, Availability, NoiseSpec

NOW = 1_800_000_000.0
peer_ids = st.text("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz", min_size=8,
                   max_size=52)  # fmt: skip
probabilities = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def adverts(draw: st.DrawFn) -> Advert:
    low = draw(st.integers(1, 20))
    capacity = draw(st.integers(1, 64))
    return Advert(
        node_id=draw(peer_ids),
        service_type=draw(st.sampled_from(["aer", "gate-service"])),
        gates=tuple(
            draw(
                st.lists(
                    st.sampled_from(["h", "x", "cx", "rz", "ccx", "measure"]),
                    min_size=1,
                    max_size=6,
                    unique=True,
                )
            )
        ),
        qubit_range=(low, draw(st.integers(low, 30))),
        fidelity=draw(probabilities),
        fidelity_measured_at=NOW - draw(st.floats(0, 3600)),
        noise=NoiseSpec(depolarizing_1q=draw(probabilities), readout=draw(probabilities)),
        availability=draw(st.sampled_from(list(Availability))),
        capacity=capacity,
        in_use=draw(st.integers(0, capacity)),
        timestamp=NOW + draw(st.floats(-600, MAX_CLOCK_SKEW_S)),
        seq=draw(st.integers(0, 2**53)),
    )


@given(adverts())
def test_a_valid_advert_round_trips_and_is_accepted_from_its_own_node(advert: Advert) -> None:
    assert check_advert(advert.model_dump_json().encode(), signer=advert.node_id, now=NOW) == advert


@given(adverts(), peer_ids)
def test_the_same_advert_signed_by_another_peer_is_refused_as_forged(
    advert: Advert, signer: str
) -> None:
    result = check_advert(advert.model_dump_json().encode(), signer=signer, now=NOW)
    if signer == advert.node_id:
        assert result == advert
    else:
        assert isinstance(result, Rejection)
        assert result.reason == "forged"


@given(adverts(), st.floats(MAX_CLOCK_SKEW_S + 0.001, 1e6))
def test_an_advert_dated_past_the_clock_skew_is_refused(advert: Advert, ahead: float) -> None:
    future = advert.model_copy(update={"timestamp": NOW + ahead})
    result = check_advert(future.model_dump_json().encode(), signer=advert.node_id, now=NOW)
    assert isinstance(result, Rejection)
    assert result.reason == "future"


@given(
    adverts(),
    st.sampled_from([
        ("fidelity", 1.5), ("capacity", 0), ("qubit_range", [5, 2]), ("gates", []),
        ("version", 2), ("seq", -1), ("availability", "maybe"), ("extra_field", 1),
    ]),
)  # fmt: skip
def test_a_broken_field_is_refused_with_its_reason(
    advert: Advert, broken: tuple[str, object]
) -> None:
    data = json.loads(advert.model_dump_json())
    data[broken[0]] = broken[1]
    result = check_advert(json.dumps(data).encode(), signer=advert.node_id, now=NOW)
    assert isinstance(result, Rejection)
    assert result.reason == ("version" if broken[0] == "version" else "schema")
