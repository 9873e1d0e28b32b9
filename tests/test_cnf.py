"""Output semantics (a minimal cut): Tseitin clauses, worked examples, brute-force optimality.

Per-gate semantics, the default, is tested in tests/test_localization.py. Every call here asks
for ``semantics="output"`` through the wrapper below.
"""

from __future__ import annotations

import itertools
import json
import random

import networkx as nx
import numpy as np
import pytest

from clue_mi.cnf import joint_formula as _joint_formula
from clue_mi.cnf import receiver_parts, tseitin
from clue_mi.localization import Localization, LocalizationError
from clue_mi.localization import localize as _localize


def localize(*args, **kwargs) -> Localization:
    """:func:`clue_mi.localization.localize` under output semantics."""
    return _localize(*args, semantics="output", **kwargs)


def joint_formula(*args, **kwargs):
    """:func:`clue_mi.cnf.joint_formula` under output semantics."""
    return _joint_formula(*args, semantics="output", **kwargs)


NODE_MODELS = ("switch", "derived")


def circuit(*edges: tuple[str, str, str], **graph_attrs: object) -> nx.DiGraph:
    g = nx.DiGraph(**graph_attrs)
    for sender, receiver, gate in edges:
        g.add_edge(sender, receiver, gate=gate)
    return g


def example_1() -> tuple[nx.DiGraph, nx.DiGraph]:
    return (
        circuit(("A", "logits", "AND"), ("B", "logits", "AND")),
        circuit(("A", "logits", "OR"), ("B", "logits", "OR")),
    )


def example_2() -> tuple[nx.DiGraph, nx.DiGraph]:
    return (
        circuit(("A", "logits", "OR"), ("B", "logits", "OR")),
        circuit(("B", "logits", "AND"), ("C", "logits", "AND")),
    )


# --- worked examples (DESIGN §7) -------------------------------------------------------------


@pytest.mark.parametrize("node_model", NODE_MODELS)
def test_example_1_satisfiable_one_forget_one_retain(node_model):
    forget, retain = example_1()
    loc = localize(forget, [retain], node_model=node_model)
    assert loc.satisfiable
    assert loc.conflict == set()
    assert len(loc.forget) == 1 and len(loc.retain) == 1
    assert loc.forget | loc.retain == {"A", "B"}
    assert loc.safe == loc.retain


@pytest.mark.parametrize("node_model", NODE_MODELS)
def test_example_2_unsat_a_forget_b_conflict_c_retain(node_model):
    forget, retain = example_2()
    loc = localize(forget, [retain], node_model=node_model)
    assert not loc.satisfiable
    assert loc.forget == {"A"}
    assert loc.conflict == {"B"}
    assert loc.retain == {"C"}
    assert loc.assignment["B"] == (0, 1)


def test_example_2_explain_names_the_forcing_edges():
    forget, retain = example_2()
    text = localize(forget, [retain]).explain("B")
    assert "B -> logits [OR] in forget" in text
    assert "B -> logits [AND] in retain[0]" in text
    # A minimal core needs neither A's nor C's edge.
    assert "A -> logits" not in text and "C -> logits" not in text
    assert "must be 0" in text and "must be 1" in text


def test_explain_follows_a_chain_through_a_shared_node():
    # forget: logits = OR(X), X = keep(X) ∧ OR(B, A); retain: logits = AND(X, C),
    # X = keep(X) ∧ AND(B, D). Editing X (1 conflict, 0 edits) beats editing B (1 conflict,
    # and A must be edited too).
    forget = circuit(("B", "X", "OR"), ("A", "X", "OR"), ("X", "logits", "ADDER"))
    retain = circuit(
        ("B", "X", "AND"), ("D", "X", "AND"), ("X", "logits", "AND"), ("C", "logits", "AND")
    )
    loc = localize(forget, [retain])
    assert loc.conflict == {"X"} and loc.forget == set()
    text = loc.explain("X")
    # Forget: X on would turn logits on, and X is on when kept and B is on; B is held on
    # (retain needs it) because B is not a conflict.
    assert "X -> logits [ADDER] in forget" in text
    assert "B -> X [OR] in forget" in text
    assert "X -> logits [AND] in retain[0]" in text
    assert "not conflicts): B" in text
    assert "C -> logits" not in text
    assert text == loc.explanations["X"]


