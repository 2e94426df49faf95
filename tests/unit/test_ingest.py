"""Circuit ingestion (parsing, includes, limits) and running ingested circuits on Aer in-process."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from qiskit import QuantumCircuit
from qiskit.quantum_info import Operator

from qtask.circuits.ingest import (
    IngestedCircuit,
    Limits,
    NeedsSlowPathError,
    describe,
    dump_qpy,
    ingest,
    load_program,
)
from qtask.domain.task import Encoding
from qtask.errors import CircuitError, CircuitTooLargeError, InvalidRequestError
from qtask.execution import aer
from qtask.execution.aer import init_process, run_items
from qtask.execution.items import RunItem
from qtask_testkit import run_item as make_run_item

LIMITS = Limits(
    max_circuit_bytes=512 << 10,
    max_qubits=100,
    max_operations=100_000,
    max_statevector_bytes=4096 << 20,
)

HEADER3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'

BELL3 = HEADER3 + "qubit[2] q;\nbit[2] c;\nh q[0];\ncx q[0], q[1];\nc = measure q;\n"

BELL2 = (
    'OPENQASM 2.0; include "qelib1.inc"; qreg q[2]; creg c[2]; '
    "h q[0]; cx q[0],q[1]; measure q -> c;"
)

# `pi` and `gate` definitions are beyond the native OpenQASM 3 importer: the ANTLR path reads them.
PI3 = HEADER3 + "qubit[1] q;\nbit[1] c;\nrx(pi/2) q[0];\nc[0] = measure q[0];\n"

GATE3 = (
    HEADER3
    + "gate bell a, b { h a; cx a, b; }\n"
    + "qubit[2] q;\nbit[2] c;\nbell q[0], q[1];\nc = measure q;\n"
)

# Line 4 lacks its semicolon.
MISSING_SEMICOLON = HEADER3 + "qubit[2] q;\nh q[0]\ncx q[0], q[1];\n"


def qasm3(qubits: int, body: str, *, clbits: bool = True, measure: bool = True) -> str:
    source = HEADER3 + f"qubit[{qubits}] q;\n"
    if clbits:
        source += f"bit[{qubits}] c;\n"
    source += body
    if measure:
        source += "c = measure q;\n"
    return source


def ghz(qubits: int) -> str:
    body = "h q[0];\n" + "".join(f"cx q[{i}], q[{i + 1}];\n" for i in range(qubits - 1))
    return qasm3(qubits, body)


def limits(**changes: int) -> Limits:
    values = {
        "max_circuit_bytes": LIMITS.max_circuit_bytes,
        "max_qubits": LIMITS.max_qubits,
        "max_operations": LIMITS.max_operations,
        "max_statevector_bytes": LIMITS.max_statevector_bytes,
    }
    values.update(changes)
    return Limits(**values)


def unitary_of(circuit: QuantumCircuit) -> Operator:
    return Operator(circuit.remove_final_measurements(inplace=False))


# --- parsing ---------------------------------------------------------------------------------


def test_bell_qasm3_parses_natively() -> None:
    result = ingest(BELL3, LIMITS)
    assert isinstance(result, IngestedCircuit)
    assert result.program is None
    info = result.info
    assert info.encoding is Encoding.QASM3
    assert info.num_qubits == 2
    assert info.num_clbits == 2
    assert info.num_operations == 4  # h, cx and two measurements
    assert info.clifford
    assert not info.needs_transpile
    assert info.measured


def test_bell_qasm3_is_fast_path() -> None:
    assert ingest(BELL3, LIMITS, fast_only=True).info.encoding is Encoding.QASM3


def test_source_without_version_line_reads_as_qasm3() -> None:
    source = BELL3.replace("OPENQASM 3.0;\n", "")
    assert ingest(source, LIMITS).info.encoding is Encoding.QASM3


def test_qasm2_parses_with_qasm2_encoding() -> None:
    result = ingest(BELL2, LIMITS)
    assert result.info.encoding is Encoding.QASM2
    assert result.program is None
    assert result.info.num_qubits == 2
    assert result.info.measured


def test_qasm2_version_after_a_comment() -> None:
    source = "// a comment\n  // another\n" + BELL2
    assert ingest(source, LIMITS).info.encoding is Encoding.QASM2


def test_unsupported_version_is_refused() -> None:
    with pytest.raises(CircuitError, match="version 4"):
        ingest("OPENQASM 4.0;\nqubit q;\n", LIMITS)


@pytest.mark.parametrize("source", [PI3, GATE3], ids=["pi", "gate"])
def test_slow_path_falls_back_to_antlr_and_stores_qpy(source: str) -> None:
    result = ingest(source, LIMITS)
    assert result.info.encoding is Encoding.QPY
    assert isinstance(result.program, bytes)
    assert result.program


@pytest.mark.parametrize("source", [PI3, GATE3], ids=["pi", "gate"])
def test_fast_only_refuses_slow_path(source: str) -> None:
    with pytest.raises(NeedsSlowPathError):
        ingest(source, LIMITS, fast_only=True)


def test_qpy_program_of_pi_circuit_loads_back_equivalent() -> None:
    result = ingest(PI3, LIMITS)
    circuit = load_program(result.info.encoding, PI3, result.program)
    expected = QuantumCircuit(1)
    expected.rx(math.pi / 2, 0)
    assert circuit.num_qubits == 1
    assert circuit.num_clbits == 1
    assert unitary_of(circuit).equiv(Operator(expected))
    assert circuit.count_ops()["measure"] == 1


def test_qpy_program_of_gate_circuit_loads_back_equivalent() -> None:
    result = ingest(GATE3, LIMITS)
    circuit = load_program(result.info.encoding, GATE3, result.program)
    expected = QuantumCircuit(2)
    expected.h(0)
    expected.cx(0, 1)
    assert circuit.num_qubits == 2
    assert unitary_of(circuit).equiv(Operator(expected))


def test_load_program_rebuilds_native_encodings() -> None:
    for source, encoding in ((BELL3, Encoding.QASM3), (BELL2, Encoding.QASM2)):
        circuit = load_program(encoding, source, None)
        assert circuit.num_qubits == 2
        assert circuit.count_ops() == {"h": 1, "cx": 1, "measure": 2}


def test_load_program_qpy_without_program_is_an_error() -> None:
    with pytest.raises(CircuitError, match="no stored program"):
        load_program(Encoding.QPY, PI3, None)


def test_dump_qpy_roundtrip_through_load_program() -> None:
    circuit = QuantumCircuit(3)
    circuit.h(0)
    circuit.ccx(0, 1, 2)
    loaded = load_program(Encoding.QPY, "", dump_qpy(circuit))
    assert Operator(loaded).equiv(Operator(circuit))


# --- syntax errors -----------------------------------------------------------------------------


def test_qasm3_syntax_error_names_line_and_column() -> None:
    with pytest.raises(CircuitError) as info:
        ingest(MISSING_SEMICOLON, LIMITS)
    message = str(info.value)
    assert message.startswith("Invalid OpenQASM 3: ")
    assert "line" in message
    assert "column" in message
    # The parser stops at the token after the missing ';' (the `cx` starting line 5) and says so.
    assert "line 5, column 1" in message
    assert "';' missing" in message
    assert info.value.status_code == 400


def test_qasm3_missing_semicolon_within_a_line_names_that_line() -> None:
    source = HEADER3 + "qubit[2] q;\nh q[0] cx q[0], q[1];\n"
    with pytest.raises(CircuitError, match=r"line 4, column 8"):
        ingest(source, LIMITS)


def test_qasm3_undefined_gate_names_the_line() -> None:
    source = "OPENQASM 3.0;\nqubit q;\nfoo q;\n"
    with pytest.raises(CircuitError, match=r"line 3, column 1: .*'foo'"):
        ingest(source, LIMITS)


def test_qasm3_syntax_error_with_fast_only_needs_slow_path() -> None:
    # Only the ANTLR importer gives the precise message, so the fast path hands it over.
    with pytest.raises(NeedsSlowPathError):
        ingest(MISSING_SEMICOLON, LIMITS, fast_only=True)


def test_qasm3_syntax_error_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CircuitError):
        ingest(MISSING_SEMICOLON, LIMITS)
    out, err = capfd.readouterr()
    assert out == ""
    assert err == ""


def test_qasm2_syntax_error_is_a_circuit_error() -> None:
    source = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nh q[0]\ncx q[0],q[1];\n'
    with pytest.raises(CircuitError, match="Invalid OpenQASM 2"):
        ingest(source, LIMITS)


def test_qasm2_syntax_error_names_line_and_column() -> None:
    source = 'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nh q[0]\ncx q[0],q[1];\n'
    with pytest.raises(CircuitError, match=r"line 5, column 1"):
        ingest(source, LIMITS)


# --- refused sources -------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["", "   ", "\n\t \n"])
def test_empty_source_is_refused(source: str) -> None:
    with pytest.raises(CircuitError, match="empty"):
        ingest(source, LIMITS)


def test_nul_byte_is_refused() -> None:
    with pytest.raises(CircuitError, match="NUL"):
        ingest(BELL3 + "\x00", LIMITS)


def test_circuit_without_qubits_is_refused() -> None:
    with pytest.raises(CircuitError, match="no qubits"):
        ingest("OPENQASM 3.0;\nbit[2] c;\n", LIMITS)


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "../x.inc", "stdgates.inc/../../etc/passwd", "other.inc", ""],
)
def test_include_of_other_files_is_refused(name: str) -> None:
    source = f'OPENQASM 3.0;\ninclude "{name}";\nqubit q;\n'
    with pytest.raises(CircuitError) as info:
        ingest(source, LIMITS)
    message = str(info.value)
    assert message.startswith("Line 2:")
    assert "cannot be included" in message
    assert "stdgates.inc" in message


def test_include_of_other_files_is_refused_in_qasm2() -> None:
    source = 'OPENQASM 2.0;\ninclude "/etc/passwd";\nqreg q[1];\n'
    with pytest.raises(CircuitError, match="cannot be included"):
        ingest(source, LIMITS)


def test_include_in_comment_with_bad_path_is_refused() -> None:
    for source in (
        'OPENQASM 3.0;\n// include "/etc/passwd";\nqubit q;\n',
        'OPENQASM 3.0;\n/* include "/etc/passwd"; */\nqubit q;\n',
    ):
        with pytest.raises(CircuitError, match="Line 2"):
            ingest(source, LIMITS)


def test_malformed_include_is_refused() -> None:
    with pytest.raises(CircuitError, match="this include"):
        ingest("OPENQASM 3.0;\ninclude stdgates;\nqubit q;\n", LIMITS)


def test_allowed_include_in_a_comment_is_fine() -> None:
    source = '// include "stdgates.inc";\n' + BELL3
    assert ingest(source, LIMITS).info.num_qubits == 2


def test_single_quoted_include_passes_the_include_check() -> None:
    # Whatever the parser then makes of it, the include rule itself does not refuse it.
    from qtask.circuits.ingest import _check_includes

    _check_includes("OPENQASM 3.0;\ninclude 'stdgates.inc';\nqubit q;\nh q;\n")


def test_single_quoted_stdgates_include_is_allowed() -> None:
    source = "OPENQASM 3.0;\ninclude 'stdgates.inc';\nqubit q;\nbit c;\nh q;\nc = measure q;\n"
    try:
        result = ingest(source, LIMITS)
    except BaseException as exc:  # turn the escaping panic into an ordinary test failure
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        pytest.fail(f"ingest raised {type(exc).__name__}: {exc}")
    assert result.info.num_qubits == 1


# --- limits ------------------------------------------------------------------------------------


def test_circuit_bytes_limit() -> None:
    small = limits(max_circuit_bytes=len(BELL3.encode()))
    assert ingest(BELL3, small).info.num_qubits == 2
    smaller = limits(max_circuit_bytes=len(BELL3.encode()) - 1)
    with pytest.raises(CircuitTooLargeError, match="bytes") as info:
        ingest(BELL3, smaller)
    assert info.value.status_code == 422


def test_circuit_bytes_limit_counts_utf8_bytes() -> None:
    source = BELL3 + "// " + "é" * 100 + "\n"  # 200 bytes of comment, 100 characters
    with pytest.raises(CircuitTooLargeError):
        ingest(source, limits(max_circuit_bytes=len(source) + 50))


def test_qubit_limit() -> None:
    assert ingest(ghz(5), limits(max_qubits=5)).info.num_qubits == 5
    with pytest.raises(CircuitTooLargeError, match="6 qubits; the limit is 5"):
        ingest(ghz(6), limits(max_qubits=5))


def test_operation_limit() -> None:
    source = qasm3(1, "x q[0];\n" * 10, measure=False)
    assert ingest(source, limits(max_operations=10)).info.num_operations == 10
    with pytest.raises(CircuitTooLargeError, match="11 operations; the limit is 10"):
        ingest(qasm3(1, "x q[0];\n" * 11, measure=False), limits(max_operations=10))


def test_wide_non_clifford_circuit_is_admitted_for_mps() -> None:
    # Its statevector (16 TiB) fits no limit: it is admitted, to run with matrix product state.
    result = ingest(qasm3(40, "h q[0];\nt q[0];\n"), LIMITS)
    assert result.info.num_qubits == 40
    assert result.info.clifford is False


def test_statevector_limit_does_not_refuse_up_to_max_qubits() -> None:
    tight = limits(max_statevector_bytes=16 << 10, max_qubits=12)
    assert ingest(qasm3(12, "t q[0];\n"), tight).info.num_qubits == 12
    with pytest.raises(CircuitTooLargeError, match="13 qubits; the limit is 12"):
        ingest(qasm3(13, "t q[0];\n"), tight)


def test_clifford_circuit_is_exempt_from_memory_limit() -> None:
    result = ingest(ghz(60), LIMITS)
    assert result.info.num_qubits == 60
    assert result.info.clifford
    assert result.info.num_operations == 60 + 60  # h + 59 cx + 60 measurements


def test_qubit_limit_applies_to_clifford_circuits() -> None:
    with pytest.raises(CircuitTooLargeError, match="qubits"):
        ingest(ghz(60), limits(max_qubits=50))


# --- describe ------------------------------------------------------------------------------


def test_describe_unmeasured_circuit() -> None:
    result = ingest(qasm3(2, "h q[0];\n", measure=False), LIMITS)
    assert result.info.measured is False


def test_describe_custom_gate_needs_transpile() -> None:
    result = ingest(GATE3, LIMITS)
    assert result.info.needs_transpile is True
    assert result.info.clifford is False


def test_describe_non_clifford() -> None:
    info = ingest(PI3, LIMITS).info
    assert info.clifford is False
    assert info.needs_transpile is False


@pytest.mark.parametrize(
    ("angle", "clifford"),
    [
        *[("pi/2", True), ("-pi/2", True), ("pi", True), ("3*pi/2", True), ("0", True)],
        *[("0.3", False), ("pi/4", False), ("1.5707963268", False)],
    ],
)
def test_rz_is_clifford_only_at_exact_quarter_turns(angle: str, clifford: bool) -> None:
    # Aer's stabilizer method takes rz at exact multiples of pi/2 and refuses any other angle.
    source = (
        'OPENQASM 3.0; include "stdgates.inc"; qubit[2] q; bit[2] c;'
        f" h q[0]; rz({angle}) q[0]; cx q[0], q[1]; c = measure q;"
    )
    assert ingest(source, LIMITS).info.clifford is clifford


def test_ecr_and_quarter_turn_rz_as_transpiled_for_ibm_devices_are_clifford() -> None:
    circuit = QuantumCircuit(2, 2)
    circuit.rz(math.pi / 2, 0)
    circuit.sx(0)
    circuit.ecr(0, 1)
    circuit.rz(-math.pi / 2, 1)
    circuit.measure([0, 1], [0, 1])
    assert describe(circuit, Encoding.QPY).clifford is True
    circuit.rz(0.1, 0)
    assert describe(circuit, Encoding.QPY).clifford is False


def test_describe_looks_inside_control_flow() -> None:
    circuit = QuantumCircuit(2, 1)
    circuit.h(0)
    with circuit.if_test((circuit.clbits[0], 1)):
        circuit.t(1)
        circuit.measure(1, 0)
    info = describe(circuit, Encoding.QPY)
    assert info.clifford is False  # the t inside the branch counts
    assert info.measured is True  # so does the measurement
    assert info.needs_transpile is False
    assert info.encoding is Encoding.QPY


def test_describe_directly() -> None:
    circuit = QuantumCircuit(3)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.swap(1, 2)
    info = describe(circuit, Encoding.QASM3)
    assert info.num_qubits == 3
    assert info.num_clbits == 0
    assert info.num_operations == 3
    assert info.clifford
    assert not info.measured


def test_error_hierarchy() -> None:
    assert issubclass(CircuitTooLargeError, CircuitError)
    assert issubclass(CircuitError, InvalidRequestError)
    assert CircuitError.status_code == 400
    assert CircuitTooLargeError.status_code == 422


# --- running on Aer in-process -------------------------------------------------------------


@pytest.fixture(scope="module")
def simulator() -> Iterator[None]:
    init_process(1, 1024)
    yield
    aer._simulator = None
    aer._pass_manager = None


def run_item(task_id: str, source: str, shots: int, seed: int | None) -> RunItem:
    return make_run_item(task_id, source, LIMITS, shots, seed)


@pytest.mark.usefixtures("simulator")
def test_aer_runs_bell_with_seed() -> None:
    [outcome] = run_items([run_item("bell", BELL3, 200, 7)])
    assert outcome.task_id == "bell"
    assert outcome.error is None
    assert outcome.counts is not None
    assert set(outcome.counts) <= {"00", "11"}
    assert sum(outcome.counts.values()) == 200
    assert outcome.seconds >= 0


@pytest.mark.usefixtures("simulator")
def test_aer_same_seed_gives_same_counts() -> None:
    item = run_item("bell", BELL3, 500, 1234)
    first = run_items([item])[0].counts
    second = run_items([item])[0].counts
    assert first == second
    assert first is not None
    assert set(first) == {"00", "11"}


@pytest.mark.usefixtures("simulator")
def test_aer_seeded_counts_do_not_depend_on_batch_neighbours() -> None:
    item = run_item("seeded", BELL3, 300, 99)
    alone = run_items([item])[0].counts
    other = run_item("other", ghz(3), 300, None)
    together = run_items([other, item, other])
    assert together[1].counts == alone


@pytest.mark.usefixtures("simulator")
def test_aer_qasm2_circuit_runs() -> None:
    [outcome] = run_items([run_item("q2", BELL2, 100, 3)])
    assert outcome.counts is not None
    assert set(outcome.counts) <= {"00", "11"}
    assert sum(outcome.counts.values()) == 100


@pytest.mark.usefixtures("simulator")
def test_aer_unmeasured_circuit_measures_every_qubit() -> None:
    source = qasm3(3, "x q[0];\nh q[1];\n", clbits=False, measure=False)
    item = run_item("nomeasure", source, 64, 5)
    assert item.measured is False
    [outcome] = run_items([item])
    assert outcome.counts is not None
    assert sum(outcome.counts.values()) == 64
    assert all(len(key) == 3 for key in outcome.counts)
    # Qubit 0 is always 1 (rightmost bit), qubit 2 always 0.
    assert set(outcome.counts) <= {"001", "011"}


@pytest.mark.usefixtures("simulator")
def test_aer_unmeasured_circuit_with_declared_bits_keys_have_qubit_count_length() -> None:
    source = qasm3(3, "x q[0];\nh q[1];\n", measure=False)
    [outcome] = run_items([run_item("nomeasure", source, 64, 5)])
    assert outcome.counts is not None
    assert all(len(key) == 3 for key in outcome.counts)


@pytest.mark.usefixtures("simulator")
def test_aer_pi_circuit_from_qpy_runs() -> None:
    [outcome] = run_items([run_item("pi", PI3, 100, 11)])
    assert outcome.error is None
    assert outcome.counts is not None
    assert set(outcome.counts) <= {"0", "1"}
    assert sum(outcome.counts.values()) == 100


@pytest.mark.usefixtures("simulator")
def test_aer_custom_gate_circuit_is_transpiled_and_runs() -> None:
    item = run_item("gate", GATE3, 128, 3)
    assert item.needs_transpile
    [outcome] = run_items([item])
    assert outcome.error is None, outcome.error
    assert outcome.counts is not None
    assert set(outcome.counts) <= {"00", "11"}
    assert sum(outcome.counts.values()) == 128


@pytest.mark.usefixtures("simulator")
def test_aer_unloadable_item_fails_alone() -> None:
    good = run_item("good", BELL3, 50, None)
    bad = RunItem(
        task_id="bad",
        encoding=Encoding.QPY,
        source="",
        program=None,
        shots=50,
        seed=None,
        measured=True,
        needs_transpile=False,
        num_qubits=2,
        clifford=True,
    )
    outcomes = run_items([bad, good])
    assert [o.task_id for o in outcomes] == ["bad", "good"]
    assert outcomes[0].counts is None
    assert outcomes[0].error is not None
    assert outcomes[0].error.startswith("Cannot prepare")
    assert outcomes[1].counts is not None
    assert sum(outcomes[1].counts.values()) == 50


@pytest.mark.usefixtures("simulator")
def test_aer_unseeded_batch_keeps_item_order() -> None:
    items = [
        run_item("a", BELL3, 10, None),
        run_item("b", ghz(3), 20, None),
        run_item("c", BELL3, 10, None),
    ]
    outcomes = run_items(items)
    assert [o.task_id for o in outcomes] == ["a", "b", "c"]
    assert [sum((o.counts or {}).values()) for o in outcomes] == [10, 20, 10]
    assert set(outcomes[1].counts or {}) <= {"000", "111"}


# --- size bombs: refused before any parser allocates or expands them ----------------------------


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        (HEADER3 + "qubit[2147483648] q;", "declares 2147483648 qubits; the limit is 10000"),
        (HEADER3 + "qubit[6000] a;\nqubit[6000] b;", "declares 12000 qubits"),
        (HEADER3 + "qubit[1_000_000] q;", "declares 1000000 qubits"),
        ('OPENQASM 2.0; include "qelib1.inc"; qreg q[2147483648];', "declares 2147483648"),
        (HEADER3 + "qubit[2] q;\nbit[2000000000] c;", "declares 2000000000 classical bits"),
        ('OPENQASM 2.0; include "qelib1.inc"; qreg q[2]; creg c[900000];', "classical bits"),
    ],
)
def test_huge_registers_are_refused_before_parsing(source: str, needle: str) -> None:
    # Qiskit's parsers allocate every declared qubit first: 2**31 of them take minutes.
    with pytest.raises(CircuitTooLargeError, match=needle):
        ingest(source, LIMITS, fast_only=True)


def test_a_commented_out_register_does_not_count() -> None:
    source = HEADER3 + "// qubit[5000] old;\n/* qubit[9000] older; */\n" + BELL3[len(HEADER3) :]
    assert ingest(source, LIMITS, fast_only=True).info.num_qubits == 2


@pytest.mark.parametrize("size", ["n", "2 * 1000000000", "0x7fffffff"])
def test_a_register_size_that_is_not_a_number_is_parsed_off_the_event_loop(size: str) -> None:
    # Only a parser can work it out, so never inline; in the parser process Qiskit's
    # converter refuses constants, and a deadline and a memory cap bound the rest.
    source = HEADER3 + f"const uint n = 3;\nqubit[{size}] q;\nh q[0];\n"
    with pytest.raises(NeedsSlowPathError):
        ingest(source, LIMITS, fast_only=True)
    with pytest.raises(CircuitError):
        ingest(source, LIMITS)


def test_a_gate_definition_bomb_is_refused_without_expanding_it() -> None:
    # g24 applies h 2**24 times; the converter would copy definitions for hours.
    defs = ["gate g0 a { h a; }"] + [
        f"gate g{i} a {{ g{i - 1} a; g{i - 1} a; }}" for i in range(1, 25)
    ]
    source = HEADER3 + "qubit[1] q;\n" + "\n".join(defs) + "\ng24 q[0];\n"
    with pytest.raises(CircuitTooLargeError, match="Gate 'g17' expands to 131072 operations"):
        ingest(source, LIMITS)


def test_gate_definitions_within_the_limit_count_expanded() -> None:
    defs = ["gate g0 a { h a; }"] + [
        f"gate g{i} a {{ g{i - 1} a; g{i - 1} a; }}" for i in range(1, 6)
    ]
    source = HEADER3 + "qubit[1] q;\n" + "\n".join(defs) + "\ng5 q[0];\ng5 q[0];\n"
    assert ingest(source, LIMITS).info.num_operations == 2 * 32


@pytest.mark.parametrize(
    ("stop", "allowed"), [(99, True), (200_000, False), (2**40, False), (2**70, False)]
)
def test_for_loops_count_every_iteration(stop: int, allowed: bool) -> None:
    source = HEADER3 + f"qubit[1] q;\nfor int i in [0:{stop}] {{ h q[0]; }}\n"
    if allowed:
        assert ingest(source, LIMITS).info.num_operations == stop + 1
    else:
        with pytest.raises(CircuitTooLargeError, match="operations; the limit is 100000"):
            ingest(source, LIMITS)


def test_native_parser_diagnostics_never_reach_the_process_output(
    capfd: pytest.CaptureFixture[str],
) -> None:
    for _ in range(2):  # the second parse uses the descriptor the first one opened
        with pytest.raises(CircuitError):
            ingest('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit q;\nnotagate q;', LIMITS)
        print("still here")  # descriptor 1 is back where it was
    out, err = capfd.readouterr()
    assert (out, "notagate" in err) == ("still here\nstill here\n", False)


# --- admission counts the qubits a circuit uses, not those it declares ---------------------------

# Bell on two qubits of a 127-qubit device, as a circuit transpiled for it reads: every qubit
# declared, a barrier across all of them (a directive: no use), three classical bits.
BELL_ON_127 = HEADER3 + (
    "qubit[127] q;\nbit[3] c;\nh q[5];\ncx q[5], q[90];\nbarrier q;\n"
    "c[0] = measure q[5];\nc[1] = measure q[90];\n"
)


def test_a_bell_circuit_declaring_127_qubits_is_admitted_as_the_2_it_uses() -> None:
    info = ingest(BELL_ON_127, LIMITS).info
    assert info.num_qubits == 2
    assert info.num_clbits == 3


def test_a_circuit_using_101_qubits_is_refused_with_the_qubit_limit_message() -> None:
    gates = "".join(f"x q[{i}];\n" for i in range(101))
    source = HEADER3 + "qubit[127] q;\nbit[1] c;\n" + gates + "c[0] = measure q[0];\n"
    with pytest.raises(
        CircuitTooLargeError, match=r"^The circuit has 101 qubits; the limit is 100\.$"
    ):
        ingest(source, LIMITS)


def test_a_circuit_that_measures_nothing_counts_every_declared_qubit() -> None:
    # The worker measures every qubit of such a circuit, so every one is used.
    source = HEADER3 + "qubit[127] q;\nh q[0];\n"
    with pytest.raises(CircuitTooLargeError, match="has 127 qubits"):
        ingest(source, LIMITS)


@pytest.mark.usefixtures("simulator")
def test_aer_runs_a_bell_declaring_127_qubits_with_keys_as_wide_as_its_bits() -> None:
    # The simulator's statevector bound (1024 MiB: 26 qubits) would refuse 127 qubits: the run
    # simulates the two used ones, and the keys keep the three declared classical bits.
    [outcome] = run_items([run_item("wide", BELL_ON_127, 300, 11)])
    assert outcome.error is None
    assert outcome.counts is not None
    assert set(outcome.counts) == {"000", "011"}
    assert sum(outcome.counts.values()) == 300
