"""Merge the ensemble's ONNX models into one graph that computes what they share once.

The models read the same input and two of the shipped ones are VGG16s whose blocks 1–4 are bit-identical
(only block5 of one was fine-tuned). Merging (1) prefixes each model's names with `m<i>/`, (2) keeps one
copy of byte-identical weights, and (3) drops every node that repeats an earlier node (same operator,
attributes and inputs: common-subexpression elimination in graph order), so the shared trunk runs once
per request. The outputs are bit-identical to the separate models'; `export` checks that before writing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

MERGED_FILE = "ensemble.onnx"
# operators whose repeats are not the same computation: never merged
NONDETERMINISTIC = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}


FP16_MIN_ELEMENTS = 1024  # smaller tensors (biases, BatchNorm/Mahalanobis statistics) stay float32


def halve_weights(src: Path, dst: Path, min_elements: int = FP16_MIN_ELEMENTS) -> int:
    """Rewrite the ONNX file src to dst with every float32 initializer of at least min_elements stored as
    float16 and cast back to float32 by a Cast node in front of the graph: the operators still compute in
    float32, on weights rounded to float16. Returns how many initializers were halved."""
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inputs = {i.name for i in graph.input}  # an initializer that is also a graph input can be overridden: kept
    kept, casts, n = [], [], 0
    for init in graph.initializer:
        small = int(np.prod(init.dims)) < min_elements
        if init.data_type != onnx.TensorProto.FLOAT or small or init.name in inputs:
            kept.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{init.name}__fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], name=f"{init.name}__to_fp32", to=1))
        n += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return n


def prefix(i: int) -> str:
    return f"m{i}/"


def _content_digest(tensor: onnx.TensorProto) -> str:
    """sha256 of a tensor's type, shape and data, whatever its name."""
    anonymous = onnx.TensorProto()
    anonymous.CopyFrom(tensor)
    anonymous.name = ""
    return hashlib.sha256(anonymous.SerializeToString(deterministic=True)).hexdigest()


def _signature(value: onnx.ValueInfoProto) -> tuple[int, list[int]]:
    """Element type and fixed dimensions (0 for a symbolic one, whatever its name)."""
    t = value.type.tensor_type
    return t.elem_type, [d.dim_value for d in t.shape.dim]


def merge_models(models: list[onnx.ModelProto], input_name: str) -> tuple[onnx.ModelProto, dict[str, int]]:
    """One ONNX model computing every model's outputs (named `m<i>/<output>`) from the shared input.
    Returns it and {"nodes_before", "nodes_after", "initializers_before", "initializers_after"}."""
    if not models:
        raise ValueError("nothing to merge")
    opsets = {(o.domain, o.version) for m in models for o in m.opset_import}
    if len({tuple(sorted((o.domain, o.version) for o in m.opset_import)) for m in models}) != 1:
        raise ValueError(f"the models use different opsets: {sorted(opsets)}")
    first_input = models[0].graph.input[0]
    nodes: list[onnx.NodeProto] = []
    outputs: list[onnx.ValueInfoProto] = []
    weights: dict[tuple[int, tuple[int, ...], str], onnx.TensorProto] = {}
    n_initializers = 0
    for i, model in enumerate(models):
        graph = model.graph
        if [x.name for x in graph.input if x.name not in {t.name for t in graph.initializer}] != [input_name]:
            raise ValueError(
                f"model {i}: expected the single input {input_name!r}, got {[x.name for x in graph.input]}"
            )
        if _signature(graph.input[0]) != _signature(first_input):
            raise ValueError(
                f"model {i}: input {_signature(graph.input[0])} differs from model 0's {_signature(first_input)}"
            )
        pre = prefix(i)
        renamed: dict[str, str] = {}
        for init in graph.initializer:
            n_initializers += 1
            key = (init.data_type, tuple(init.dims), _content_digest(init))
            if key not in weights:
                kept = onnx.TensorProto()
                kept.CopyFrom(init)
                kept.name = pre + init.name
                weights[key] = kept
            renamed[init.name] = weights[key].name

        def name(x: str, pre: str = pre, renamed: dict[str, str] = renamed) -> str:
            return x if x in ("", input_name) else renamed.get(x, pre + x)

        for j, node in enumerate(graph.node):
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise ValueError(f"model {i}: node {node.name!r} has a subgraph; not supported")
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = pre + (node.name or f"{node.op_type}_{j}")
            del copy.input[:]
            copy.input.extend(name(x) for x in node.input)
            del copy.output[:]
            copy.output.extend(name(x) for x in node.output)
            nodes.append(copy)
        for out in graph.output:
            o = onnx.ValueInfoProto()
            o.CopyFrom(out)
            o.name = pre + out.name
            outputs.append(o)
    graph_outputs = {o.name for o in outputs}
    seen: dict[tuple[object, ...], onnx.NodeProto] = {}
    alias: dict[str, str] = {}
    kept_nodes = []
    for node in nodes:
        inputs = [alias.get(x, x) for x in node.input]
        del node.input[:]
        node.input.extend(inputs)
        attrs = tuple(sorted(a.SerializeToString(deterministic=True) for a in node.attribute))
        node_key = (node.domain, node.op_type, tuple(inputs), attrs, len(node.output))
        earlier = seen.get(node_key)
        if earlier is not None and not set(node.output) & graph_outputs and node.op_type not in NONDETERMINISTIC:
            alias.update(zip(node.output, earlier.output, strict=True))
            continue
        seen.setdefault(node_key, node)
        kept_nodes.append(node)
    graph = helper.make_graph(kept_nodes, "ensemble", [first_input], outputs, list(weights.values()))
    merged = helper.make_model(graph, opset_imports=list(models[0].opset_import), producer_name="trainer.export.merge")
    merged.ir_version = max(m.ir_version for m in models)
    onnx.checker.check_model(merged)
    stats = {
        "nodes_before": len(nodes),
        "nodes_after": len(kept_nodes),
        "initializers_before": n_initializers,
        "initializers_after": len(weights),
    }
    return merged, stats