def test_explain_non_conflict_node_and_unknown_node():
    forget, retain = example_2()
    loc = localize(forget, [retain])
    assert "forget node" in loc.explain("A")
    assert "retain node" in loc.explain("C")
    with pytest.raises(KeyError, match="not a node"):
        loc.explain("Z")


# --- Tseitin truth tables (paper Eq. 3) --------------------------------------------------------


def _satisfied(clauses: list[list[int]], values: dict[int, bool]) -> bool:
    return all(any(values[abs(lit)] == (lit > 0) for lit in clause) for clause in clauses)


def _holds_for_some_aux(clauses, values, n_vars):
    aux = sorted({abs(lit) for clause in clauses for lit in clause} - set(values))
    assert all(a > n_vars for a in aux)
    for bits in itertools.product((False, True), repeat=len(aux)):
        if _satisfied(clauses, {**values, **dict(zip(aux, bits, strict=True))}):
            return True
    return False


@pytest.mark.parametrize(
    ("gate", "semantics", "expected"),
    [
        ("AND", "forget", all),
        ("AND", "retain", all),
        ("OR", "forget", any),
        ("OR", "retain", any),
        ("ADDER", "forget", any),  # ADDER acts as OR in the forget circuit
        ("ADDER", "retain", all),  # and as AND in a retain circuit
    ],
)
@pytest.mark.parametrize("n_inputs", [2, 3])
def test_tseitin_truth_table(gate, semantics, expected, n_inputs):
    xs = [f"x{i}" for i in range(n_inputs)]
    g = circuit(*((x, "y", gate) for x in xs))
    varmap = {x: i + 1 for i, x in enumerate(xs)} | {"y": n_inputs + 1}
    clauses = tseitin(g, semantics, varmap)
    assert all({abs(lit) for lit in c} <= set(varmap.values()) for c in clauses)  # no aux
    assert len(clauses) == n_inputs + 1
    for bits in itertools.product((False, True), repeat=n_inputs + 1):
        values = dict(zip(range(1, n_inputs + 2), bits, strict=True))
        y, xvals = bits[-1], bits[:-1]
        assert _satisfied(clauses, values) == (y == expected(xvals)), (bits, clauses)


@pytest.mark.parametrize("semantics", ["forget", "retain"])
def test_tseitin_mixed_receiver_with_aux(semantics):
    # y <- AND a1, a2; OR o1, o2; ADDER d.
    g = circuit(("a1", "y", "AND"), ("a2", "y", "AND"), ("o1", "y", "OR"), ("o2", "y", "OR"))
    g.add_edge("d", "y", gate="ADDER")
    names = ["a1", "a2", "o1", "o2", "d", "y"]
    varmap = {n: i + 1 for i, n in enumerate(names)}
    clauses = tseitin(g, semantics, varmap)
    for bits in itertools.product((False, True), repeat=len(names)):
        v = dict(zip(names, bits, strict=True))
        if semantics == "retain":
            gate = v["a1"] and v["a2"] and v["d"] and (v["o1"] or v["o2"])
        else:
            gate = v["a1"] and v["a2"] and (v["o1"] or v["o2"] or v["d"])
        values = {varmap[n]: b for n, b in v.items()}
        assert _holds_for_some_aux(clauses, values, len(names)) == (v["y"] == gate)


def test_tseitin_keep_literal_joins_the_and_part():
    g = circuit(("x1", "y", "OR"), ("x2", "y", "OR"))
    varmap = {"x1": 1, "x2": 2, "y": 3}
    clauses = tseitin(g, "retain", varmap, keep={"y": 4})
    for bits in itertools.product((False, True), repeat=4):
        x1, x2, y, k = bits
        values = dict(zip((1, 2, 3, 4), bits, strict=True))
        assert _holds_for_some_aux(clauses, values, 4) == (y == (k and (x1 or x2)))


