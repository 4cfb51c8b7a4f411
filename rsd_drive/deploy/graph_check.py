"""Check that an ONNX graph holds only plain standard-domain operators.

TensorRT, ONNX Runtime and any other runtime on the vehicle must run the exported planner without
plugins or custom kernels. A graph passes when every operator (subgraphs and local functions
included) is in the default ONNX domain, exists in the ONNX operator schema registry at the graph's
opset, and is not control flow (the planner unrolls its GRU, so ``Loop``/``Scan``/``If`` would mean
something exported wrongly and would cost TensorRT its static optimisation).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

STANDARD_DOMAINS = ('', 'ai.onnx')
CONTROL_FLOW_OPS = ('Loop', 'Scan', 'If')


class NonStandardGraphError(ValueError):
    """The graph needs something beyond plain ONNX operators; the message lists what."""


@dataclass
class GraphReport:
    """What :func:`check_graph` found: operator counts and every problem, one line each."""

    path: str
    opset: int | None
    op_counts: Counter = field(default_factory=Counter)
    problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = f'{self.path}: opset {self.opset}, {sum(self.op_counts.values())} nodes, ' \
               f'{len(self.op_counts)} operator types'
        if self.ok:
            return head + ', plain standard-domain operators only'
        return head + '\n  ' + '\n  '.join(self.problems)


def _iter_nodes(graph):
    """Every node of a graph and of its subgraphs (If/Loop/Scan bodies), depth first."""
    from onnx import AttributeProto

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _iter_nodes(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _iter_nodes(sub)


def check_graph(model_or_path, allow_control_flow: bool = False) -> GraphReport:
    """Inspect an ONNX model (a ``ModelProto`` or a path) and report non-plain operators."""
    import onnx
    from onnx import defs

    if isinstance(model_or_path, (str, Path)):
        # Structure only: external weight files are irrelevant to which operators are used.
        model = onnx.load(str(model_or_path), load_external_data=False)
        where = str(model_or_path)
    else:
        model, where = model_or_path, '<model>'
    opsets = {imp.domain: imp.version for imp in model.opset_import}
    default_opset = opsets.get('', opsets.get('ai.onnx'))
    report = GraphReport(path=where, opset=default_opset)
    for domain in opsets:
        if domain not in STANDARD_DOMAINS:
            report.problems.append(f'imports non-standard operator domain {domain!r} '
                                   f'(version {opsets[domain]})')
    if default_opset is None:
        report.problems.append('no default-domain opset import')
    for function in model.functions:
        report.problems.append(f'defines local function {function.domain}::{function.name} '
                               f'(inline it for TensorRT)')
    unknown = set()
    for node in _iter_nodes(model.graph):
        domain = node.domain or ''
        report.op_counts[node.op_type if domain in STANDARD_DOMAINS
                         else f'{domain}::{node.op_type}'] += 1
        if domain not in STANDARD_DOMAINS:
            unknown.add(f'custom operator {domain}::{node.op_type} (node {node.name!r})')
            continue
        if default_opset is not None and not defs.has(node.op_type, ''):
            unknown.add(f'operator {node.op_type!r} is not in the ONNX standard (plugin?)')
        elif default_opset is not None:
            try:
                schema = defs.get_schema(node.op_type, default_opset, '')
            except defs.SchemaError:
                unknown.add(f'operator {node.op_type!r} does not exist at opset {default_opset}')
            else:
                if schema.deprecated:
                    unknown.add(f'operator {node.op_type!r} is deprecated at opset '
                                f'{default_opset}')
        if not allow_control_flow and node.op_type in CONTROL_FLOW_OPS:
            unknown.add(f'control-flow operator {node.op_type!r} (node {node.name!r})')
    report.problems.extend(sorted(unknown))
    return report


def assert_plain_graph(model_or_path, allow_control_flow: bool = False) -> GraphReport:
    """:func:`check_graph`, raising :class:`NonStandardGraphError` when anything is found."""
    report = check_graph(model_or_path, allow_control_flow)
    if not report.ok:
        raise NonStandardGraphError(report.summary())
    return report
