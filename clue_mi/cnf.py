"""CNF encoding of logical circuits and SAT/MaxSAT localization (DESIGN §7).

A logical circuit (``nx.DiGraph``, ``gate`` on every edge, see :mod:`clue_mi.gates`) is read
as a Boolean circuit. For a receiver ``r`` with senders grouped into A (AND), O (OR) and
D (ADDER):

* in a **retain** circuit ``r = AND(A ∪ D) ∧ OR(O)``  (ADDER acts as AND);
* in the **forget** circuit ``r = AND(A) ∧ OR(O ∪ D)``  (ADDER acts as OR);

an empty group contributes nothing. Each ``=`` is Tseitin-encoded (paper Eq. 3; an auxiliary
variable stands for the OR part when a receiver has both parts). The forget circuit's output
must be 0 and each retain circuit's output 1; every circuit's output node has its own
variable.

Node models
-----------
What a node's variable *means* is a choice, made with ``node_model``:

``"switch"`` (default)
    Every node ``n`` that owns weights has a **keep** variable ``k_n`` (1 = keep, 0 = edit),
    shared by all circuits, and in each circuit a *signal* ``s_n`` (is ``n`` working in this
    task?): ``s_r = k_r ∧ gate(senders)`` for a receiver, ``s_n = k_n`` for a node without
    senders. Categories come from the keep variables.
``"derived"``
    DESIGN §7 to the letter: the node's variable *is* its gate, ``x_r = gate(senders)``, one
    variable per node shared by all circuits; only nodes without senders are free.

Both agree on circuits whose every non-output node is a leaf (the paper's worked examples).
They differ on real circuits, where ``input`` is the only leaf: under ``"derived"`` every
variable is then a function of ``input`` alone, so with ``input`` fixed to 1 the forget output
is forced to 1 (no solution at all), and with ``input`` free every node of both circuits is a
conflict (the "entangled" union). ``"switch"`` gives each component its own edit decision,
which is what localization needs.

Localization
------------
``Φ = Φ_f ∧ Φ_r1 ∧ … ∧ Φ_rk ∧ ¬out_f ∧ out_r1 ∧ … ∧ out_rk`` is first solved with CaDiCaL.
Either way the final answer comes from one exact, lexicographic MaxSAT problem (RC2): a node
in the forget circuit *and* a retain circuit gets a forget copy (used in Φ_f) and a retain copy
(used in every Φ_r); the circuit formulas are hard; the soft clauses are "the copies agree"
(weight W) and "the node is kept" (weight 1), with W larger than the number of weight-1
clauses, so the optimum has the fewest conflicts first and, among those, the fewest edits.
Nodes that appear on one side only get a single variable: their other copy would occur in no
clause and could always agree, so this is exact. When Φ is satisfiable the copies are forced
equal (no conflicts) and only the edit count is minimised. With ``relax_frozen=True`` a third,
heavier level comes first: drop the fewest forget-circuit OR edges out of frozen nodes (see
:func:`localize`).

:meth:`Localization.explain` turns a conflict into text: a minimal unsatisfiable core (one
selector per clause, CaDiCaL assumptions, deletion-based minimisation) of the circuits with
that node's copies, and every non-conflict node's copies, held equal.

Nodes in ``frozen`` (default ``("input",)``: it owns no weights) are fixed to 1 and, like the
output node, belong to no category. Categories: **forget** = kept 0, **retain** = kept 1,
**conflict** = copies disagree, **safe** = retain ∪ nodes in no circuit (given ``all_nodes``).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import json
import os
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import networkx as nx
from pysat.examples.rc2 import RC2Stratified
from pysat.formula import CNF, WCNF, IDPool
from pysat.solvers import Solver

from clue_mi.gates import GATES, node_kind

__all__ = [
    "ClauseTag",
    "JointFormula",
    "Localization",
    "LocalizationError",
    "gate_groups",
    "joint_formula",
    "localize",
    "receiver_parts",
    "tseitin",
    "tseitin_tagged",
]

Semantics = Literal["forget", "retain"]
NodeModel = Literal["switch", "derived"]
Clause = list[int]

SAT_SOLVER = "cadical195"
"""python-sat name of the SAT solver (CaDiCaL 1.9.5) used for Φ and for cores."""
MAXSAT_SOLVER = "g4"
"""python-sat name of the SAT oracle inside RC2 (Glucose 4; fastest on these formulas)."""

_JSON_VERSION = 1


class LocalizationError(ValueError):
    """The hard part of the problem has no solution (e.g. the forget output cannot be 0)."""


# --------------------------------------------------------------------------------------------
# Reading a circuit


def gate_groups(circuit: nx.DiGraph, receiver: str) -> dict[str, list[str]]:
    """Senders of ``receiver`` grouped by gate: ``{"AND": [...], "OR": [...], "ADDER": [...]}``.

    Gate labels are case-insensitive. Senders are sorted so encodings are reproducible.

    Raises:
        ValueError: an incoming edge has no ``gate`` or an unknown one.
    """
    groups: dict[str, list[str]] = {gate: [] for gate in GATES}
    incoming = circuit.pred[receiver]  # {sender: edge attrs}, much faster than edges[u, v]
    for sender in sorted(incoming, key=str):
        gate = incoming[sender].get("gate")
        if gate is None:
            raise ValueError(
                f"edge {sender} -> {receiver} has no 'gate' attribute: type the circuit with "
                f"gates.logical_circuit(noising, denoising) or set gate='AND'/'OR'/'ADDER'"
            )
        label = str(gate).upper()
        if label not in groups:
            raise ValueError(
                f"edge {sender} -> {receiver} has unknown gate {gate!r}; expected one of {GATES}"
            )
        groups[label].append(sender)
    return groups


def receiver_parts(
    groups: Mapping[str, Sequence[str]], semantics: Semantics
) -> tuple[list[str], list[str]]:
    """Split a receiver's senders into (AND part, OR part) under the given semantics.

    ADDER senders join the AND part in a retain circuit and the OR part in the forget circuit.
    """
    if semantics == "retain":
        return [*groups["AND"], *groups["ADDER"]], list(groups["OR"])
    if semantics == "forget":
        return list(groups["AND"]), [*groups["OR"], *groups["ADDER"]]
    raise ValueError(f"semantics must be 'forget' or 'retain', got {semantics!r}")


# --------------------------------------------------------------------------------------------
# Tseitin encoding


@dataclass(frozen=True)
class ClauseTag:
    """Where a clause comes from, so an unsatisfiable core can be read as circuit edges.

    ``role`` is one of ``"needs"`` (receiver on needs this literal), ``"suffices"`` (this
    sender alone turns the OR part on), ``"needs-one"`` (OR part on needs one of these),
    ``"all-suffice"`` (all inputs on turn the receiver on), ``"output"``, ``"frozen"`` and
    ``"copies"`` (the definition of a node's conflict indicator).
    ``edges`` lists ``(sender, receiver, gate)`` of the circuit edges the clause is about.
    """

    circuit: str
    semantics: str
    receiver: str | None
    role: str
    edges: tuple[tuple[str, str, str], ...]
    text: str
    formula: str = ""  # the receiver's whole gate, shared by its clauses (not copied)

    def describe(self) -> str:
        """The clause in words, prefixed by the receiver's gate formula when there is one."""
        return f"{self.formula}: {self.text}" if self.formula else self.text


@dataclass(frozen=True)
class _Lit:
    """A literal in a receiver's definition with what it stands for, for the clause tags."""

    lit: int
    name: str
    gate: str | None  # edge gate label; None for keep and OR-part literals
    senders: tuple[str, ...] = ()  # senders the literal covers (several for an OR part)


_TagMaker = Callable[[str, list[_Lit], str], ClauseTag]


def _make_tag(
    circuit: str,
    semantics: str,
    receiver: str,
    sender_gate: Mapping[str, str],
    formula: str,
    role: str,
    lits: list[_Lit],
    text: str,
) -> ClauseTag:
    """Tag of one clause of ``receiver``: the edges of the senders its literals stand for."""
    edges = tuple((s, receiver, sender_gate[s]) for lit in lits for s in lit.senders)
    return ClauseTag(circuit, semantics, receiver, role, edges, text, formula)


def _and_clauses(
    y: int, y_name: str, lits: Sequence[_Lit], tag: _TagMaker
) -> list[tuple[Clause, ClauseTag]]:
    """y <-> AND(lits): (¬y ∨ x) for each x, (y ∨ ¬x1 ∨ … ∨ ¬xn)."""
    out = [([-y, x.lit], tag("needs", [x], f"{y_name} on needs {x.name} on")) for x in lits]
    names = _abbrev([x.name for x in lits])
    out.append(
        (
            [y, *(-x.lit for x in lits)],
            tag("all-suffice", list(lits), f"{names} all on turn {y_name} on"),
        )
    )
    return out


def _or_clauses(
    y: int, y_name: str, lits: Sequence[_Lit], tag: _TagMaker
) -> list[tuple[Clause, ClauseTag]]:
    """y <-> OR(lits): (y ∨ ¬x) for each x, (¬y ∨ x1 ∨ … ∨ xn)."""
    out = [([y, -x.lit], tag("suffices", [x], f"{x.name} on turns {y_name} on")) for x in lits]
    names = _abbrev([x.name for x in lits])
    out.append(
        (
            [-y, *(x.lit for x in lits)],
            tag("needs-one", list(lits), f"{y_name} on needs one of {names} on"),
        )
    )
    return out


def _abbrev(names: Sequence[str], limit: int = 8) -> str:
    """``a, b, c`` or, for long lists, ``a, b, … (+N more)``: gates can have 100s of inputs."""
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", … (+{len(names) - limit} more)"


def _formula_text(receiver: str, keep: bool, conj: Sequence[str], disj: Sequence[str]) -> str:
    parts = [f"keep({receiver})"] if keep else []
    if conj:
        parts.append(f"AND({_abbrev(conj)})")
    if disj:
        parts.append(f"OR({_abbrev(disj)})")
    return f"{receiver} = " + " ∧ ".join(parts)


def tseitin_tagged(
    circuit: nx.DiGraph,
    semantics: Semantics,
    varmap: Mapping[str, int],
    fresh: Callable[[], int],
    *,
    keep: Mapping[str, int] | None = None,
    label: str | None = None,
    edge_lits: Mapping[tuple[str, str], int] | None = None,
) -> list[tuple[Clause, ClauseTag]]:
    """Tseitin clauses of every receiver of ``circuit``, each with a :class:`ClauseTag`.

    Args:
        circuit: logical circuit (``gate`` on every edge).
        semantics: ``"forget"`` (ADDER acts as OR) or ``"retain"`` (ADDER acts as AND).
        varmap: variable of every node of the circuit (its signal in this circuit).
        fresh: returns a new, unused variable id (for the OR part of mixed receivers).
        keep: optional ``{receiver: keep literal}``; a receiver listed here is on only if it is
            kept too (its keep literal joins the AND part). Used by the "switch" node model.
        label: circuit name used in the tags (defaults to ``semantics``).
        edge_lits: optional ``{(sender, receiver): literal}`` used for that edge instead of
            the sender's variable (how :func:`joint_formula` makes an edge relaxable).

    Returns:
        ``[(clause, tag), ...]``; the output unit clause is *not* included.
    """
    name = label or semantics
    keep = keep or {}
    edge_lits = edge_lits or {}
    clauses: list[tuple[Clause, ClauseTag]] = []
    for receiver in nx.topological_sort(circuit):
        if circuit.in_degree(receiver) == 0:
            continue  # a leaf: its variable is free
        groups = gate_groups(circuit, receiver)
        sender_gate = {s: gate for gate, senders in groups.items() for s in senders}
        conj_names, disj_names = receiver_parts(groups, semantics)
        conj = [
            _Lit(edge_lits.get((s, receiver), varmap[s]), s, sender_gate[s], (s,))
            for s in conj_names
        ]
        disj = [
            _Lit(edge_lits.get((s, receiver), varmap[s]), s, sender_gate[s], (s,))
            for s in disj_names
        ]
        has_keep = receiver in keep
        formula = _formula_text(receiver, has_keep, conj_names, disj_names)

        tag = functools.partial(_make_tag, name, semantics, receiver, sender_gate, formula)

        if has_keep:
            conj.insert(0, _Lit(keep[receiver], f"keep({receiver})", None))
        y = varmap[receiver]
        if conj and len(disj) > 1:
            # Mixed receiver: o <-> OR(disj), then y <-> AND(conj + [o]).
            o = fresh()
            o_name = f"the OR part of {receiver}"
            clauses += _or_clauses(o, o_name, disj, tag)
            conj.append(_Lit(o, o_name, None, tuple(disj_names)))
            clauses += _and_clauses(y, receiver, conj, tag)
        elif conj or len(disj) == 1:
            clauses += _and_clauses(y, receiver, conj + disj, tag)  # OR of one literal is it
        else:
            clauses += _or_clauses(y, receiver, disj, tag)
    return clauses


def tseitin(
    circuit: nx.DiGraph,
    semantics: Semantics,
    varmap: Mapping[str, int],
    fresh: Callable[[], int] | None = None,
    *,
    keep: Mapping[str, int] | None = None,
) -> list[Clause]:
    """Tseitin clauses (paper Eq. 3) of ``circuit`` read with forget or retain semantics.

    ``varmap`` gives every node's variable. ``fresh`` allocates auxiliary variables; by
    default they are numbered after the largest variable in ``varmap`` / ``keep``. See
    :func:`tseitin_tagged` for the arguments; this returns the bare clauses.
    """
    if fresh is None:
        counter = itertools.count(
            max([abs(v) for v in varmap.values()] + [abs(v) for v in (keep or {}).values()] + [0])
            + 1
        )

        def fresh() -> int:
            return next(counter)

    return [clause for clause, _ in tseitin_tagged(circuit, semantics, varmap, fresh, keep=keep)]


# --------------------------------------------------------------------------------------------
# The joint formula


@dataclass
class JointFormula:
    """Φ over the forget and retain circuits, with every clause tagged.

    ``keep_forget[n]`` / ``keep_retain[n]`` are the keep variables of node ``n`` in the
    forget / retain copy; they are the same variable unless ``n`` was split (``split=True``
    and ``n`` is in the forget circuit and a retain circuit), in which case
    ``conflict_vars[n]`` is 1 whenever the two copies differ. ``output_vars[i]`` is circuit
    ``i``'s output (0 = forget circuit). The unit clauses fixing the outputs and the
    ``frozen`` nodes are among ``clauses``. ``relax_vars[(u, r)]`` (only with
    ``relax_frozen=True``) is 1 while the forget circuit's edge from frozen ``u`` to ``r``,
    read as OR, carries ``u``'s signal, and 0 when the edge is dropped.
    """

    clauses: list[Clause]
    tags: list[ClauseTag]
    keep_forget: dict[str, int]
    keep_retain: dict[str, int]
    conflict_vars: dict[str, int]
    relax_vars: dict[tuple[str, str], int]
    output_vars: list[int]
    labels: list[str]
    nodes: set[str]
    frozen: set[str]
    node_model: str
    n_vars: int

    def cnf(self) -> CNF:
        """The formula as a python-sat ``CNF`` (e.g. ``.to_file("phi.cnf")`` for DIMACS)."""
        return CNF(from_clauses=self.clauses)

    @property
    def agree_assumptions(self) -> list[int]:
        """Assumptions giving back Φ: every split node's copies agree, no edge is relaxed."""
        return [-c for c in self.conflict_vars.values()] + list(self.relax_vars.values())


def _circuit_label(circuit: nx.DiGraph, base: str) -> str:
    task = circuit.graph.get("task")
    return f"{base} ({task})" if task else base


def _validate(circuit: Any, role: str, output: str) -> None:
    if not isinstance(circuit, nx.DiGraph) or circuit.is_multigraph():
        raise TypeError(f"{role} must be a networkx.DiGraph, got {type(circuit).__name__}")
    if output not in circuit:
        raise ValueError(
            f"{role} has no output node {output!r}: every circuit must end in it (pass "
            f"output=... if yours is named differently)"
        )
    if not nx.is_directed_acyclic_graph(circuit):
        cycle = " -> ".join(str(u) for u, _ in nx.find_cycle(circuit))
        raise ValueError(f"{role} has a cycle ({cycle}); a circuit must be a DAG")
    if circuit.in_degree(output) == 0:
        raise ValueError(f"{role}: output {output!r} has no incoming edge, so nothing drives it")
    if circuit.out_degree(output) > 0:
        raise ValueError(f"{role}: output {output!r} has outgoing edges; it must be a sink")
    for _, receiver, gate in circuit.edges(data="gate"):
        if gate is None or str(gate).upper() not in GATES:
            gate_groups(circuit, receiver)  # raises with the message for this edge


def _as_retain_list(retain: Any) -> list[nx.DiGraph]:
    if isinstance(retain, nx.DiGraph):
        return [retain]  # one retain circuit passed bare: accept it
    retain = list(retain)
    if not retain:
        raise ValueError("retain is empty: give at least one retain circuit")
    return retain


def joint_formula(
    forget: nx.DiGraph,
    retain: Sequence[nx.DiGraph] | nx.DiGraph,
    output: str = "logits",
    *,
    node_model: NodeModel = "switch",
    frozen: Iterable[str] = ("input",),
    split: bool = True,
    relax_frozen: bool = False,
) -> JointFormula:
    """Build Φ_f ∧ Φ_r1 ∧ … ∧ ¬out_f ∧ out_r1 ∧ … (see the module docstring).

    Args:
        forget: logical circuit of the forget set.
        retain: logical circuits of the retain sets (a single DiGraph is accepted too).
        output: the output node's name in every circuit.
        node_model: ``"switch"`` or ``"derived"`` (module docstring).
        frozen: nodes that cannot be edited (fixed to 1); absent ones are ignored.
        split: give nodes that are in the forget circuit and a retain circuit two copies plus
            a conflict indicator. With ``split=False`` every node has one variable and the
            formula is Φ exactly; with ``split=True`` Φ is the formula under
            :attr:`JointFormula.agree_assumptions`.
        relax_frozen: give every forget-circuit edge from a frozen node that is read as OR
            (gate OR or ADDER) a literal of its own, so the edge can be dropped (see
            :func:`localize`).

    Raises:
        TypeError / ValueError: bad circuits (missing output, cycle, missing or unknown gate,
            output with no input or with outgoing edges), empty ``retain``, unknown
            ``node_model``.
    """
    retain = _as_retain_list(retain)
    if node_model not in ("switch", "derived"):
        raise ValueError(f"node_model must be 'switch' or 'derived', got {node_model!r}")
    _validate(forget, "the forget circuit", output)
    for i, circuit in enumerate(retain):
        _validate(circuit, f"retain circuit {i}", output)

    pool = IDPool()
    forget_nodes = set(forget) - {output}
    retain_nodes = set().union(*(set(c) for c in retain)) - {output}
    frozen_set = set(frozen) & (forget_nodes | retain_nodes)
    both = (forget_nodes & retain_nodes) - frozen_set if split else set()

    # Sorted, so variable numbers (and hence the solver's choice among optima) do not depend
    # on string hashing, which changes from one Python process to the next.
    keep_f = {n: pool.id(("k", "f", n) if n in both else ("k", n)) for n in sorted(forget_nodes)}
    keep_r = {n: pool.id(("k", "r", n) if n in both else ("k", n)) for n in sorted(retain_nodes)}
    clauses: list[Clause] = []
    tags: list[ClauseTag] = []

    def add(clause: Clause, tag: ClauseTag) -> None:
        clauses.append(clause)
        tags.append(tag)

    conflict_vars: dict[str, int] = {}
    relax_vars: dict[tuple[str, str], int] = {}
    for n in sorted(both):
        c = conflict_vars[n] = pool.id(("c", n))
        text = f"{n} keeps one value in every circuit unless it is a conflict"
        tag = ClauseTag("all", "copies", n, "copies", (), text)
        add([c, -keep_f[n], keep_r[n]], tag)
        add([c, keep_f[n], -keep_r[n]], tag)
    for n in sorted(frozen_set):
        tag = ClauseTag("all", "frozen", n, "frozen", (), f"{n} is frozen: never edited")
        for var in {keep_f.get(n), keep_r.get(n)} - {None}:
            add([var], tag)  # type: ignore[list-item]

    circuits: list[tuple[nx.DiGraph, Semantics, dict[str, int], str]] = [
        (forget, "forget", keep_f, _circuit_label(forget, "forget"))
    ]
    circuits += [
        (c, "retain", keep_r, _circuit_label(c, f"retain[{i}]")) for i, c in enumerate(retain)
    ]
    aux = itertools.count()

    def fresh() -> int:
        return pool.id(("aux", next(aux)))

    output_vars = []
    for index, (circuit, semantics, keep, label) in enumerate(circuits):
        out = pool.id(("out", index))
        output_vars.append(out)
        varmap, keep_lits = _signal_vars(circuit, output, out, keep, index, pool, node_model)
        keep_lits = {r: v for r, v in keep_lits.items() if r not in frozen_set}
        edge_lits: dict[tuple[str, str], int] = {}
        if relax_frozen and semantics == "forget":
            for u, r, gate in circuit.edges(data="gate"):
                if u in frozen_set and str(gate).upper() in ("OR", "ADDER"):
                    e = edge_lits[u, r] = relax_vars[u, r] = pool.id(("relax", u, r))
                    text = f"edge {u} -> {r} carries {u}'s signal (it is not dropped)"
                    add(
                        [-e, varmap[u]],
                        ClauseTag(label, semantics, r, "relax", ((u, r, gate),), text),
                    )

        for clause, tag in tseitin_tagged(
            circuit, semantics, varmap, fresh, keep=keep_lits, label=label, edge_lits=edge_lits
        ):
            add(clause, tag)
        value = 0 if semantics == "forget" else 1
        text = f"output {output} must be {value} in {label}"
        add([out if value else -out], ClauseTag(label, semantics, output, "output", (), text))

    return JointFormula(
        clauses=clauses,
        tags=tags,
        keep_forget=keep_f,
        keep_retain=keep_r,
        conflict_vars=conflict_vars,
        relax_vars=relax_vars,
        output_vars=output_vars,
        labels=[label for *_, label in circuits],
        nodes=(forget_nodes | retain_nodes) - frozen_set,
        frozen=frozen_set,
        node_model=node_model,
        n_vars=pool.top,
    )


def _signal_vars(
    circuit: nx.DiGraph,
    output: str,
    out: int,
    keep: Mapping[str, int],
    index: int,
    pool: IDPool,
    node_model: str,
) -> tuple[dict[str, int], dict[str, int]]:
    """Each node's signal variable in one circuit, and the keep literals gating receivers."""
    varmap: dict[str, int] = {}
    keep_lits: dict[str, int] = {}
    for n in circuit:
        if n == output:
            varmap[n] = out
        elif node_model == "derived" or circuit.in_degree(n) == 0:
            varmap[n] = keep[n]  # the node's value is its keep variable
        else:
            varmap[n] = pool.id(("s", index, n))  # signal of n in this circuit
            keep_lits[n] = keep[n]
    return varmap, keep_lits


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: encoding allocates ~10 small objects per clause, and
    with large graphs in memory each automatic collection rescans them (half the encode time
    on the benchmark). Nothing built here is cyclic garbage."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --------------------------------------------------------------------------------------------
# Solving


def _soft_clauses(formula: JointFormula) -> tuple[list[tuple[Clause, int]], int]:
    """Lexicographic soft clauses, weights chosen so each level outweighs all below it.

    (edge not relaxed, W2) > (copies agree, W) > (node kept, 1). Returns the clauses and W.
    """
    keep_soft: list[Clause] = []
    for n in sorted(formula.nodes):
        if n in formula.conflict_vars:
            # Kept in some copy: for an agreeing node this is "kept"; a conflict is no edit.
            keep_soft.append([formula.keep_forget[n], formula.keep_retain[n]])
        else:
            var = formula.keep_forget.get(n, formula.keep_retain.get(n))
            keep_soft.append([var])  # type: ignore[list-item]
    weight = len(keep_soft) + 1  # one conflict costs more than all possible edits together
    relax_weight = weight * len(formula.conflict_vars) + weight  # and one relaxed edge more
    soft = [([e], relax_weight) for e in formula.relax_vars.values()]
    soft += [([-c], weight) for c in formula.conflict_vars.values()]
    soft += [(clause, 1) for clause in keep_soft]
    return soft, weight


def _maxsat(hard: list[Clause], soft: list[tuple[Clause, int]]) -> tuple[set[int], int]:
    """Optimal model (set of true literals) and cost of an exact weighted MaxSAT problem."""
    wcnf = WCNF()
    wcnf.extend(hard)
    for clause, weight in soft:
        wcnf.append(clause, weight=weight)
    with RC2Stratified(wcnf, solver=MAXSAT_SOLVER, adapt=True, exhaust=True, minz=True) as rc2:
        model = rc2.compute()
        if model is None:
            raise LocalizationError("the hard clauses have no solution")
        return set(model), int(rc2.cost)


def _hard_core_message(formula: JointFormula, relaxed: bool) -> str:
    core = _minimal_core(formula, [])
    lines = [
        "no assignment satisfies the circuits even with conflicts allowed; these constraints "
        "cannot hold together:"
    ]
    lines += [f"  - [{formula.tags[i].circuit}] {_tag_line(formula.tags[i])}" for i in core]
    if relaxed:
        lines.append("Even with every frozen OR edge dropped the forget output stays on.")
    else:
        lines.append(
            "Usually a frozen node drives the forget output through edges read as OR (e.g. "
            "input -> logits with gate OR or ADDER): pass relax_frozen=True to drop the fewest "
            "such edges, or remove them from the forget circuit."
        )
    return "\n".join(lines)


class _CoreSolver:
    """CaDiCaL over the formula with one selector per clause, for unsatisfiable cores."""

    def __init__(self, formula: JointFormula) -> None:
        self.formula = formula
        first = formula.n_vars + 1
        self.selectors = list(range(first, first + len(formula.clauses)))
        self.index = {s: i for i, s in enumerate(self.selectors)}
        self.solver = Solver(name=SAT_SOLVER)
        # Free the native solver with its owner, and before interpreter teardown (pysat's own
        # __del__ fails once module globals are gone).
        self._finalizer = weakref.finalize(self, self.solver.delete)
        for clause, sel in zip(formula.clauses, self.selectors, strict=True):
            self.solver.add_clause([*clause, -sel])

    def core(self, extra: list[int]) -> list[int] | None:
        """Minimal set of assumptions (selectors and ``extra``) that is unsatisfiable."""
        assumptions = self.selectors + extra
        if self.solver.solve(assumptions=assumptions):
            return None
        core = list(self.solver.get_core() or [])
        i = 0
        while i < len(core):  # deletion-based minimisation: drop what is not needed
            trial = core[:i] + core[i + 1 :]
            if self.solver.solve(assumptions=trial):
                i += 1
            else:
                kept = set(self.solver.get_core() or trial)
                core = [lit for lit in trial if lit in kept]
        return core

    def close(self) -> None:
        self._finalizer()


def _minimal_core(formula: JointFormula, extra: list[int]) -> list[int]:
    """Clause indices of a minimal unsatisfiable core (``extra`` assumptions included)."""
    solver = _CoreSolver(formula)
    try:
        core = solver.core(extra) or []
        return [solver.index[lit] for lit in core if lit in solver.index]
    finally:
        solver.close()


# --------------------------------------------------------------------------------------------
# The result


@dataclass
class Localization:
    """Forget / conflict / retain / safe nodes from :func:`localize`.

    Attributes:
        forget: nodes to edit (keep value 0, not a conflict).
        conflict: nodes whose forget and retain copies disagree in the optimum.
        retain: nodes in a circuit kept (value 1, not a conflict).
        safe: ``retain`` plus nodes of ``all_nodes`` that are in no circuit.
        satisfiable: whether Φ itself (shared variables, no copies, no relaxed edge) is
            satisfiable; equivalently, whether there are no conflicts and no relaxed edges.
        assignment: ``{node: (forget copy, retain copy)}`` keep values, ``None`` where the
            node is not in the forget (resp. any retain) circuit; frozen nodes omitted.
        kinds: node kind of every categorised node (from ``kind`` attributes or the name).
        output, node_model, frozen, labels: how the problem was posed; ``labels`` name the
            circuits (forget first) as used in explanations.
        relaxed_edges: forget-circuit edges from frozen nodes that had to be dropped
            (``relax_frozen=True`` only; empty otherwise).
        stats: sizes and timings (variables, clauses, seconds to encode / SAT / MaxSAT).
        explanations: cache of :meth:`explain` texts; saved with the result.
    """

    forget: set[str]
    conflict: set[str]
    retain: set[str]
    safe: set[str]
    satisfiable: bool
    assignment: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    output: str = "logits"
    node_model: str = "switch"
    frozen: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    relaxed_edges: list[tuple[str, str]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    explanations: dict[str, str] = field(default_factory=dict)
    _formula: JointFormula | None = field(default=None, repr=False, compare=False)
    _core_solver: _CoreSolver | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_core_solver"] = None  # a native solver cannot be pickled; rebuilt on demand
        return state

    def category(self, node: str) -> str:
        """``"forget"``, ``"conflict"``, ``"retain"``, ``"safe"`` (in no circuit), or raise."""
        for name in ("forget", "conflict", "retain", "safe"):
            if node in getattr(self, name):
                return name
        if node == self.output or node in self.frozen:
            raise KeyError(f"{node!r} is the output or frozen: it is in no category")
        raise KeyError(f"{node!r} is not a node of these circuits (nor of all_nodes)")

    def counts_by_kind(self) -> dict[str, dict[str, int]]:
        """``{kind: {"forget": n, "conflict": n, "retain": n, "safe": n}}``."""
        counts: dict[str, dict[str, int]] = {}
        for name in ("forget", "conflict", "retain", "safe"):
            for node in getattr(self, name):
                kind = self.kinds.get(node) or node_kind(node)
                row = counts.setdefault(
                    kind, dict.fromkeys(("forget", "conflict", "retain", "safe"), 0)
                )
                row[name] += 1
        return dict(sorted(counts.items()))

    def explain(self, node: str) -> str:
        """Why ``node`` is in its category; for a conflict, the edges that force it.

        For a conflict node the text is a minimal unsatisfiable core of: the circuit clauses,
        the node's copies forced equal, and every other non-conflict node's copies forced
        equal. It is unsatisfiable because the optimum has the fewest conflicts, so the core
        names the circuit edges and gates that force the node to 0 in the forget circuit
        and to 1 in a retain circuit.
        """
        if node in self.explanations:
            return self.explanations[node]
        category = self.category(node)
        if category != "conflict":
            f, r = self.assignment.get(node, (None, None))
            where = (
                "in no circuit"
                if node not in self.assignment
                else (f"forget copy {f}, retain copy {r}")
            )
            return f"{node!r} is a {category} node ({where}); only conflict nodes have a core."
        if self._formula is None:
            raise RuntimeError(
                f"no explanation of {node!r} was saved and the formula is gone (result loaded "
                f"from JSON): run localize(...) again and call explain() before saving"
            )
        text = self._explain_conflict(node)
        self.explanations[node] = text
        return text

    def _explain_conflict(self, node: str) -> str:
        formula = self._formula
        assert formula is not None
        if self._core_solver is None:
            self._core_solver = _CoreSolver(formula)
        # The optimum's choices other than this node's: if these and "node agrees" could hold
        # together, a solution with fewer conflicts (or relaxed edges) would exist.
        agree = [
            -c for n, c in formula.conflict_vars.items() if n not in self.conflict or n == node
        ]
        relaxed = set(self.relaxed_edges)
        agree += [e for edge, e in formula.relax_vars.items() if edge not in relaxed]
        core = self._core_solver.core(agree)
        if core is None:  # cannot happen for an optimal solution; say so rather than guess
            return f"{node!r}: no core found (the solution may not be optimal)"
        clause_ids = [
            self._core_solver.index[lit] for lit in core if lit in self._core_solver.index
        ]
        held = sorted(n for n, c in formula.conflict_vars.items() if -c in core and n != node)
        held_edges = sorted(edge for edge, e in formula.relax_vars.items() if e in core)
        return _render_explanation(
            node, self.assignment[node], formula, clause_ids, held, held_edges
        )

    # -- persistence ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict (sets as sorted lists)."""
        return {
            "version": _JSON_VERSION,
            "forget": sorted(self.forget),
            "conflict": sorted(self.conflict),
            "retain": sorted(self.retain),
            "safe": sorted(self.safe),
            "satisfiable": self.satisfiable,
            "assignment": {n: list(v) for n, v in sorted(self.assignment.items())},
            "kinds": dict(sorted(self.kinds.items())),
            "output": self.output,
            "node_model": self.node_model,
            "frozen": list(self.frozen),
            "labels": list(self.labels),
            "relaxed_edges": [list(edge) for edge in self.relaxed_edges],
            "stats": self.stats,
            "explanations": dict(sorted(self.explanations.items())),
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Localization:
        if data.get("version") != _JSON_VERSION:
            raise ValueError(f"unsupported Localization JSON version {data.get('version')!r}")
        return cls(
            forget=set(data["forget"]),
            conflict=set(data["conflict"]),
            retain=set(data["retain"]),
            safe=set(data["safe"]),
            satisfiable=bool(data["satisfiable"]),
            assignment={n: (v[0], v[1]) for n, v in data["assignment"].items()},
            kinds=dict(data["kinds"]),
            output=data["output"],
            node_model=data["node_model"],
            frozen=list(data["frozen"]),
            labels=list(data["labels"]),
            relaxed_edges=[(u, v) for u, v in data["relaxed_edges"]],
            stats=dict(data["stats"]),
            explanations=dict(data["explanations"]),
        )

    @classmethod
    def from_json(cls, text: str) -> Localization:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON atomically (temporary file in the same folder, then ``os.replace``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(self.to_json())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Localization:
        return cls.from_json(Path(path).read_text())

    def summary(self) -> str:
        """One line: category sizes and whether Φ was satisfiable."""
        return (
            f"Localization({len(self.forget)} forget, {len(self.conflict)} conflict, "
            f"{len(self.retain)} retain, {len(self.safe)} safe; "
            f"{'satisfiable' if self.satisfiable else 'unsatisfiable'})"
        )


def _edge_text(edges: Sequence[tuple[str, str, str]], limit: int = 6) -> str:
    shown = [f"{u} -> {v} [{g}]" for u, v, g in edges[:limit]]
    more = f"; … (+{len(edges) - limit} more)" if len(edges) > limit else ""
    return "; ".join(shown) + more


def _tag_line(tag: ClauseTag) -> str:
    """A clause's text followed by the edges it is about."""
    return tag.describe() + (f"   (edges: {_edge_text(tag.edges)})" if tag.edges else "")


def _render_explanation(
    node: str,
    values: tuple[int | None, int | None],
    formula: JointFormula,
    clause_ids: list[int],
    held: list[str],
    held_edges: list[tuple[str, str]],
) -> str:
    """Core clauses grouped by circuit, then by receiver (its gate formula printed once)."""
    lines = [
        f"{node!r} is a conflict node: forget copy = {values[0]}, retain copy = {values[1]} "
        f"(1 = keep, 0 = edit).",
        "Giving it one value everywhere would need another conflict; a minimal set of "
        "constraints that rules it out:",
    ]
    tags = [formula.tags[i] for i in clause_ids if formula.tags[i].role != "copies"]
    order = {label: k for k, label in enumerate(formula.labels)}
    for label in sorted({t.circuit for t in tags}, key=lambda lab: order.get(lab, -1)):
        in_circuit = [t for t in tags if t.circuit == label]
        goals = [t.text for t in in_circuit if t.role in ("output", "frozen")]
        lines.append(f"  {label}: " + "; ".join(goals) if goals else f"  {label}:")
        by_receiver: dict[str, list[ClauseTag]] = {}
        for t in in_circuit:
            if t.role not in ("output", "frozen"):
                by_receiver.setdefault(t.formula or str(t.receiver), []).append(t)
        for formula_text, group in by_receiver.items():
            lines.append(f"    {formula_text}")
            for t in group:
                edges = f"   [{_edge_text(t.edges)}]" if t.edges else ""
                lines.append(f"      - {t.text}{edges}")
    lines.append(
        "  nodes held to one value across circuits (not conflicts): "
        + (_abbrev(held, 30) if held else "none")
    )
    if held_edges:
        kept = _abbrev([f"{u} -> {v}" for u, v in held_edges], 30)
        lines.append(f"  frozen edges kept (not relaxed): {kept}")
    # Edges singled out by a clause first (a sender that alone forces or needs the receiver),
    # then the rest of the gates involved.
    ranked = sorted(tags, key=lambda t: len(t.edges) != 1)
    involved = list(
        dict.fromkeys(f"{u} -> {v} [{g}] in {t.circuit}" for t in ranked for u, v, g in t.edges)
    )
    lines.append("Edges involved: " + (_abbrev(involved, 40) if involved else "none"))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Entry point


def _collect_kinds(circuits: Iterable[nx.DiGraph], all_nodes: Iterable[str] | None) -> dict:
    kinds: dict[str, str] = {}
    if isinstance(all_nodes, nx.Graph):
        circuits = [*circuits, all_nodes]
    for circuit in circuits:
        for n, attrs in circuit.nodes(data=True):
            if n not in kinds or attrs.get("kind") is not None:
                kinds[n] = node_kind(n, attrs)
    return kinds


def localize(
    forget: nx.DiGraph,
    retain: Sequence[nx.DiGraph] | nx.DiGraph,
    output: str = "logits",
    all_nodes: Iterable[str] | None = None,
    *,
    node_model: NodeModel = "switch",
    frozen: Iterable[str] = ("input",),
    relax_frozen: bool = False,
) -> Localization:
    """Sort the circuits' nodes into forget / conflict / retain / safe (DESIGN §7).

    Args:
        forget: logical circuit of the forget set (``gate`` on every edge).
        retain: logical circuits of the retain sets (a single DiGraph is accepted too).
        output: output node name, present in every circuit.
        all_nodes: every node of the model graph (a list, or the full graph); nodes in no
            circuit become ``safe``. Without it, ``safe == retain``.
        node_model: ``"switch"`` (default) or ``"derived"``; see the module docstring.
        frozen: nodes that own no weights and are never edited: fixed to 1 and in no category.
        relax_frozen: a frozen node whose edge the forget circuit reads as OR (an ``input ->
            logits`` ADDER, say) keeps the forget output on whatever is edited, and then there
            is no solution. With ``relax_frozen=True`` such edges may be dropped (read as
            carrying no signal): the fewest possible are dropped, before conflicts are
            counted, and they are listed in :attr:`Localization.relaxed_edges`. Off by
            default, so that such a circuit is reported rather than silently changed.

    Returns:
        A :class:`Localization` with the fewest relaxed edges (0 unless ``relax_frozen``),
        then the fewest conflicts and, among those, the fewest forget nodes.

    Raises:
        TypeError / ValueError: bad circuits (see :func:`joint_formula`).
        LocalizationError: no assignment works even with conflicts allowed (the forget output
            cannot be switched off, e.g. because a frozen ``input`` drives it through OR);
            the message lists the constraints (a minimal unsatisfiable core) and edges.
    """
    retain = _as_retain_list(retain)
    frozen = tuple(frozen)  # may be a one-shot iterable; used twice
    start = time.perf_counter()
    with _gc_paused():
        formula = joint_formula(
            forget, retain, output, node_model=node_model, frozen=frozen, relax_frozen=relax_frozen
        )
    encode_s = time.perf_counter() - start

    start = time.perf_counter()
    with Solver(name=SAT_SOLVER, bootstrap_with=formula.clauses) as solver:
        satisfiable = bool(solver.solve(assumptions=formula.agree_assumptions))
        unrelaxed = list(formula.relax_vars.values())
        if not satisfiable and not solver.solve(assumptions=unrelaxed):
            if not formula.relax_vars or not solver.solve():
                raise LocalizationError(_hard_core_message(formula, relax_frozen))
    sat_s = time.perf_counter() - start

    start = time.perf_counter()
    hard = list(formula.clauses)
    if satisfiable:  # no conflicts needed: fix the copies equal, minimise edits only
        hard += [[lit] for lit in formula.agree_assumptions]
    soft, weight = _soft_clauses(formula)
    model, cost = _maxsat(hard, soft)
    maxsat_s = time.perf_counter() - start

    result = _categorize(formula, model, satisfiable, all_nodes, output, set(frozen))
    result.relaxed_edges = sorted(edge for edge, e in formula.relax_vars.items() if e not in model)
    result.kinds = {
        n: k
        for n, k in _collect_kinds([forget, *retain], all_nodes).items()
        if n in result.assignment or n in result.safe
    }
    result._formula = formula
    result.stats = {
        "n_vars": formula.n_vars,
        "n_clauses": len(formula.clauses),
        "n_soft": len(soft),
        "n_split": len(formula.conflict_vars),
        "n_relaxable": len(formula.relax_vars),
        "conflict_weight": weight,
        "cost": cost,
        "encode_s": round(encode_s, 4),
        "sat_s": round(sat_s, 4),
        "maxsat_s": round(maxsat_s, 4),
        "sat_solver": SAT_SOLVER,
        "maxsat": f"RC2Stratified({MAXSAT_SOLVER})",
    }
    return result


def _categorize(
    formula: JointFormula,
    model: set[int],
    satisfiable: bool,
    all_nodes: Iterable[str] | None,
    output: str,
    frozen: set[str],
) -> Localization:
    forget: set[str] = set()
    conflict: set[str] = set()
    retain: set[str] = set()
    assignment: dict[str, tuple[int | None, int | None]] = {}
    for n in formula.nodes:
        f = int(formula.keep_forget[n] in model) if n in formula.keep_forget else None
        r = int(formula.keep_retain[n] in model) if n in formula.keep_retain else None
        assignment[n] = (f, r)
        if f is not None and r is not None and f != r:
            conflict.add(n)
        elif (f if f is not None else r) == 0:
            forget.add(n)
        else:
            retain.add(n)
    outside = set(all_nodes or ()) - formula.nodes - frozen - {output}
    return Localization(
        forget=forget,
        conflict=conflict,
        retain=retain,
        safe=retain | outside,
        satisfiable=satisfiable,
        assignment=assignment,
        output=output,
        node_model=formula.node_model,
        frozen=sorted(formula.frozen),
        labels=list(formula.labels),
    )