def test_receiver_parts():
    groups = {"AND": ["a"], "OR": ["o"], "ADDER": ["d"]}
    assert receiver_parts(groups, "retain") == (["a", "d"], ["o"])
    assert receiver_parts(groups, "forget") == (["a"], ["o", "d"])
    with pytest.raises(ValueError, match="side"):
        receiver_parts(groups, "both")  # type: ignore[arg-type]


# --- brute force on random circuits ------------------------------------------------------------


def _gate_value(g, node, val, semantics, dropped=frozenset()) -> bool:
    """Independent evaluation of a receiver's gate (not via the CNF)."""
    conj, disj = [], []
    for sender in g.predecessors(node):
        gate = g.edges[sender, node]["gate"]
        if gate == "AND" or (gate == "ADDER" and semantics == "retain"):
            conj.append(val[sender])
        else:
            disj.append(val[sender] and (sender, node) not in dropped)
    return all(conj) and (any(disj) if disj else True)


def _evaluate(g, keep, semantics, node_model, frozen, dropped=frozenset(), output="logits"):
    """Output of circuit ``g`` for the keep values, or None if inconsistent (derived model)."""
    val: dict[str, bool] = {}
    for node in nx.topological_sort(g):
        if g.in_degree(node) == 0:
            val[node] = keep[node]
            continue
        gate = _gate_value(g, node, val, semantics, dropped)
        if node == output:
            val[node] = gate
        elif node_model == "switch":
            val[node] = gate and (True if node in frozen else keep[node])
        else:
            if keep[node] != gate:
                return None
            val[node] = gate
    return val[output]


def _valid_keeps(circuits, semantics, target, nodes, node_model, frozen, dropped=frozenset()):
    """All keep assignments (as bit masks over ``nodes``) under which every circuit hits target."""
    free = [n for n in nodes if n not in frozen]
    masks = []
    for bits in itertools.product((False, True), repeat=len(free)):
        keep = dict(zip(free, bits, strict=True)) | dict.fromkeys(frozen, True)
        values = [_evaluate(g, keep, semantics, node_model, frozen, dropped) for g in circuits]
        if all(v == target for v in values):
            masks.append(sum(1 << i for i, n in enumerate(nodes) if keep[n]))
    return np.array(masks, dtype=np.int64)


def brute_force(forget, retains, node_model, frozen, relax=False):
    """Lexicographic optimum over all (forget copy, retain copy) pairs and droppable edges.

    Returns (min dropped edges, min conflicts, min forget count, forget masks, retain masks),
    or None if no assignment works.
    """
    f_nodes = set(forget) - {"logits"}
    r_nodes = set().union(*map(set, retains)) - {"logits"}
    nodes = sorted(f_nodes | r_nodes)
    frozen = set(frozen) & set(nodes)
    droppable = [
        (u, v) for u, v, gate in forget.edges(data="gate") if u in frozen and gate != "AND"
    ]
    for n_dropped in range(len(droppable) + 1 if relax else 1):
        best = None
        for dropped in itertools.combinations(droppable, n_dropped):
            found = _best_pair(forget, retains, node_model, frozen, set(dropped), f_nodes, r_nodes)
            if found is not None and (best is None or found[:2] < best[:2]):
                best = found
        if best is not None:
            return (n_dropped, *best)
    return None


