"""Per-gate semantics (the default; paper Appendix B, DESIGN §7) and the Localization object.

Output semantics (a minimal cut, Tseitin) is tested in tests/test_cnf.py.
"""

from __future__ import annotations

import itertools
import json
import random

import networkx as nx
import numpy as np
import pytest

from clue_mi import cnf
from clue_mi.cnf import gate_clauses, joint_formula
from clue_mi.localization import Localization, LocalizationError, localize

SEMANTICS = ("gates", "output")


def circuit(*edges: tuple[str, str, str], **graph_attrs: object) -> nx.DiGraph:
    g = nx.DiGraph(**graph_attrs)
    for sender, receiver, gate in edges:
        g.add_edge(sender, receiver, gate=gate)
    return g


# --- the three worked examples of DESIGN §7 ---------------------------------------------------


@pytest.mark.parametrize("semantics", SEMANTICS)
def test_example_1_and_against_or_is_satisfiable(semantics):
    forget = circuit(("A", "logits", "AND"), ("B", "logits", "AND"))
    retain = circuit(("A", "logits", "OR"), ("B", "logits", "OR"))
    loc = localize(forget, [retain], semantics=semantics)
    assert loc.satisfiable and loc.conflict == set()
    assert len(loc.forget) == 1 and len(loc.retain) == 1 and loc.forget | loc.retain == {"A", "B"}
    assert loc.semantics == semantics


@pytest.mark.parametrize("semantics", SEMANTICS)
def test_example_2_or_against_and_gives_one_conflict(semantics):
    forget = circuit(("A", "logits", "OR"), ("B", "logits", "OR"))
    retain = circuit(("B", "logits", "AND"), ("C", "logits", "AND"))
    loc = localize(forget, [retain], semantics=semantics)
    assert not loc.satisfiable
    assert (loc.forget, loc.conflict, loc.retain) == ({"A"}, {"B"}, {"C"})
    assert loc.assignment["B"] == (0, 1)


def toy_circuit() -> nx.DiGraph:
    """Paper Appendix B, Figure 5: the forget circuit of the worked example."""
    return circuit(
        ("C1", "logits", "ADDER"),
        ("C2", "logits", "ADDER"),
        ("B1", "C1", "AND"),
        ("B2", "C1", "AND"),
        ("B2", "C2", "OR"),
        ("B3", "C2", "OR"),
        ("A1", "B1", "OR"),
        ("A2", "B1", "OR"),
        ("A3", "B1", "AND"),
        ("A4", "B1", "AND"),
        ("A3", "B2", "AND"),
        ("A4", "B2", "AND"),
        ("A5", "B3", "OR"),
        ("A6", "B3", "OR"),
    )


# Eq. 8, clause by clause (each a set of negated nodes): out switched off needs C1 and C2
# off (ADDER acts as OR); C1 = AND(B1, B2) off; C2 = OR(B2, B3) off; B1 = AND(A3, A4) ∧
# OR(A1, A2) off; B2 = AND(A3, A4) off; B3 = OR(A5, A6) off.
EQ_8 = {
    frozenset({"C1"}),
    frozenset({"C2"}),
    frozenset({"B1", "B2"}),
    frozenset({"B2"}),
    frozenset({"B3"}),
    frozenset({"A3", "A4", "A1"}),
    frozenset({"A3", "A4", "A2"}),
    frozenset({"A3", "A4"}),
    frozenset({"A5"}),
    frozenset({"A6"}),
}


def forget_clause_sets(g: nx.DiGraph) -> set[frozenset[str]]:
    """Per-gate forget clauses of ``g`` as sets of negated node names (all literals negative)."""
    nodes = sorted(set(g) - {"logits"})
    varmap = {n: i + 1 for i, n in enumerate(nodes)}
    clauses = gate_clauses(g, "forget", varmap)
    assert all(lit < 0 for clause in clauses for lit in clause)
    return {frozenset(nodes[-lit - 1] for lit in clause) for clause in clauses}


