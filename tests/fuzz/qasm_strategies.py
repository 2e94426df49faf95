"""Hypothesis strategies for OpenQASM 2/3 programs: mostly well-formed, often hostile.

`programs()` builds a program from parts (header, include, registers, statements) where each
part is usually valid and sometimes not: unknown gates, out-of-range indices, huge registers
and loops, deeply nested expressions, foreign includes, gate definitions, control flow.
`mutated()` then damages some programs at the character level (deletions, insertions, NUL
bytes, lone surrogates, non-ASCII), so the parsers see near-misses as well as garbage.
"""

from __future__ import annotations

from hypothesis import strategies as st

GATES_1 = ["h", "x", "y", "z", "s", "sdg", "t", "tdg", "sx"]
GATES_1P = ["rx", "ry", "rz", "p", "u1"]
GATES_2 = ["cx", "cz", "swap", "cy", "ch"]
GATES_2P = ["cp", "crx", "rzz"]
HOSTILE_INCLUDES = [
    "/etc/passwd",
    "../../etc/passwd",
    "stdgates.inc/../../../etc/hostname",
    "qelib1.inc\x00.txt",
    "/proc/self/environ",
    "missing.inc",
]


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> str:
    """An angle: numbers, pi, arithmetic and functions, nested to `depth` and beyond."""
    leaf = draw(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda f: f"{f!r}"),
            st.sampled_from(["pi", "π", "tau", "euler", "0", "1e308", "-1e-308", "2**64"]),
            st.integers(-(10**20), 10**20).map(str),
        )
    )
    if depth > 3 or draw(st.booleans()):
        return leaf
    kind = draw(st.sampled_from(["bin", "fn", "neg", "deep"]))
    inner = draw(expressions(depth + 1))
    if kind == "bin":
        op = draw(st.sampled_from(["+", "-", "*", "/", "**", "%"]))
        return f"({inner} {op} {leaf})"
    if kind == "fn":
        return f"{draw(st.sampled_from(['sin', 'cos', 'sqrt', 'exp', 'ln', 'arccos']))}({inner})"
    if kind == "neg":
        return f"-{inner}"
    nesting = draw(st.integers(10, 400))  # deeply nested parentheses
    return "(" * nesting + inner + ")" * nesting


@st.composite
def statements(draw: st.DrawFn, qubits: int, bits: int, qasm2: bool) -> str:
    """One statement over `qubits` qubits and `bits` bits (indices sometimes out of range)."""
    q_max = max(qubits - 1, 0)
    index = st.one_of(st.integers(0, q_max), st.integers(q_max + 1, q_max + 5))
    kind = draw(
        st.sampled_from(
            ["g1", "g1", "g1p", "g2", "g2", "g2p", "measure", "reset", "barrier", "unknown"]
            + ([] if qasm2 else ["for", "if", "gatedef", "let"])
        )
    )
    q = draw(index)
    if kind == "g1":
        return f"{draw(st.sampled_from(GATES_1))} q[{q}];"
    if kind == "g1p":
        return f"{draw(st.sampled_from(GATES_1P))}({draw(expressions())}) q[{q}];"
    if kind in ("g2", "g2p"):
        other = draw(index)
        gate = draw(st.sampled_from(GATES_2 if kind == "g2" else GATES_2P))
        params = "" if kind == "g2" else f"({draw(expressions())})"
        return f"{gate}{params} q[{q}], q[{other}];"
    if kind == "measure":
        c = draw(st.integers(0, bits + 1))
        return f"measure q[{q}] -> c[{c}];" if qasm2 else f"c[{c}] = measure q[{q}];"
    if kind == "reset":
        return f"reset q[{q}];"
    if kind == "barrier":
        return "barrier q;"
    if kind == "unknown":
        name = draw(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True))
        return f"{name} q[{q}];"
    if kind == "for":
        stop = draw(st.sampled_from([3, 100, 10**4, 10**7, 2**40]))
        return f"for int i in [0:{stop}] {{ h q[{q}]; }}"
    if kind == "if":
        return f"if (c[0] == 1) {{ x q[{q}]; }}"
    if kind == "gatedef":
        # A gate that expands to 2**depth applications of h: a gate-definition bomb.
        depth = draw(st.integers(1, 25))
        defs = ["gate g0 a { h a; }"] + [
            f"gate g{i} a {{ g{i - 1} a; g{i - 1} a; }}" for i in range(1, depth)
        ]
        return " ".join(defs) + f" g{depth - 1} q[{q}];"
    return f"let alias = q[0:{q}];"


@st.composite
def programs(draw: st.DrawFn, max_qubits: int = 12) -> str:
    """A whole program; usually parseable, often over a limit or subtly wrong."""
    qasm2 = draw(st.booleans())
    header = draw(
        st.sampled_from(
            ["OPENQASM 2.0;"] if qasm2 else ["OPENQASM 3.0;", "OPENQASM 3;", "", "OPENQASM 9.9;"]
        )
    )
    standard = "qelib1.inc" if qasm2 else "stdgates.inc"
    include = draw(st.sampled_from([standard] * 6 + HOSTILE_INCLUDES + [""]))
    qubits = draw(
        st.one_of(st.integers(1, max_qubits), st.sampled_from([0, 64, 1000, 10**6, 2**31]))
    )
    bits = draw(st.integers(0, max(qubits, 1) if qubits < 100 else 4))
    lines = [header]
    if include:
        lines.append(f'include "{include}";')
    if qasm2:
        lines += [f"qreg q[{qubits}];", f"creg c[{bits}];"]
    else:
        lines += [f"qubit[{qubits}] q;", f"bit[{bits}] c;"]
    small = min(qubits, max_qubits)
    lines += draw(st.lists(statements(small, bits, qasm2), max_size=12))
    return "\n".join(lines) + "\n"


@st.composite
def mutated(draw: st.DrawFn, max_qubits: int = 12) -> str:
    """A program, damaged at the character level half of the time."""
    text = draw(programs(max_qubits))
    if draw(st.booleans()):
        return text
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["delete", "insert", "nul", "surrogate", "unicode"]))
        if action == "delete":
            text = text[:position] + text[position + draw(st.integers(1, 10)) :]
        elif action == "insert":
            text = (
                text[:position] + draw(st.sampled_from(list(";{}[]()\"'/\\*=-+"))) + text[position:]
            )
        elif action == "nul":
            text = text[:position] + "\x00" + text[position:]
        elif action == "surrogate":
            text = text[:position] + "\ud800" + text[position:]
        else:
            text = text[:position] + draw(st.text(min_size=1, max_size=3)) + text[position:]
    return text
