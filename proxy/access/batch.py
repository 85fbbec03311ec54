"""A request's docs judged together (pure, no I/O).

Within one request, each doc is judged with the request's permitted contacts laid over
the tree, so a new household, its people and their reports may arrive together. In order:
1. every contact of the request (new versions, and deleted ones at their stored place)
   is laid over the tree, and every doc judged (`proxy.access.write`);
2. the contacts refused are taken out of the tree and their refusal is final: a refused
   contact is never judged again (not at its old place, not as anything else);
3. the others are judged again without them, until no further contact is refused.
A contact the user may not write therefore never lends its place to the others, and one
that would move itself out of the scope is refused as a move, never allowed as a stay.
For edits (`edits`: not replication), W15 (`made_up_rev`) is one of the rules of step 1:
a contact CouchDB would refuse as a conflict lends its place to no report either.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from proxy.access.config import AppSettings, UserCtx
from proxy.access.graph import ContactGraph, ContactNode, OverlayGraph
from proxy.access.write import Decision, TreeView, authorize_write, made_up_rev, overlay_node


def authorize_batch(
    user: UserCtx,
    settings: AppSettings,
    graph: ContactGraph,
    docs: Sequence[Mapping[str, Any]],
    stored: Mapping[str, Mapping[str, Any] | None],
    hidden: Collection[str] = (),
    *,
    edits: bool = False,
) -> list[Decision]:
    """A decision per doc, in request order. `stored`: the live winner of each id (None:
    missing or deleted); `hidden`: ids whose deleted winner the user could not read."""
    nodes: dict[int, ContactNode] = {}
    for i, doc in enumerate(docs):
        node = overlay_node(doc, stored.get(str(doc.get("_id"))))
        if node is not None:
            nodes[i] = node
    final: dict[int, Decision] = {}
    while True:
        overlay = OverlayGraph(graph, {n.id: n for i, n in sorted(nodes.items())})
        view = TreeView.of(user, settings, graph, overlay, (str(d.get("_id")) for d in docs))
        decisions = []
        for i, doc in enumerate(docs):
            decision = final.get(i)
            if decision is None:
                before = stored.get(str(doc.get("_id")))
                decision = authorize_write(
                    user, settings, graph, doc, before, view, hidden=str(doc.get("_id")) in hidden
                )
                if edits:
                    decision = made_up_rev(doc, before, decision)
            decisions.append(decision)
        refused = [i for i in nodes if not decisions[i].allowed]
        if not refused:
            return decisions
        for i in refused:
            final[i] = decisions[i]
            del nodes[i]