def test_example_3_forget_clauses_are_eq_8():
    assert forget_clause_sets(toy_circuit()) == EQ_8


def test_example_3_fewest_edits():
    retain = circuit(("R1", "logits", "AND"), ("R2", "logits", "OR"), ("R3", "logits", "OR"))
    loc = localize(toy_circuit(), [retain])
    assert loc.satisfiable and loc.conflict == set()
    fixed = {"C1", "C2", "B2", "B3", "A5", "A6"}
    assert fixed < loc.forget and len(loc.forget) == 7
    assert (loc.forget - fixed) in ({"A3"}, {"A4"})
    assert {"B1", "A1", "A2", "R1"} <= loc.retain


def test_retain_clauses_read_adder_as_and():
    g = circuit(("a", "r", "AND"), ("d", "r", "ADDER"), ("o1", "r", "OR"), ("o2", "r", "OR"))
    varmap = {"a": 1, "d": 2, "o1": 3, "o2": 4}
    clauses = {frozenset(c) for c in gate_clauses(g, "retain", varmap)}
    assert clauses == {frozenset({1}), frozenset({2}), frozenset({3, 4})}
    forget = {frozenset(c) for c in gate_clauses(g, "forget", varmap)}
    assert forget == {frozenset({-1, -2}), frozenset({-1, -3}), frozenset({-1, -4})}


# --- brute force on random circuits -------------------------------------------------------------


def _groups(g: nx.DiGraph, r: str, side: str) -> tuple[list[str], list[str]]:
    """(AND part, OR part) of ``r``, read independently of clue_mi.cnf."""
    conj, disj = [], []
    for s in g.predecessors(r):
        gate = g.edges[s, r]["gate"]
        (conj if gate == "AND" or (gate == "ADDER" and side == "retain") else disj).append(s)
    return conj, disj


def _on(values: list[bool], conj_n: int) -> bool:
    conj, disj = values[:conj_n], values[conj_n:]
    return all(conj) and (any(disj) if disj else True)


def forget_ok(g, keep, frozen) -> tuple[bool, set[tuple[str, str]]]:
    """Every forget gate off, and the frozen edges of gates no edit can switch off."""
    ok, dropped = True, set()
    for r in g:
        if g.in_degree(r) == 0:
            continue
        conj, disj = _groups(g, r, "forget")
        value = [keep.get(s, True) if s not in frozen else True for s in conj + disj]
        floor = [s in frozen for s in conj + disj]  # every editable sender off
        if _on(floor, len(conj)):  # cannot be switched off: drop the frozen edges
            dropped |= {(s, r) for s in conj + disj if s in frozen}
            conj = [s for s in conj if s not in frozen]
            disj = [s for s in disj if s not in frozen]
            if not conj and not disj:
                continue
            value = [keep[s] for s in conj + disj]
        ok &= not _on(value, len(conj))
    return ok, dropped


def retain_ok(g, keep, frozen) -> bool:
    for r in g:
        if g.in_degree(r) == 0:
            continue
        conj, disj = _groups(g, r, "retain")
        if not _on([True if s in frozen else keep[s] for s in conj + disj], len(conj)):
            return False
    return True


def brute_force(forget, retains, frozen):
    """(min conflicts, min forgets among them, dropped edges) over all pairs of copies."""
    f_nodes = sorted(set(forget) - {"logits"} - frozen)
    r_nodes = sorted(set().union(*map(set, retains)) - {"logits"} - frozen)
    nodes = sorted(set(f_nodes) | set(r_nodes))
    idx = {n: i for i, n in enumerate(nodes)}

    def masks(sub, ok):
        out = []
        for bits in itertools.product((False, True), repeat=len(sub)):
            keep = dict(zip(sub, bits, strict=True))
            if ok(keep):
                out.append(sum(1 << idx[n] for n in sub if keep[n]))
        return np.array(out, dtype=np.int64)

    fm = masks(f_nodes, lambda k: forget_ok(forget, k, frozen)[0])[:, None]
    rm = masks(r_nodes, lambda k: all(retain_ok(g, k, frozen) for g in retains))[None, :]
    both = sum(1 << idx[n] for n in set(f_nodes) & set(r_nodes))
    conflicts = np.bitwise_count((fm ^ rm) & both)
    forgets = np.bitwise_count(~(fm | rm) & ((1 << len(nodes)) - 1))
    best = int(conflicts.min())
    dropped = forget_ok(forget, dict.fromkeys(f_nodes, False), frozen)[1]
    return best, int(forgets[conflicts == best].min()), dropped


