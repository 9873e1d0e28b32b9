"""CNF encodings of logical circuits, for both localization semantics (DESIGN §7).

A logical circuit (``nx.DiGraph``, ``gate`` on every edge, see :mod:`clue_mi.gates`) is turned
into clauses over one keep variable per component (1 = keep, 0 = edit). For a receiver ``r``
with senders grouped into A (AND), O (OR) and D (ADDER) there are two readings; solving them
and the result object live in :mod:`clue_mi.localization`.

Per-gate semantics (``semantics="gates"``, the default; paper Appendix B, Eq. 7–8)
-----------------------------------------------------------------------------------
Every receiver of a circuit, the output included, contributes one constraint *on its senders*;
``r``'s own variable is not tied to them (no Tseitin ``r ↔ gate``):

* **forget** circuit, every gate switched **off**: ``(∨ ¬A) ∨ (∧ ¬(O ∪ D))`` (ADDER acts as
  OR). Clauses: ``(∨_{a∈A} ¬a ∨ ¬o)`` for each ``o ∈ O ∪ D``; ``(∨_{a∈A} ¬a)`` if O ∪ D is
  empty. Only negative literals.
* **retain** circuit, every gate kept **on**: ``(∧ (A ∪ D)) ∧ (∨ O)`` (ADDER acts as AND).
  Clauses: the unit ``(a)`` for each ``a ∈ A ∪ D``, and ``(∨ O)`` when O is non-empty. Only
  positive literals.

Constant nodes (``input``: it owns no weights) are 1: their literal is dropped from a forget
clause (``¬input`` is false) and satisfies a retain clause. A forget clause left empty is a
gate that no edit can switch off (an ``input`` edge read as OR with no AND sender beside it);
its constant edges are dropped and reported (:attr:`GateEncoding.dropped`), as DESIGN §7 asks.
No auxiliary variables are needed.

Output semantics (``semantics="output"``; paper Eq. 3–4): a minimal cut
--------------------------------------------------------------------------
The whole circuit read as one Boolean function, Tseitin-encoded:

* in a **retain** circuit ``r = AND(A ∪ D) ∧ OR(O)``  (ADDER acts as AND);
* in the **forget** circuit ``r = AND(A) ∧ OR(O ∪ D)``  (ADDER acts as OR);

an empty group contributes nothing (an auxiliary variable stands for the OR part when a
receiver has both parts). The forget circuit's output must be 0 and each retain circuit's
output 1. The optimum is the *smallest* edit that switches the forget output off: a minimal
cut of the circuit (one head on the embedded model), kept for comparison.

What a node's variable means under output semantics is chosen with ``node_model``:

``"switch"`` (default)
    Every node ``n`` that owns weights has a **keep** variable ``k_n``, shared by all
    circuits, and in each circuit a *signal* ``s_n`` (is ``n`` working in this task?):
    ``s_r = k_r ∧ gate(senders)`` for a receiver, ``s_n = k_n`` for a node without senders.
``"derived"``
    The node's variable *is* its gate, ``x_r = gate(senders)``, one variable per node shared
    by all circuits; only nodes without senders are free. On real circuits, where ``input`` is
    the only leaf, every variable is then a function of ``input`` alone.

The joint formula
-----------------
``Φ = Φ_f ∧ Φ_r1 ∧ … ∧ Φ_rk`` (:func:`joint_formula`). A node in the forget circuit *and* a
retain circuit gets a forget copy (used in Φ_f) and a retain copy (used in every Φ_r) and a
conflict indicator that is 1 whenever the copies differ; Φ itself is the formula with every
indicator assumed 0 (:attr:`JointFormula.agree_assumptions`). Every clause carries a
:class:`ClauseTag` naming the circuit, receiver, gate and edges it comes from, so that an
unsatisfiable core reads as circuit edges.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import networkx as nx
from pysat.formula import CNF, IDPool

from clue_mi.gates import GATES

__all__ = [
    "SEMANTICS",
    "ClauseTag",
    "GateEncoding",
    "JointFormula",
    "gate_clauses",
    "gate_clauses_tagged",
    "gate_groups",
    "joint_formula",
    "receiver_parts",
    "tseitin",
    "tseitin_tagged",
]

Side = Literal["forget", "retain"]
"""Which side a circuit is on: it decides how ADDER is read and what its gates must do."""
Semantics = Literal["gates", "output"]
"""How circuits become clauses: per gate (paper Appendix B) or as one function (a minimal cut)."""
SEMANTICS: tuple[str, ...] = ("gates", "output")
NodeModel = Literal["switch", "derived"]
Clause = list[int]


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


def receiver_parts(groups: Mapping[str, Sequence[str]], side: Side) -> tuple[list[str], list[str]]:
    """Split a receiver's senders into (AND part, OR part) as read on the given side.

    ADDER senders join the AND part in a retain circuit and the OR part in the forget circuit.
    """
    if side == "retain":
        return [*groups["AND"], *groups["ADDER"]], list(groups["OR"])
    if side == "forget":
        return list(groups["AND"]), [*groups["OR"], *groups["ADDER"]]
    raise ValueError(f"side must be 'forget' or 'retain', got {side!r}")


# --------------------------------------------------------------------------------------------
# Clause tags and the Tseitin encoding (output semantics)


@dataclass(frozen=True)
class ClauseTag:
    """Where a clause comes from, so an unsatisfiable core can be read as circuit edges.

    ``role`` is, under per-gate semantics, ``"gate-off"`` (a forget gate switched off) or
    ``"gate-on"`` (a retain gate kept on); under output semantics one of ``"needs"``
    (receiver on needs this literal), ``"suffices"`` (this sender alone turns the OR part on),
    ``"needs-one"`` (OR part on needs one of these), ``"all-suffice"`` (all inputs on turn
    the receiver on), ``"output"``, ``"frozen"``, ``"relax"``; and ``"copies"`` (the
    definition of a node's conflict indicator) under both. ``side`` is ``"forget"``,
    ``"retain"`` or, for clauses of no one circuit, ``"copies"`` / ``"frozen"``.
    ``edges`` lists ``(sender, receiver, gate)`` of the circuit edges the clause is about.
    """

    circuit: str
    side: str
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
    side: str,
    receiver: str,
    sender_gate: Mapping[str, str],
    formula: str,
    role: str,
    lits: list[_Lit],
    text: str,
) -> ClauseTag:
    """Tag of one clause of ``receiver``: the edges of the senders its literals stand for."""
    edges = tuple((s, receiver, sender_gate[s]) for lit in lits for s in lit.senders)
    return ClauseTag(circuit, side, receiver, role, edges, text, formula)


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
    side: Side,
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
        side: ``"forget"`` (ADDER acts as OR) or ``"retain"`` (ADDER acts as AND).
        varmap: variable of every node of the circuit (its signal in this circuit).
        fresh: returns a new, unused variable id (for the OR part of mixed receivers).
        keep: optional ``{receiver: keep literal}``; a receiver listed here is on only if it is
            kept too (its keep literal joins the AND part). Used by the "switch" node model.
        label: circuit name used in the tags (defaults to ``side``).
        edge_lits: optional ``{(sender, receiver): literal}`` used for that edge instead of
            the sender's variable (how :func:`joint_formula` makes an edge relaxable).

    Returns:
        ``[(clause, tag), ...]``; the output unit clause is *not* included.
    """
    name = label or side
    keep = keep or {}
    edge_lits = edge_lits or {}
    clauses: list[tuple[Clause, ClauseTag]] = []
    for receiver in nx.topological_sort(circuit):
        if circuit.in_degree(receiver) == 0:
            continue  # a leaf: its variable is free
        groups = gate_groups(circuit, receiver)
        sender_gate = {s: gate for gate, senders in groups.items() for s in senders}
        conj_names, disj_names = receiver_parts(groups, side)
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

        tag = functools.partial(_make_tag, name, side, receiver, sender_gate, formula)

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
    side: Side,
    varmap: Mapping[str, int],
    fresh: Callable[[], int] | None = None,
    *,
    keep: Mapping[str, int] | None = None,
) -> list[Clause]:
    """Tseitin clauses (paper Eq. 3) of ``circuit`` read as a forget or a retain circuit.

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

    return [clause for clause, _ in tseitin_tagged(circuit, side, varmap, fresh, keep=keep)]


# --------------------------------------------------------------------------------------------
# Per-gate encoding (paper Appendix B, Eq. 7–8)


@dataclass
class GateEncoding:
    """Per-gate clauses of one circuit, each with its :class:`ClauseTag`.

    ``dropped`` lists the ``(sender, receiver)`` edges from constants that were dropped: the
    forget gate they feed could not be switched off by any edit (e.g. ``input -> r`` read as
    OR with no AND sender beside it), so the edge carries nothing an edit can change.
    """

    clauses: list[tuple[Clause, ClauseTag]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)


def _gate_text(receiver: str, groups: Mapping[str, Sequence[str]], side: str) -> str:
    """``r ← AND(a, b) OR(c) ADDER(d) must be off``: receiver, gate types and senders."""
    parts = " ".join(f"{gate}({_abbrev(senders)})" for gate, senders in groups.items() if senders)
    return f"{receiver} ← {parts} must be {'off' if side == 'forget' else 'on'}"


def _forget_gate(
    receiver: str, groups: Mapping[str, Sequence[str]], varmap: Mapping[str, int], const: set[str]
) -> tuple[list[tuple[Clause, list[str], str]], list[tuple[str, str]]]:
    """Clauses switching a forget gate off, as ``(clause, senders, text)``, and dropped edges.

    Off = ``(∨ ¬A) ∨ (∧ ¬(O ∪ D))``, one clause ``(∨ ¬A ∨ ¬o)`` per OR/ADDER sender ``o`` (or
    ``(∨ ¬A)`` when there is none). A constant's literal ``¬c`` is false and left out; a clause
    left empty means no edit switches the gate off, and its constant edges are dropped.
    """
    ands = [a for a in groups["AND"] if a not in const]
    const_ands = [a for a in groups["AND"] if a in const]
    ors: list[str | None] = [*groups["OR"], *groups["ADDER"]] or [None]
    out: list[tuple[Clause, list[str], str]] = []
    dropped: list[tuple[str, str]] = []
    for o in ors:
        senders = ands + ([o] if o is not None and o not in const else [])
        if not senders:  # every literal was a constant: this clause cannot hold
            dropped += [(c, receiver) for c in [*const_ands, *([o] if o is not None else [])]]
            continue
        if o is None:
            text = f"one of {_abbrev(ands)} off"
        elif o in const:
            text = f"{o} is constant: one of {_abbrev(ands)} off"
        else:
            text = f"{o} off" + (f", or one of {_abbrev(ands)} off" if ands else "")
        out.append(([-varmap[s] for s in senders], senders, text))
    return out, dropped


def _retain_gate(
    groups: Mapping[str, Sequence[str]], varmap: Mapping[str, int], const: set[str]
) -> list[tuple[Clause, list[str], str]]:
    """Clauses keeping a retain gate on: ``(a)`` per AND/ADDER sender, ``(∨ O)``.

    A constant is 1: its unit clause holds and an OR group holding it is satisfied.
    """
    out = [
        ([varmap[a]], [a], f"{a} on") for a in [*groups["AND"], *groups["ADDER"]] if a not in const
    ]
    ors = list(groups["OR"])
    if ors and not const.intersection(ors):
        out.append(([varmap[o] for o in ors], ors, f"one of {_abbrev(ors)} on"))
    return out


def gate_clauses_tagged(
    circuit: nx.DiGraph,
    side: Side,
    varmap: Mapping[str, int],
    *,
    constants: Iterable[str] = ("input",),
    label: str | None = None,
) -> GateEncoding:
    """Per-gate clauses (paper Eq. 7–8) of every receiver of ``circuit``, output included.

    Args:
        circuit: logical circuit (``gate`` on every edge).
        side: ``"forget"`` (every gate off; ADDER acts as OR) or ``"retain"`` (every gate on;
            ADDER acts as AND).
        varmap: keep variable of every non-constant sender.
        constants: nodes fixed to 1 (``input``); they get no variable.
        label: circuit name used in the tags (defaults to ``side``).

    Returns:
        The tagged clauses and the constant edges that had to be dropped (forget side only).
    """
    if side not in ("forget", "retain"):
        raise ValueError(f"side must be 'forget' or 'retain', got {side!r}")
    name = label or side
    const = set(constants)
    encoding = GateEncoding()
    for receiver in nx.topological_sort(circuit):
        if circuit.in_degree(receiver) == 0:
            continue
        groups = gate_groups(circuit, receiver)
        sender_gate = {s: gate for gate, senders in groups.items() for s in senders}
        formula = _gate_text(receiver, groups, side)
        if side == "forget":
            clauses, dropped = _forget_gate(receiver, groups, varmap, const)
            encoding.dropped += [e for e in dropped if e not in encoding.dropped]
        else:
            clauses = _retain_gate(groups, varmap, const)
        role = "gate-off" if side == "forget" else "gate-on"
        for clause, senders, text in clauses:
            edges = tuple((s, receiver, sender_gate[s]) for s in senders)
            tag = ClauseTag(name, side, receiver, role, edges, text, formula)
            encoding.clauses.append((clause, tag))
    return encoding


def gate_clauses(
    circuit: nx.DiGraph,
    side: Side,
    varmap: Mapping[str, int],
    *,
    constants: Iterable[str] = ("input",),
) -> list[Clause]:
    """Per-gate clauses (paper Eq. 7–8) without tags; see :func:`gate_clauses_tagged`."""
    return [c for c, _ in gate_clauses_tagged(circuit, side, varmap, constants=constants).clauses]


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
    ``frozen`` nodes are among ``clauses`` (output semantics; under per-gate semantics
    there are no output variables and frozen nodes are constants without a variable).
    ``relax_vars[(u, r)]`` (output semantics with ``relax_frozen=True``) is 1 while the
    forget circuit's edge from frozen ``u`` to ``r``, read as OR, carries ``u``'s signal, and
    0 when the edge is dropped. ``dropped_edges`` (per-gate semantics) are the forget-circuit
    edges from constants that had to go because no edit can switch their gate off.
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
    semantics: str
    node_model: str | None  # None under per-gate semantics, which has no node model
    dropped_edges: list[tuple[str, str]]
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
    semantics: Semantics = "gates",
    node_model: NodeModel = "switch",
    frozen: Iterable[str] = ("input",),
    split: bool = True,
    relax_frozen: bool = False,
) -> JointFormula:
    """Build Φ = Φ_f ∧ Φ_r1 ∧ … ∧ Φ_rk (see the module docstring).

    Args:
        forget: logical circuit of the forget set.
        retain: logical circuits of the retain sets (a single DiGraph is accepted too).
        output: the output node's name in every circuit.
        semantics: ``"gates"`` (every forget gate off, every retain gate on; default) or
            ``"output"`` (Tseitin, forget output 0 and retain outputs 1: a minimal cut).
        node_model: ``"switch"`` or ``"derived"`` (module docstring); output semantics only.
        frozen: nodes that cannot be edited: constants under ``"gates"``, fixed to 1 under
            ``"output"``; absent ones are ignored.
        split: give nodes that are in the forget circuit and a retain circuit two copies plus
            a conflict indicator. With ``split=False`` every node has one variable and the
            formula is Φ exactly; with ``split=True`` Φ is the formula under
            :attr:`JointFormula.agree_assumptions`.
        relax_frozen: output semantics only: give every forget-circuit edge from a frozen
            node that is read as OR (gate OR or ADDER) a literal of its own, so the edge can
            be dropped (see :func:`clue_mi.localization.localize`). Under ``"gates"`` the
            frozen edges that must go are always dropped (:attr:`JointFormula.dropped_edges`).

    Raises:
        TypeError / ValueError: bad circuits (missing output, cycle, missing or unknown gate,
            output with no input or with outgoing edges), empty ``retain``, unknown
            ``semantics`` or ``node_model``.
    """
    retain = _as_retain_list(retain)
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be 'gates' or 'output', got {semantics!r}")
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

    # Under per-gate semantics frozen nodes are constants and get no variable at all.
    constant = frozen_set if semantics == "gates" else set()
    # Sorted, so variable numbers (and hence the solver's choice among optima) do not depend
    # on string hashing, which changes from one Python process to the next.
    keep_f = {
        n: pool.id(("k", "f", n) if n in both else ("k", n))
        for n in sorted(forget_nodes - constant)
    }
    keep_r = {
        n: pool.id(("k", "r", n) if n in both else ("k", n))
        for n in sorted(retain_nodes - constant)
    }
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
    for n in sorted(frozen_set - constant):
        tag = ClauseTag("all", "frozen", n, "frozen", (), f"{n} is frozen: never edited")
        for var in {keep_f.get(n), keep_r.get(n)} - {None}:
            add([var], tag)  # type: ignore[list-item]

    circuits: list[tuple[nx.DiGraph, Side, dict[str, int], str]] = [
        (forget, "forget", keep_f, _circuit_label(forget, "forget"))
    ]
    circuits += [
        (c, "retain", keep_r, _circuit_label(c, f"retain[{i}]")) for i, c in enumerate(retain)
    ]
    aux = itertools.count()

    def fresh() -> int:
        return pool.id(("aux", next(aux)))

    output_vars: list[int] = []
    dropped: list[tuple[str, str]] = []
    for index, (circuit, side, keep, label) in enumerate(circuits):
        if semantics == "gates":  # one constraint per gate; no output or signal variables
            encoding = gate_clauses_tagged(circuit, side, keep, constants=constant, label=label)
            for clause, tag in encoding.clauses:
                add(clause, tag)
            dropped += encoding.dropped
            continue
        out = pool.id(("out", index))
        output_vars.append(out)
        varmap, keep_lits = _signal_vars(circuit, output, out, keep, index, pool, node_model)
        keep_lits = {r: v for r, v in keep_lits.items() if r not in frozen_set}
        edge_lits: dict[tuple[str, str], int] = {}
        if relax_frozen and side == "forget":
            for u, r, gate in circuit.edges(data="gate"):
                if u in frozen_set and str(gate).upper() in ("OR", "ADDER"):
                    e = edge_lits[u, r] = relax_vars[u, r] = pool.id(("relax", u, r))
                    text = f"edge {u} -> {r} carries {u}'s signal (it is not dropped)"
                    add(
                        [-e, varmap[u]],
                        ClauseTag(label, side, r, "relax", ((u, r, gate),), text),
                    )

        for clause, tag in tseitin_tagged(
            circuit, side, varmap, fresh, keep=keep_lits, label=label, edge_lits=edge_lits
        ):
            add(clause, tag)
        value = 0 if side == "forget" else 1
        text = f"output {output} must be {value} in {label}"
        add([out if value else -out], ClauseTag(label, side, output, "output", (), text))

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
        semantics=semantics,
        node_model=node_model if semantics == "output" else None,
        dropped_edges=sorted(set(dropped)),
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


def __getattr__(name: str) -> Any:
    """``from clue_mi.cnf import localize`` (and the result types) as before the split.

    Solving moved to :mod:`clue_mi.localization`; imported lazily because that module
    imports this one.
    """
    if name in ("localize", "Localization", "LocalizationError"):
        from clue_mi import localization

        return getattr(localization, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
