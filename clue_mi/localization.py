"""Localization: solve the joint CNF of :mod:`clue_mi.cnf` and sort components (DESIGN §7).

:func:`localize` builds Φ = Φ_f ∧ Φ_r1 ∧ … ∧ Φ_rk with :func:`clue_mi.cnf.joint_formula`
under one of two semantics:

``"gates"`` (default; paper Appendix B, Eq. 7–8)
    every gate of the forget circuit switched off, every gate of each retain circuit kept on.
    Forget clauses hold only negative literals and retain clauses only positive ones, so a
    conflict's forget copy is 0 and its retain copy 1, and a solution always exists.
``"output"`` (paper Eq. 3–4, Tseitin)
    the forget output 0 and every retain output 1. Its optimum is a *minimal cut*: the
    smallest edit that switches the forget output off (one head on the embedded model).

Φ is first checked with CaDiCaL. The answer comes from one exact, lexicographic MaxSAT
problem (RC2): a node in the forget circuit *and* a retain circuit has a forget copy and a
retain copy; the circuit clauses are hard; the soft clauses are "the copies agree" (weight W)
and "the node is kept" (weight 1), with W larger than the number of weight-1 clauses, so the
optimum has the fewest conflicts first and, among those, the fewest edits. Nodes on one side
only get a single variable: their other copy would occur in no clause and could always agree,
so this is exact. When Φ is satisfiable the copies are forced equal and only edits are
minimised. Under output semantics, ``relax_frozen=True`` puts a heavier level first: drop the
fewest forget-circuit OR edges out of frozen nodes.

:meth:`Localization.explain` turns a conflict into text: a minimal unsatisfiable core (one
selector per clause, CaDiCaL assumptions, deletion-based minimisation) of the circuits with
that node's copies, and every non-conflict node's copies, held equal; under per-gate
semantics each core clause is a gate constraint, printed as receiver, gate types, senders and
the circuit it comes from.

Nodes in ``frozen`` (default ``("input",)``: it owns no weights) are never edited (constants
under per-gate semantics, fixed to 1 under output semantics) and, like the output node,
belong to no category. Categories: **forget** = 0 on every side where it appears,
**conflict** = copies disagree, **retain** = kept, **safe** = retain ∪ nodes in no circuit
(given ``all_nodes``).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
from pysat.examples.rc2 import RC2Stratified
from pysat.formula import WCNF
from pysat.solvers import Solver

from clue_mi.cnf import (
    SEMANTICS,
    Clause,
    ClauseTag,
    JointFormula,
    NodeModel,
    Semantics,
    _abbrev,
    _as_retain_list,
    joint_formula,
)
from clue_mi.gates import node_kind

__all__ = ["SEMANTICS", "Localization", "LocalizationError", "localize"]

SAT_SOLVER = "cadical195"
"""python-sat name of the SAT solver (CaDiCaL 1.9.5) used for Φ and for cores."""
MAXSAT_SOLVER = "g4"
"""python-sat name of the SAT oracle inside RC2 (Glucose 4; fastest on these formulas)."""

_JSON_VERSION = 1


class LocalizationError(ValueError):
    """The hard part of the problem has no solution (e.g. the forget output cannot be 0)."""


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
        satisfiable: whether Φ itself (shared variables, no copies) is satisfiable:
            whether there are no conflicts (and, under output semantics, no relaxed edges).
        assignment: ``{node: (forget copy, retain copy)}`` keep values, ``None`` where the
            node is not in the forget (resp. any retain) circuit; frozen nodes omitted.
        kinds: node kind of every categorised node (from ``kind`` attributes or the name).
        semantics: ``"gates"`` (per-gate, paper Appendix B) or ``"output"`` (a minimal cut);
            results saved before this field existed load as ``"output"``.
        output, node_model, frozen, labels: how the problem was posed (``node_model`` is
            ``None`` under per-gate semantics); ``labels`` name the circuits (forget first) as
            used in explanations.
        relaxed_edges: forget-circuit edges from frozen nodes that were dropped: under
            per-gate semantics those whose gate no edit could switch off (always done), under
            output semantics the fewest that keep the forget output on (``relax_frozen=True``
            only; empty otherwise).
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
    semantics: str = "gates"
    node_model: str | None = None
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
            "semantics": self.semantics,
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
            # Saved before per-gate semantics existed: those were all output semantics.
            semantics=data.get("semantics", "output"),
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
        """One line: semantics, category sizes, whether Φ was satisfiable, dropped edges."""
        dropped = f", {len(self.relaxed_edges)} edges dropped" if self.relaxed_edges else ""
        return (
            f"Localization[{self.semantics}]({len(self.forget)} forget, "
            f"{len(self.conflict)} conflict, {len(self.retain)} retain, {len(self.safe)} safe; "
            f"{'satisfiable' if self.satisfiable else 'unsatisfiable'}{dropped})"
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
    semantics: Semantics = "gates",
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
        semantics: ``"gates"`` (default): every forget gate switched off and every retain
            gate kept on (paper Appendix B). ``"output"``: the forget output 0 and the retain
            outputs 1 with the circuits read as Boolean functions; its optimum is a minimal
            cut (the smallest edit that switches the forget output off).
        node_model: output semantics only: ``"switch"`` (default) or ``"derived"``; see
            :mod:`clue_mi.cnf`. Ignored under ``"gates"``, where a node is not tied to its
            gate.
        frozen: nodes that own no weights and are never edited (constants, value 1); in no
            category.
        relax_frozen: output semantics only. A frozen node whose edge the forget circuit
            reads as OR (an ``input -> logits`` ADDER, say) keeps the forget output on
            whatever is edited, and then there is no solution. With ``relax_frozen=True``
            such edges may be dropped (read as carrying no signal): the fewest possible are
            dropped, before conflicts are counted, and they are listed in
            :attr:`Localization.relaxed_edges`. Off by default, so that such a circuit is
            reported rather than silently changed. Under ``"gates"`` a frozen edge whose
            forget gate no edit can switch off is always dropped (and listed there too).

    Returns:
        A :class:`Localization` with the fewest relaxed edges (0 unless ``relax_frozen``),
        then the fewest conflicts and, among those, the fewest forget nodes.

    Raises:
        TypeError / ValueError: bad circuits (see :func:`clue_mi.cnf.joint_formula`), unknown
            ``semantics`` or ``node_model``.
        LocalizationError: output semantics only: no assignment works even with conflicts
            allowed (the forget output cannot be switched off, e.g. because a frozen
            ``input`` drives it through OR); the message lists the constraints (a minimal
            unsatisfiable core) and edges. Per-gate semantics always has a solution.
    """
    retain = _as_retain_list(retain)
    frozen = tuple(frozen)  # may be a one-shot iterable; used twice
    start = time.perf_counter()
    with _gc_paused():
        formula = joint_formula(
            forget,
            retain,
            output,
            semantics=semantics,
            node_model=node_model,
            frozen=frozen,
            relax_frozen=relax_frozen,
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
    relaxed = {edge for edge, e in formula.relax_vars.items() if e not in model}
    result.relaxed_edges = sorted(relaxed | set(formula.dropped_edges))
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
        "n_dropped": len(formula.dropped_edges),
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
        semantics=formula.semantics,
        node_model=formula.node_model,
        frozen=sorted(formula.frozen),
        labels=list(formula.labels),
    )