def random_circuits(rng: random.Random):
    pool = ["input"] + [f"n{i}" for i in range(rng.randint(3, 8))]

    def one() -> nx.DiGraph:
        names = sorted(rng.sample(pool, rng.randint(2, len(pool))), key=pool.index)
        g = nx.DiGraph()
        for j, receiver in enumerate([*names, "logits"]):
            if j == 0:
                continue
            senders = rng.sample(names[:j], rng.randint(0, min(3, j)))
            if receiver == "logits" and not senders:
                senders = [rng.choice(names)]
            for s in senders:
                g.add_edge(s, receiver, gate=rng.choice(["AND", "OR", "ADDER"]))
        return g

    return one(), [one() for _ in range(rng.randint(1, 3))]


def brute_force_mismatches(trials: int = 150, seed: str = "gates") -> list[str]:
    """Random circuits where :func:`localize` and the brute force disagree (empty = agree)."""
    rng = random.Random(seed)
    bad: list[str] = []
    for trial in range(trials):
        forget, retains = random_circuits(rng)
        frozen = {"input"}
        conflicts, forgets, dropped = brute_force(forget, retains, frozen)
        loc = localize(forget, retains)
        keep_f = {n: bool(v[0]) for n, v in loc.assignment.items() if v[0] is not None}
        keep_r = {n: bool(v[1]) for n, v in loc.assignment.items() if v[1] is not None}
        checks = {
            "conflicts": len(loc.conflict) == conflicts,
            "forgets": len(loc.forget) == forgets,
            "dropped": set(loc.relaxed_edges) == dropped,
            "forget gates off": forget_ok(forget, keep_f, frozen)[0],
            "retain gates on": all(retain_ok(g, keep_r, frozen) for g in retains),
            "conflict copies (0, 1)": all(loc.assignment[n] == (0, 1) for n in loc.conflict),
            "satisfiable": loc.satisfiable == (conflicts == 0),
        }
        failed = [name for name, good in checks.items() if not good]
        if failed:
            bad.append(f"trial {trial}: {failed}: {list(forget.edges(data='gate'))}")
    return bad


def test_random_circuits_match_brute_force():
    assert brute_force_mismatches() == []


def test_random_circuits_cover_conflicts_and_dropped_edges():
    rng = random.Random("gates")
    seen = {"conflict": 0, "satisfiable": 0, "dropped": 0}
    for _ in range(150):
        forget, retains = random_circuits(rng)
        loc = localize(forget, retains)
        seen["conflict"] += bool(loc.conflict)
        seen["satisfiable"] += loc.satisfiable
        seen["dropped"] += bool(loc.relaxed_edges)
    assert min(seen.values()) >= 5, seen  # every path of the brute-force test is exercised


# --- bugs injected on purpose are caught --------------------------------------------------------


def test_swapped_adder_reading_is_caught(monkeypatch):
    original = cnf._retain_gate

    def adder_as_or(groups, varmap, const):  # the bug: retain reads ADDER as OR
        return original(
            {"AND": groups["AND"], "OR": [*groups["OR"], *groups["ADDER"]], "ADDER": []},
            varmap,
            const,
        )

    monkeypatch.setattr(cnf, "_retain_gate", adder_as_or)
    assert brute_force_mismatches(60) != []