def _best_pair(forget, retains, node_model, frozen, dropped, f_nodes, r_nodes):
    nodes = sorted(f_nodes | r_nodes)
    fmask = _valid_keeps([forget], "forget", False, sorted(f_nodes), node_model, frozen, dropped)
    rmask = _valid_keeps(retains, "retain", True, sorted(r_nodes), node_model, frozen)
    if len(fmask) == 0:
        return None

    def remap(masks, sub):  # bit positions over ``sub`` -> over ``nodes``
        out = np.zeros_like(masks)
        for i, n in enumerate(sub):
            out |= ((masks >> i) & 1) << nodes.index(n)
        return out

    fm = remap(fmask, sorted(f_nodes))[:, None]
    rm = remap(rmask, sorted(r_nodes))[None, :]
    idx = {n: i for i, n in enumerate(nodes)}
    both = sum(1 << idx[n] for n in (f_nodes & r_nodes) - frozen)
    counted = sum(1 << idx[n] for n in set(nodes) - frozen)
    conflicts = np.bitwise_count((fm ^ rm) & both)
    # Off in every copy it has: a forget node (bits of absent copies are 0).
    forgets = np.bitwise_count(~(fm | rm) & counted)
    best = conflicts.min()
    return int(best), int(forgets[conflicts == best].min()), fmask, rmask


def random_circuits(rng: random.Random, with_input: bool):
    pool = (["input"] if with_input else []) + [f"n{i}" for i in range(rng.randint(3, 8))]

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


@pytest.mark.parametrize("relax", [False, True])
@pytest.mark.parametrize("node_model", NODE_MODELS)
def test_random_circuits_match_brute_force(node_model, relax):
    rng = random.Random(f"{node_model}-{relax}")  # str seeds are deterministic
    seen_unsat = seen_sat = seen_relaxed = 0
    for trial in range(100):
        forget, retains = random_circuits(rng, with_input=trial % 3 != 0)
        frozen = ("input",)
        expected = brute_force(forget, retains, node_model, frozen, relax)
        if expected is None:
            with pytest.raises(LocalizationError):
                localize(forget, retains, node_model=node_model, frozen=frozen, relax_frozen=relax)
            continue
        n_dropped, min_conflicts, min_forgets, fmask, rmask = expected
        loc = localize(forget, retains, node_model=node_model, frozen=frozen, relax_frozen=relax)
        assert len(loc.relaxed_edges) == n_dropped
        context = (
            f"trial {trial}: {forget.edges(data=True)} / {[r.edges(data=True) for r in retains]}"
        )
        assert len(loc.conflict) == min_conflicts, context
        assert len(loc.forget) == min_forgets, context
        assert loc.satisfiable == (min_conflicts == 0 and n_dropped == 0), context
        _check_solution(loc, forget, retains, node_model, fmask, rmask)
        seen_unsat += not loc.satisfiable
        seen_sat += loc.satisfiable
        seen_relaxed += bool(loc.relaxed_edges)
    assert seen_sat >= 5 and seen_unsat >= 5  # both paths really exercised
    assert (seen_relaxed >= 3) == relax


def _check_solution(loc, forget, retains, node_model, fmask, rmask):
    """The reported copies satisfy every circuit; they split exactly on the conflict nodes."""
    f_nodes = sorted(set(forget) - {"logits"})
    r_nodes = sorted(set().union(*map(set, retains)) - {"logits"})
    frozen = set(loc.frozen)
    f_keep = {n: True if n in frozen else bool(loc.assignment[n][0]) for n in f_nodes}
    r_keep = {n: True if n in frozen else bool(loc.assignment[n][1]) for n in r_nodes}
    dropped = set(loc.relaxed_edges)
    assert _evaluate(forget, f_keep, "forget", node_model, frozen, dropped) is False
    for g in retains:
        assert _evaluate(g, r_keep, "retain", node_model, frozen) is True
    split = {n for n in set(f_nodes) & set(r_nodes) if f_keep[n] != r_keep[n]}
    assert split == loc.conflict
    assert loc.forget | loc.conflict | loc.retain == (set(f_nodes) | set(r_nodes)) - frozen
    assert not (loc.forget & loc.conflict or loc.forget & loc.retain or loc.conflict & loc.retain)


# --- other behaviour ---------------------------------------------------------------------------