def merge_files(paths: list[Path], out: Path, input_name: str) -> dict[str, int]:
    merged, stats = merge_models([onnx.load(str(p)) for p in paths], input_name)
    out.write_bytes(merged.SerializeToString())
    return stats


def merged_difference(paths: list[Path], merged: Path, input_name: str, batch: np.ndarray) -> float:
    """Max abs difference between each model's outputs and the merged graph's `m<i>/` outputs."""
    import onnxruntime as ort

    whole = ort.InferenceSession(str(merged), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in whole.get_outputs()], whole.run(None, {input_name: batch}), strict=True))
    worst = 0.0
    for i, path in enumerate(paths):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        for n, ref in zip(names, sess.run(names, {input_name: batch}), strict=True):
            worst = max(worst, float(np.abs(got[prefix(i) + n] - ref).max()))
    return worst


MERGE_TOLERANCE = 1e-5


def merge_models_dir(models_dir: Path, check_images: np.ndarray) -> dict[str, float]:
    """Replace the separate ONNX files of an exported ensemble by one merged file (MERGED_FILE), after
    checking on check_images (uint8 RGB) that every output is unchanged; update the manifest."""
    from service.image.preprocessing import to_model_input
    from service.inference.manifest import load_manifest, sha256_file, write_manifest

    manifest = load_manifest(models_dir)
    files = [m.file for m in manifest.models]
    if len(set(files)) != len(files):
        raise ValueError(f"{models_dir}: models already share files {files}; nothing to merge")
    paths = [models_dir / f for f in files]
    out = models_dir / MERGED_FILE
    name = manifest.input.name
    stats: dict[str, float] = dict(merge_files(paths, out, name))
    diff = merged_difference(paths, out, name, to_model_input(check_images))
    if not diff <= MERGE_TOLERANCE:
        out.unlink()
        raise RuntimeError(f"{out.name}: merged outputs differ from the separate models' by {diff:.2e}")
    stats["max_abs_diff"] = diff
    digest = sha256_file(out)
    for i, entry in enumerate(manifest.models):
        entry.file, entry.sha256, entry.output_prefix = MERGED_FILE, digest, prefix(i)
    manifest.ensemble.merge = stats
    write_manifest(manifest, models_dir)
    for path in paths:
        path.unlink()
    print(
        f"[export] merged {len(paths)} models into {out.name}: nodes {stats['nodes_before']} → "
        f"{stats['nodes_after']}, weight tensors {stats['initializers_before']} → {stats['initializers_after']}, "
        f"{out.stat().st_size / 2**20:.1f} MB, max |separate − merged| {diff:.1e} on {len(check_images)} images"
    )
    return stats