def test_forget_adder_read_as_and_breaks_eq_8(monkeypatch):
    original = cnf._forget_gate

    def adder_as_and(receiver, groups, varmap, const):  # the bug: forget reads ADDER as AND
        swapped = {"AND": [*groups["AND"], *groups["ADDER"]], "OR": groups["OR"], "ADDER": []}
        return original(receiver, swapped, varmap, const)

    monkeypatch.setattr(cnf, "_forget_gate", adder_as_and)
    assert forget_clause_sets(toy_circuit()) != EQ_8
    assert brute_force_mismatches(60) != []


def test_dropped_clause_is_caught(monkeypatch):
    original = cnf._forget_gate

    def drop_last(receiver, groups, varmap, const):  # the bug: one clause per gate lost
        clauses, dropped = original(receiver, groups, varmap, const)
        return clauses[:-1] if len(clauses) > 1 else clauses, dropped

    monkeypatch.setattr(cnf, "_forget_gate", drop_last)
    assert forget_clause_sets(toy_circuit()) != EQ_8
    assert brute_force_mismatches(60) != []


# --- input (a constant) ---------------------------------------------------------------------


def test_input_read_as_or_with_no_and_sender_is_dropped_and_listed():
    forget = circuit(("input", "logits", "ADDER"), ("A", "logits", "ADDER"))
    retain = circuit(("A", "logits", "AND"))
    loc = localize(forget, [retain])
    assert loc.relaxed_edges == [("input", "logits")]
    assert loc.conflict == {"A"} and loc.assignment["A"] == (0, 1)
    assert "input" not in loc.assignment and "input" not in loc.safe
    # Output semantics cannot switch this output off without relax_frozen.
    with pytest.raises(LocalizationError):
        localize(forget, [retain], semantics="output")


def test_input_read_as_or_beside_an_and_sender_is_kept():
    # m <- input (OR), A (AND): switched off through A, so no edge is dropped.
    forget = circuit(("input", "m", "OR"), ("A", "m", "AND"), ("m", "logits", "ADDER"))
    formula = joint_formula(forget, [circuit(("m", "logits", "AND"))])
    assert formula.dropped_edges == []
    loc = localize(forget, [circuit(("m", "logits", "AND"))])
    assert loc.relaxed_edges == [] and loc.forget == {"A"} and loc.conflict == {"m"}


def test_input_literals_never_reach_a_clause():
    forget = circuit(("input", "r", "AND"), ("A", "r", "OR"), ("B", "r", "ADDER"))
    varmap = {"A": 1, "B": 2}
    assert {frozenset(c) for c in gate_clauses(forget, "forget", varmap)} == {
        frozenset({-1}),
        frozenset({-2}),
    }
    # Retain: input satisfies its unit clause and any OR group that holds it.
    retain = circuit(
        ("input", "r", "OR"), ("A", "r", "OR"), ("input", "s", "AND"), ("B", "s", "AND")
    )
    assert gate_clauses(retain, "retain", varmap) == [[2]]
    # AND group of constants only: the gate cannot be switched off; the edge is dropped.
    only_input = circuit(("input", "logits", "AND"), ("A", "s", "AND"))
    encoding = cnf.gate_clauses_tagged(only_input, "forget", {"A": 1})
    assert encoding.dropped == [("input", "logits")]
    assert [c for c, _ in encoding.clauses] == [[-1]]


def test_retain_or_group_holding_input_is_satisfied():
    forget = circuit(("A", "logits", "AND"))
    retain = circuit(("input", "logits", "OR"), ("A", "logits", "OR"))
    loc = localize(forget, [retain])
    assert loc.satisfiable and loc.forget == {"A"} and loc.conflict == set()


# --- explain ------------------------------------------------------------------------------------