def test_frozen_input_blocks_forget_through_or_path():
    forget = circuit(("input", "logits", "ADDER"), ("A", "logits", "ADDER"))
    retain = circuit(("A", "logits", "AND"))
    with pytest.raises(LocalizationError, match="input -> logits"):
        localize(forget, [retain])
    loc = localize(forget, [retain], frozen=())
    assert loc.forget == {"input"} and loc.conflict == {"A"}  # OR: A must be off as well
    relaxed = localize(forget, [retain], relax_frozen=True)
    assert relaxed.relaxed_edges == [("input", "logits")]
    assert relaxed.conflict == {"A"} and not relaxed.satisfiable
    assert "frozen edges kept" not in relaxed.explain("A")


def test_relax_drops_only_the_edges_it_must():
    # input -> m0 (OR in forget) can be left alone if m0 itself is edited (m0 is a head
    # of its own: keep(m0) gates it); input -> logits cannot be worked around.
    forget = circuit(
        ("input", "m0", "ADDER"),
        ("input", "logits", "OR"),
        ("m0", "logits", "OR"),
    )
    retain = circuit(("input", "m1", "AND"), ("m1", "logits", "AND"))
    loc = localize(forget, [retain], relax_frozen=True)
    assert loc.relaxed_edges == [("input", "logits")]
    assert loc.forget == {"m0"} and loc.conflict == set()
    assert Localization.from_json(loc.to_json()).relaxed_edges == loc.relaxed_edges


def test_switch_model_separates_a_layered_circuit_where_derived_cannot():
    # input is the only leaf, as in every real circuit.
    # forget: logits = AND(m0, m1), m0 and m1 fed by input; retain: logits needs m1.
    forget = circuit(
        ("input", "m0", "ADDER"),
        ("input", "m1", "ADDER"),
        ("m0", "logits", "AND"),
        ("m1", "logits", "AND"),
    )
    retain = circuit(("input", "m1", "ADDER"), ("m1", "logits", "ADDER"))
    loc = localize(forget, [retain])
    assert loc.satisfiable
    assert (loc.forget, loc.conflict, loc.retain) == ({"m0"}, set(), {"m1"})
    # In the derived model every variable is a function of input: frozen, nothing can be
    # edited; free, input itself and every shared node downstream of it become conflicts.
    with pytest.raises(LocalizationError):
        localize(forget, [retain], node_model="derived")
    derived = localize(forget, [retain], node_model="derived", frozen=())
    assert derived.conflict == {"input", "m1"}


def test_safe_uses_all_nodes_and_skips_frozen_and_output():
    forget, retain = example_2()
    graph = nx.DiGraph()
    graph.add_nodes_from(["A", "B", "C", "input", "logits"])
    graph.add_node("m3", kind="mlp")
    loc = localize(forget, [retain], all_nodes=graph)
    assert loc.safe == {"C", "m3"}
    assert loc.kinds["m3"] == "mlp"
    counts = loc.counts_by_kind()
    assert counts["mlp"] == {"forget": 0, "conflict": 0, "retain": 0, "safe": 1}
    assert counts["other"] == {"forget": 1, "conflict": 1, "retain": 1, "safe": 1}


def test_counts_by_kind_reads_names_and_attrs():
    forget = circuit(("input", "a0.h1.q", "AND"), ("a0.h1.q", "a0.h1", "ADDER"))
    forget.add_edge("a0.h1", "logits", gate="OR")
    forget.add_edge("m0", "logits", gate="OR")
    retain = circuit(("input", "m0", "AND"), ("m0", "logits", "AND"))
    retain.nodes["m0"]["kind"] = "mlp"
    loc = localize(forget, [retain])
    assert loc.kinds == {"a0.h1.q": "q", "a0.h1": "head", "m0": "mlp"}
    total = sum(sum(row.values()) - row["safe"] for row in loc.counts_by_kind().values())
    assert total == 3


def test_retain_may_be_a_single_graph_and_output_name_is_configurable():
    f = circuit(("A", "out", "OR"), ("B", "out", "OR"))
    r = circuit(("B", "out", "AND"), ("C", "out", "AND"))
    loc = localize(f, r, output="out")
    assert loc.conflict == {"B"} and loc.output == "out"


