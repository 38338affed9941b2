"""The exported graph runs a batch CHUNK images at a time (docs/deploy.md, "The batch in
chunks"): a batch of 64 mLiT-XXS images makes attention scores of 32 MiB per layer, past the
CPU's caches, while CHUNK images' working set stays in them; measured with one thread, the
chunked graph does 1.2-1.4x the images/s of the whole batch at once.

`chunked(model)` wraps a graph written for any batch (onnx_graph.lean_graph, or its int8 form)
into one that gives the same outputs:

    B images -> the first B - B mod CHUNK in a Scan over chunks of CHUNK (the graph at a
                fixed batch of CHUNK), the last B mod CHUNK (fewer than CHUNK) in one pass
                -> the outputs of the two, concatenated

Each part sits in an If, so an empty part (a batch of 1, or of 64) runs nothing. The only
shapes computed at run time are these: the batch, its remainder and the two slices.
"""

from __future__ import annotations

import numpy as np

CHUNK = 4  # images per pass: the best of 1, 4, 8 and 16 for mLiT-XXS and mLiT-S on 1 thread


def renamed_copy(graph, prefix: str, images: str) -> list:
    """graph's nodes with every value they make prefixed (a subgraph may not reuse a name of
    the graph around it) and `images` read in place of the graph's input."""
    from onnx import NodeProto

    made = {out for node in graph.node for out in node.output}
    source = graph.input[0].name
    nodes = []
    for node in graph.node:
        copy = NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + node.name
        for i, name in enumerate(node.input):
            copy.input[i] = images if name == source else prefix + name if name in made else name
        for i, name in enumerate(node.output):
            copy.output[i] = prefix + name
        nodes.append(copy)
    return nodes


def chunked(model, chunk: int = CHUNK):
    """The ModelProto that runs `model` (input `images` with a dynamic batch axis, outputs
    with the batch first) chunk images at a time; its initialisers stay in the main graph,
    read by both parts."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    images = graph.input[0]
    dims = [d.dim_value for d in images.type.tensor_type.shape.dim][1:]
    outputs = list(graph.output)
    nodes, inits = [], list(graph.initializer)

    def const(name, value, dtype=np.int64):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def value(name, like, shape):
        return helper.make_tensor_value_info(name, like.type.tensor_type.elem_type, shape)

    def empty(prefix):
        """An If branch that makes nothing: each output with no rows."""
        made = [helper.make_node("Constant", [], [f"{prefix}{o.name}"], name=f"{prefix}{o.name}",
                                 value=numpy_helper.from_array(np.zeros(
                                     [0, *[d.dim_value for d in o.type.tensor_type.shape.dim][1:]],
                                     dtype=helper.tensor_dtype_to_np_dtype(
                                         o.type.tensor_type.elem_type))))
                for o in outputs]
        return helper.make_graph(made, prefix.rstrip("/"), [],
                                 [value(f"{prefix}{o.name}", o, None) for o in outputs])

    batch = node("Shape", [images.name], "batch.size", start=0, end=1)
    rest = node("Mod", [batch, const("chunk", [chunk])], "batch.rest")
    whole = node("Sub", [batch, rest], "batch.whole")
    first = node("Slice", [images.name, const("start", [0]), whole, const("axis0", [0])],
                 "images.whole")
    last = node("Slice", [images.name, whole, const("end", [np.iinfo(np.int64).max]),
                          "axis0"], "images.rest")

    # the whole chunks: a Scan over (B // chunk, chunk, ...), then the chunk axis merged back
    body = helper.make_graph(
        renamed_copy(graph, "chunk/", "chunk/images"), "chunk",
        [helper.make_tensor_value_info("chunk/images", TensorProto.FLOAT, [chunk, *dims])],
        [value(f"chunk/{o.name}", o, None) for o in outputs])
    scan = [helper.make_node("Reshape", [first, const("chunks.shape", [-1, chunk, *dims])],
                             ["chunks"], name="chunks"),
            helper.make_node("Scan", ["chunks"], [f"scanned/{o.name}" for o in outputs],
                             name="scan", body=body, num_scan_inputs=1)]
    for o in outputs:
        rows = [d.dim_value for d in o.type.tensor_type.shape.dim][1:]
        scan.append(helper.make_node("Reshape", [f"scanned/{o.name}",
                                                 const(f"{o.name}.shape", [-1, *rows])],
                                     [f"whole/{o.name}"], name=f"whole/{o.name}"))
    whole_part = helper.make_graph(scan, "whole", [], [value(f"whole/{o.name}", o, None)
                                                       for o in outputs])
    rest_part = helper.make_graph(renamed_copy(graph, "rest/", last), "rest", [],
                                  [value(f"rest/{o.name}", o, None) for o in outputs])
    zero = const("zero", [0])
    for part, count, branch in (("whole", whole, whole_part), ("rest", rest, rest_part)):
        nodes.append(helper.make_node(
            "If", [node("Greater", [count, zero], f"{part}.any")],
            [f"{part}.{o.name}" for o in outputs], name=f"{part}.if",
            then_branch=branch, else_branch=empty(f"{part}.none/")))
    for o in outputs:
        nodes.append(helper.make_node("Concat", [f"whole.{o.name}", f"rest.{o.name}"],
                                      [o.name], name=o.name, axis=0))
    main = helper.make_graph(nodes, graph.name, [images], outputs, inits)
    wrapped = helper.make_model(main, opset_imports=model.opset_import,
                                producer_name=model.producer_name)
    wrapped.ir_version = model.ir_version
    return wrapped