def test_explain_names_the_gates_of_a_minimal_core():
    # forget: X <- B, A (OR); logits <- X (ADDER): B, A, X off.
    # retain: X <- B, D (AND); logits <- X, C (AND): all on. B and X are both conflicts.
    forget = circuit(("B", "X", "OR"), ("A", "X", "OR"), ("X", "logits", "ADDER"), task="capitals")
    retain = circuit(
        ("B", "X", "AND"), ("D", "X", "AND"), ("X", "logits", "AND"), ("C", "logits", "AND")
    )
    loc = localize(forget, [retain])
    assert loc.conflict == {"B", "X"} and loc.forget == {"A"}
    text = loc.explain("X")
    assert "forget (capitals):" in text and "retain[0]:" in text
    assert "logits ← ADDER(X) must be off" in text  # receiver, gate type, senders
    assert "logits ← AND(C, X) must be on" in text
    assert "X -> logits [ADDER] in forget (capitals)" in text
    assert "X -> logits [AND] in retain[0]" in text
    assert "B -> X" not in text and "C -> logits" not in text  # minimal: only X's gates
    assert "forget copy = 0, retain copy = 1" in text


def test_explain_lists_the_nodes_held_equal():
    # forget: logits = AND(A, B) off; retain needs A and B on: one conflict, the other held.
    forget = circuit(("A", "logits", "AND"), ("B", "logits", "AND"))
    retain = circuit(("A", "logits", "ADDER"), ("B", "m", "AND"), ("m", "logits", "AND"))
    loc = localize(forget, [retain])
    assert len(loc.conflict) == 1
    node = next(iter(loc.conflict))
    other = ({"A", "B"} - {node}).pop()
    text = loc.explain(node)
    assert "logits ← AND(A, B) must be off" in text
    assert f"not conflicts): {other}" in text
    assert "m ← AND(B) must be on" in text if node == "A" else "A on" in text


# --- the Localization object --------------------------------------------------------------------


def test_semantics_is_saved_and_old_json_loads_as_output(tmp_path):
    forget = circuit(("A", "logits", "OR"), ("B", "logits", "OR"))
    retain = circuit(("B", "logits", "AND"), ("C", "logits", "AND"))
    loc = localize(forget, [retain])
    assert loc.semantics == "gates" and loc.node_model is None
    path = loc.save(tmp_path / "loc.json")
    assert json.loads(path.read_text())["semantics"] == "gates"
    assert Localization.load(path) == loc
    old = loc.to_dict()
    del old["semantics"]  # written before the field existed
    old["node_model"] = "switch"
    assert Localization.from_dict(old).semantics == "output"
    assert "[gates]" in loc.summary()


def test_bad_semantics_is_one_clear_error():
    forget = circuit(("A", "logits", "OR"))
    with pytest.raises(ValueError, match="semantics must be 'gates' or 'output'"):
        localize(forget, [forget], semantics="cut")  # type: ignore[arg-type]


def test_old_import_path_still_works():
    from clue_mi.cnf import Localization as L2
    from clue_mi.cnf import localize as loc2

    assert loc2 is localize and L2 is Localization
    with pytest.raises(AttributeError):
        cnf.nonexistent  # noqa: B018


def test_pipeline_and_cli_default_to_gates():
    from clue_mi.cli import build_parser
    from clue_mi.pipeline import PipelineConfig

    assert PipelineConfig().semantics == "gates"
    with pytest.raises(ValueError, match="semantics"):
        PipelineConfig(semantics="cut")
    for command in ("localize", "unlearn --out x", "run"):
        assert build_parser().parse_args(command.split()).semantics == "gates"
    args = build_parser().parse_args(["localize", "--semantics", "output"])
    assert args.semantics == "output"


def test_run_config_recorded_before_semantics_resumes_as_output():
    from clue_mi.experiment import RunConfig

    recorded = RunConfig().to_dict()
    assert recorded["pipeline"]["semantics"] == "gates"
    assert RunConfig.from_dict(recorded).pipeline.semantics == "gates"
    del recorded["pipeline"]["semantics"]  # a config.json written before the field existed
    assert RunConfig.from_dict(recorded).pipeline.semantics == "output"