def test_joint_formula_shape():
    forget, retain = example_2()
    split = joint_formula(forget, [retain])
    assert set(split.conflict_vars) == {"B"}  # only nodes on both sides get two copies
    assert split.keep_forget["A"] == split.keep_retain.get("A", split.keep_forget["A"])
    assert split.keep_forget["B"] != split.keep_retain["B"]
    shared = joint_formula(forget, [retain], split=False)
    assert shared.conflict_vars == {} and shared.keep_forget["B"] == shared.keep_retain["B"]
    assert len(split.output_vars) == 2 and len(set(split.output_vars)) == 2
    assert len(shared.cnf().clauses) == len(shared.clauses)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (
            lambda: (circuit(("A", "B", "AND")), [circuit(("A", "logits", "AND"))]),
            ValueError,
            "no output node 'logits'",
        ),
        (lambda: (circuit(("A", "logits", "AND")), []), ValueError, "retain is empty"),
        (
            lambda: (circuit(("A", "logits", "XOR")), [circuit(("A", "logits", "AND"))]),
            ValueError,
            "unknown gate 'XOR'",
        ),
        (
            lambda: (nx.DiGraph([("A", "logits")]), [circuit(("A", "logits", "AND"))]),
            ValueError,
            "no 'gate' attribute",
        ),
        (
            lambda: (
                circuit(("A", "B", "AND"), ("B", "A", "OR"), ("B", "logits", "OR")),
                [circuit(("A", "logits", "AND"))],
            ),
            ValueError,
            "cycle",
        ),
        (
            lambda: (
                circuit(("A", "logits", "AND"), ("logits", "B", "AND")),
                [circuit(("A", "logits", "AND"))],
            ),
            ValueError,
            "must be a sink",
        ),
        (lambda: ({"A": "logits"}, [circuit(("A", "logits", "AND"))]), TypeError, "DiGraph"),
    ],
)
def test_bad_input(make, error, match):
    forget, retain = make()
    with pytest.raises(error, match=match):
        localize(forget, retain)


def test_bad_node_model():
    forget, retain = example_1()
    with pytest.raises(ValueError, match="node_model"):
        localize(forget, [retain], node_model="magic")  # type: ignore[arg-type]


def test_lowercase_gates_are_accepted():
    forget = circuit(("A", "logits", "or"), ("B", "logits", "or"))
    retain = circuit(("B", "logits", "and"), ("C", "logits", "and"))
    assert localize(forget, [retain]).conflict == {"B"}


# --- persistence -------------------------------------------------------------------------------


def test_json_round_trip_and_atomic_save(tmp_path):
    forget, retain = example_2()
    loc = localize(forget, [retain], all_nodes=["A", "B", "C", "D"])
    explanation = loc.explain("B")
    again = Localization.from_json(loc.to_json())
    assert again == loc
    assert again.explain("B") == explanation  # the cached text survives
    path = loc.save(tmp_path / "sub" / "loc.json")
    assert Localization.load(path) == loc
    assert [p.name for p in path.parent.iterdir()] == ["loc.json"]  # no temp file left
    assert json.loads(path.read_text())["conflict"] == ["B"]


def test_loaded_result_without_cached_explanation_says_what_to_do():
    forget, retain = example_2()
    again = Localization.from_json(localize(forget, [retain]).to_json())
    with pytest.raises(RuntimeError, match="run localize"):
        again.explain("B")
    with pytest.raises(ValueError, match="version"):
        Localization.from_dict({"version": 99})


def test_pickle_keeps_the_formula_for_explain():
    import pickle

    forget, retain = example_2()
    loc = localize(forget, [retain])
    loc.explain("B")  # builds the core solver, which cannot be pickled
    again = pickle.loads(pickle.dumps(loc))
    again.explanations.clear()
    assert "B -> logits [AND] in retain[0]" in again.explain("B")
