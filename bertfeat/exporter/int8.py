"""int8 recipes: graph rewrites of the fp32 export (pure ONNX in, ONNX out; no torch).

Two recipes share one preparation: SmoothQuant-style scale migration (`smooth_activations`:
the few outlier channels of the activations that feed attention and the FFN are shrunk into the
weights), with each block's FFN output projection (`ffn_output_matmuls`: its post-GELU input
quantizes worst) left in fp32, or, per token on CPUs with VNNI/AMX, quantized from a shifted
input (`per_token(ffn_outputs=True)`). Weights are per output channel. CPUs without VNNI (AVX2,
AVX-512 without VNNI) sum u8 x s8 products in pairs into 16 bits, which 8-bit weights can
saturate; with 7 bits no pair sum can (2 x 255 x 64 < 2^15) on any x86 CPU. ONNX Runtime's
u8 x u8 GEMM widens both to 16 bits first, so 8-bit weights stored unsigned (+128, zero point 128)
sum exactly on every x86 CPU: the same integers as 8-bit signed ones, slower (per token 1.05x
fp32 on an AVX-512 VNNI EPYC, against 1.50x with signed weights; not measured on an AVX2 CPU).
test_exporter checks both facts on the CPU that runs the tests.

- `per_window` (one scale per tensor): ONNX Runtime's dynamic quantization, one activation scale per tensor, so
  the runtime runs one window per call (a message's vector never depends on its batch-mates);
  7-bit weights on every CPU.
- `per_token` (one scale per token): every token's activations get their own scale, so windows batch like
  fp32 and a token's result depends on that token alone. Per token is finer than per window, so
  it also holds on layers where per-window does not (all-MiniLM-L6-v2's last layer), at the
  cost of a few elementwise ops per GEMM input (bench/LOG.md "int8 that holds on every layer").
  8-bit signed weights where the exporting CPU sums them exactly (VNNI, AMX; the manifest says
  so and the runtime refuses such an export on a CPU without); elsewhere 7-bit ones, and where
  those miss a layer 8-bit unsigned ones: on all-MiniLM-L6-v2's last layer 7-bit weights cost the
  agreement gate 0.9972 -> 0.9916.
"""
import logging

import numpy as np

SMOOTH_ALPHA = 0.75  # scale migration strength (bench/DECISIONS.md, int8_layers)
FFN_OUTPUT_ALPHA = 0.5  # for the FFN output projections' GELU input, when int8 (0.4 .. 0.75 measured)
GELU_MIN = 0.17  # GELU(x) >= -0.16997 (erf and tanh forms alike)


def per_window(fp32_model, target, feeds):
    """Dynamic int8 (ONNX Runtime's quantize_dynamic) of the smoothed graph at `target`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    keep = ffn_output_matmuls(fp32_model)
    smoothed = smooth_activations(fp32_model, target.parent / "smoothed.onnx", feeds, SMOOTH_ALPHA, skip=keep)
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # quantize_dynamic's advice goes to the root logger
    try:
        quantize_dynamic(str(smoothed), str(target), per_channel=True, reduce_range=True,
                         weight_type=QuantType.QInt8, nodes_to_exclude=keep,
                         extra_options={"DefaultTensorType": 1})  # 1 = FLOAT, for fused ops
    finally:
        root_logger.setLevel(level)
    smoothed.unlink()
    for leftover in target.parent.glob("*-inferred.onnx"):
        leftover.unlink()


def per_token(fp32_model, target, feeds, weight_bits=8, unsigned_weights=False, ffn_outputs=False):
    """Per-token int8 (`per_token_int8`) of the smoothed graph at `target`; the FFN output
    projections stay fp32 unless `ffn_outputs`: then they are int8 too, their GELU input smoothed
    less (FFN_OUTPUT_ALPHA) and shifted by GELU_MIN before it is quantized (`per_token_int8`)."""
    ffn2 = ffn_output_matmuls(fp32_model)
    keep = () if ffn_outputs else ffn2  # nodes kept fp32 are neither smoothed nor shifted
    smoothed = smooth_activations(fp32_model, target.parent / "smoothed.onnx", feeds, SMOOTH_ALPHA, skip=keep,
                                  alphas={n: FFN_OUTPUT_ALPHA for n in ffn2})
    per_token_int8(smoothed, target, skip=keep, weight_bits=weight_bits, unsigned_weights=unsigned_weights,
                   shifted={n: GELU_MIN for n in ffn2})
    smoothed.unlink()


# attributes of a fused Attention node that MultiHeadAttention takes as they are
_PLAIN_ATTENTION = {"num_heads", "mask_filter_value", "scale"}


def _own_2d_weight(graph):
    """A test of a node: its second input is a 2-D constant that no other node uses. A weight
    shared by several ops (ALBERT shares its blocks) would need one scale for all of their
    activations, so such ops are left as they are."""
    weights = {i.name: i for i in graph.initializer}
    uses = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    return lambda n: len(n.input) > 1 and n.input[1] in weights and len(weights[n.input[1]].dims) == 2 \
        and uses[n.input[1]] == 1


def per_token_int8(src, target, skip=(), weight_bits=8, unsigned_weights=False, shifted=None):
    """Write `target`: `src` with each MatMul whose weight is a 2-D constant (and each fused
    Attention's QKV projection) computed in int8, its input quantized per token.

    Per token x (one row of K values): m = max|x|; q = QuantizeLinear(x / m, 1/127, 128) as u8
    (ONNX Runtime's s8 x s8 GEMM is a slow reference kernel; u8 x s8 is its fast one);
    MatMulIntegerToFloat(q, W8) (`weight_bits` wide, a scale per output column; stored as u8 + 128
    with `unsigned_weights`) applies 1/127 and W's scales in the GEMM's epilogue; the result
    times m. A fused Attention becomes its QKV projection that way + Split +
    MultiHeadAttention (the same attention arithmetic, its mask and bias inputs unchanged).
    Nodes named in `skip`, weights used by several nodes (ALBERT) and Attention nodes with other
    attributes or inputs stay as they are (fp32).

    `shifted` ({node name: c}) is for MatMuls whose input x >= -c (a GELU's output): x + c (per
    channel c / s_j after smoothing by s_j) is quantized per token to u8 with zero point 0, so it
    gets 255 levels instead of the ~130 a symmetric scale leaves a mostly positive input; the
    shift's product with the weights is subtracted after the GEMM."""
    import onnx
    from onnx import helper, numpy_helper
    model = onnx.load(str(src))
    graph = model.graph
    own_weight = _own_2d_weight(graph)
    weights = {i.name: i for i in graph.initializer}
    consts = {"pt_eps": np.float32(1e-12), "pt_inv127": np.float32(1 / 127), "pt_zp": np.uint8(128),
              "pt_wzp": np.uint8(128) if unsigned_weights else np.int8(0), "pt_inv255": np.float32(1 / 255),
              "pt_zp0": np.uint8(0)}
    inits = [numpy_helper.from_array(np.array(v), k) for k, v in consts.items()]
    nodes, w_max = [], 2 ** (weight_bits - 1) - 1
    producer = {o: n for n in graph.node for o in n.output}
    quantized = {}  # (input, shift) -> (u8, per-token max, scale, zero point): Q, K and V share one

    def quantize(x, tag, shift):
        """Per token: (x + shift) / max|x + shift| quantized to u8, once per input."""
        if (x, shift) in quantized:
            return [], quantized[x, shift]
        m, me, xn, q = (f"{tag}_{k}" for k in ("max", "maxe", "unit", "u8"))
        if shift is None:  # symmetric: 127 levels each side of zero point 128
            nodes = [helper.make_node("Abs", [x], [f"{tag}_abs"], name=f"{tag}_abs"),
                     helper.make_node("ReduceMax", [f"{tag}_abs"], [m], name=f"{tag}_reducemax", axes=[-1],
                                      keepdims=1)]
            unit = x
            quantized[x, shift] = (q, me, "pt_inv127", "pt_zp")
        else:  # x + shift >= 0: 255 levels above zero point 0
            unit = f"{tag}_shifted"
            nodes = [helper.make_node("Add", [x, shift], [unit], name=f"{tag}_shift"),
                     helper.make_node("ReduceMax", [unit], [m], name=f"{tag}_reducemax", axes=[-1], keepdims=1)]
            quantized[x, shift] = (q, me, "pt_inv255", "pt_zp0")
        nodes += [helper.make_node("Max", [m, "pt_eps"], [me], name=f"{tag}_eps"),
                  helper.make_node("Div", [unit, me], [xn], name=f"{tag}_unit"),
                  helper.make_node("QuantizeLinear", [xn, *quantized[x, shift][2:]], [q], name=f"{tag}_quantize")]
        return nodes, quantized[x, shift]

    def qmatmul(x, w_name, out, tag, shift=None):
        w = numpy_helper.to_array(weights[w_name]).astype(np.float32)
        w8, scale = _int8_weights(w, w_max)
        if shift is not None:
            shift = np.broadcast_to(np.asarray(_smoothed_shift(shift, x, producer, weights), np.float32),
                                    w.shape[:1])
            inits.append(numpy_helper.from_array(shift, f"{tag}_shift"))
            inits.append(numpy_helper.from_array((shift @ (w8 * scale)).astype(np.float32), f"{tag}_unshift"))
        inits.append(numpy_helper.from_array((w8 + 128).astype(np.uint8) if unsigned_weights else w8.astype(np.int8),
                                             f"{tag}_w8"))
        inits.append(numpy_helper.from_array(scale, f"{tag}_wscale"))
        nodes, (q, me, a_scale, a_zero) = quantize(x, tag, None if shift is None else f"{tag}_shift")
        y = f"{tag}_y"
        nodes += [helper.make_node("MatMulIntegerToFloat", [q, f"{tag}_w8", a_scale, f"{tag}_wscale", a_zero,
                                                            "pt_wzp"], [y], name=f"{tag}_matmul",
                                   domain="com.microsoft"),
                  helper.make_node("Mul", [y, me], [out if shift is None else f"{tag}_ym"], name=f"{tag}_rescale")]
        if shift is not None:
            nodes.append(helper.make_node("Sub", [f"{tag}_ym", f"{tag}_unshift"], [out], name=f"{tag}_unshift"))
        return nodes

    for i, n in enumerate(graph.node):
        tag = f"pt{i}"
        if n.op_type == "MatMul" and n.name not in skip and own_weight(n):
            nodes += qmatmul(n.input[0], n.input[1], n.output[0], tag, (shifted or {}).get(n.name))
        elif (n.op_type == "Attention" and n.domain == "com.microsoft" and n.name not in skip and own_weight(n)
              and len(n.input) <= 4 and len([o for o in n.output if o]) == 1
              and {a.name for a in n.attribute} <= _PLAIN_ATTENTION):
            width = weights[n.input[1]].dims[1] // 3
            nodes += qmatmul(n.input[0], n.input[1], f"{tag}_qkv", tag)
            inits.append(numpy_helper.from_array(np.array([width] * 3, np.int64), f"{tag}_split"))
            nodes.append(helper.make_node("Split", [f"{tag}_qkv", f"{tag}_split"], [f"{tag}_{k}" for k in "qkv"],
                                          name=f"{tag}_split", axis=-1))
            mha_inputs = [f"{tag}_q", f"{tag}_k", f"{tag}_v"] + list(n.input[2:4])
            nodes.append(helper.make_node("MultiHeadAttention", mha_inputs, list(n.output)[:1], name=f"{tag}_mha",
                                          domain="com.microsoft", **{a.name: helper.get_attribute_value(a)
                                                                     for a in n.attribute}))
        else:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in list(graph.initializer) + inits if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(target))
    return target


def _int8_weights(w, w_max):
    """(integer weights, per-column scale): w / scale rounded into [-w_max, w_max]."""
    scale = (np.maximum(np.abs(w).max(0), 1e-12) / w_max).astype(np.float32)
    return np.clip(np.round(w / scale), -w_max, w_max), scale


def _smoothed_shift(c, x, producer, weights):
    """The shift c of a GELU input x, per channel once x was smoothed (x / s_j: c / s_j, s_j from
    the smoothing Mul that produces x, when there is one)."""
    from onnx import numpy_helper
    smooth = producer.get(x)
    if smooth is not None and smooth.op_type == "Mul" and smooth.input[1] in weights:
        return c * numpy_helper.to_array(weights[smooth.input[1]]).astype(np.float32)
    return c


def ffn_output_matmuls(model_path):
    """Names of the MatMuls that read a GELU's output (each block's FFN output projection).

    Their input has the activation outliers that per-window int8 scales handle worst: kept in
    fp32 they lift all-MiniLM-L6-v2's int8 window cosine to fp32 on msgs100u from 0.9925 to
    0.9960 at layer 4 (bench/DECISIONS.md, int8_layers)."""
    import onnx
    graph = onnx.load(str(model_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    gelu = {"Gelu", "FastGelu", "BiasGelu", "Erf", "Tanh"}
    stop = {"MatMul", "Attention", "LayerNormalization", "SkipLayerNormalization", "Gemm"}

    def reads_gelu(name, hops=4):
        node = producer.get(name)
        if node is None or node.op_type in stop or hops == 0:
            return False
        return node.op_type in gelu or any(reads_gelu(i, hops - 1) for i in node.input)
    return [n.name for n in graph.node if n.op_type == "MatMul" and reads_gelu(n.input[0])]


def _activation_max(src, acts, feeds):
    """Per channel, max |x| of each named activation over `feeds`, run by the fp32 graph."""
    amax = dict.fromkeys(acts)
    for values in _activations(src, acts, feeds):
        for a, x in values.items():
            m = np.abs(x).max(0)
            amax[a] = m if amax[a] is None else np.maximum(amax[a], m)
    return amax


def _sort_smoothing_muls(graph):
    """Keep the graph topologically sorted: each inserted Mul right before its first user."""
    order, placed = [], set()
    muls = {n.output[0]: n for n in graph.node if n.name.endswith("_smooth") and n.op_type == "Mul"}
    for n in list(graph.node):
        if n.output[0] in muls and n.name.endswith("_smooth"):
            continue
        for i in n.input:
            if i in muls and i not in placed:
                order.append(muls[i])
                placed.add(i)
        order.append(n)
    del graph.node[:]
    graph.node.extend(order)


def smooth_activations(src, target, feeds, alpha=0.5, skip=(), alphas=None):
    """SmoothQuant-style scale migration, written as `target`: for each MatMul / Attention with a
    weight matrix W (rows = input channels), activation channel j is divided by
    s_j = max|x_j|^alpha / max|W_j|^(1-alpha) (a Mul inserted before the op) and W's row j is
    multiplied by it. The product is unchanged (up to rounding); the activation's outlier
    channels shrink, so one per-tensor int8 scale fits it better. max|x_j| is calibrated on
    `feeds` (a list of input dicts) with the fp32 graph. Nodes named in `skip` are left alone."""
    import onnx
    from onnx import helper, numpy_helper
    model = onnx.load(str(src))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    own_weight = _own_2d_weight(graph)
    targets = [n for n in graph.node if n.op_type in ("MatMul", "Attention") and n.name not in skip and own_weight(n)]
    if not targets:
        onnx.save(model, str(target))
        return target
    acts = sorted({n.input[0] for n in targets})
    amax = _activation_max(src, acts, feeds)
    for a in acts:
        users = [n for n in targets if n.input[0] == a]
        w_max = np.max([np.abs(numpy_helper.to_array(weights[n.input[1]])).max(1) for n in users], axis=0)
        al = (alphas or {}).get(users[0].name, alpha)
        scale = np.clip(amax[a] ** al / np.maximum(w_max, 1e-8) ** (1 - al), 1e-5, None).astype(np.float32)
        inv = numpy_helper.from_array((1.0 / scale).astype(np.float32), name=f"{a}_smooth_inv")
        graph.initializer.append(inv)
        graph.node.append(helper.make_node("Mul", [a, inv.name], [f"{a}_smoothed"], name=f"{a}_smooth"))
        for n in users:
            w = numpy_helper.to_array(weights[n.input[1]]) * scale[:, None]
            weights[n.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), n.input[1]))
            n.input[0] = f"{a}_smoothed"
    _sort_smoothing_muls(graph)
    onnx.save(model, str(target))
    return target




def quantizable_matmuls(model_path, skip=()):
    """Names of the nodes `per_token_int8` would compute in int8 (MatMuls with their own 2-D
    weight, fused Attentions' QKV projections), in graph order."""
    import onnx
    graph = onnx.load(str(model_path)).graph
    own_weight = _own_2d_weight(graph)
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Attention") and n.name not in skip
            and own_weight(n)]


def sensitivity(model_path, feeds, names, weight_bits=8, shifted=None):
    """{node: relative error of its output when it alone is int8}, estimated in NumPy from its
    fp32 input on `feeds`: per-token activations (255 levels above -c where `shifted` gives c,
    else 127 each side of zero) times per-column `weight_bits` weights, against the fp32 product;
    ||int8 - fp32|| / ||fp32|| over each window's tokens, the worst window's. The calibration
    windows' activations are held (~0.4 GB for a base-size model), the weights one node at a
    time. The weights and the shift are quantized as `per_token_int8` does (`_int8_weights`,
    `_smoothed_shift`). The search (`mixed_precision`) keeps the worst fp32 first."""
    import onnx
    from onnx import numpy_helper
    graph = onnx.load(str(model_path)).graph
    weights = {i.name: i for i in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    producer = {o: n for n in graph.node for o in n.output}
    acts = sorted({nodes[k].input[0] for k in names})
    rows, bounds = {a: [] for a in acts}, [0]
    for values in _activations(model_path, acts, feeds):
        for a, x in values.items():
            rows[a].append(x)
        bounds.append(bounds[-1] + len(x))
    inputs = {a: np.concatenate(v) for a, v in rows.items()}
    del rows
    w_max, out = 2 ** (weight_bits - 1) - 1, {}
    for k in names:
        n = nodes[k]
        x = inputs[n.input[0]]
        w = numpy_helper.to_array(weights[n.input[1]]).astype(np.float32)
        w8, scale = _int8_weights(w, w_max)
        wq = w8 * scale
        c = (shifted or {}).get(k)
        if c is None:
            m = np.maximum(np.abs(x).max(1, keepdims=True), 1e-12)
            xq = np.round(x / m * 127) / 127 * m
        else:
            c = _smoothed_shift(c, n.input[0], producer, weights)
            xs = x + c
            m = np.maximum(xs.max(1, keepdims=True), 1e-12)
            xq = np.round(xs / m * 255) / 255 * m - c
        y = x @ w
        err = np.square(xq @ wq - y).sum(1)
        norm = np.square(y).sum(1)
        # the worst window's relative error: a node that ruins a few short windows (two word
        # pieces among four special tokens) ranks by them, not by the pooled average
        out[k] = max(float(np.sqrt(err[a:b].sum() / max(norm[a:b].sum(), 1e-24))) for a, b in zip(bounds, bounds[1:]))
    return out


def _activations(src, acts, feeds):
    """For each feed, {activation: its value as rows of its last dimension (tokens x channels)},
    run by the graph at `src` with the named activations as extra outputs."""
    import onnx
    import onnxruntime as ort
    from onnx import helper
    probe = onnx.load(str(src))
    known = {o.name for o in probe.graph.output}
    for name in acts:
        if name not in known:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    del probe
    names = {i.name for i in sess.get_inputs()}
    for feed in feeds:
        outs = sess.run(acts, {k: v for k, v in feed.items() if k in names})
        yield {a: x.reshape(-1, x.shape[-1]) for a, x in zip(acts, outs)}


def mixed_precision(build, agrees, ranked):
    """The fewest of `ranked` (most damaging first) to keep fp32 so that `agrees(build(keep))`:
    none first, then 1, 2, 4, ... and a bisection between the last count that failed and the
    first that held (agreement falls as fewer are kept; each try builds and measures the graph).
    Returns (keep, what `agrees` returned for it, tries)."""
    tries, built = {}, []

    def attempt(k):
        if k not in tries:
            built.append(k)
            tries[k] = agrees(build(ranked[:k]))
        return tries[k][0]
    low, high = -1, 0  # low: largest count known to fail; high: the count tried now
    while not attempt(high):
        if high >= len(ranked):
            return None, tries[high][1], len(tries)
        low, high = high, min(len(ranked), max(1, 2 * high))
    while high - low > 1:
        mid = (low + high) // 2
        if attempt(mid):
            high = mid
        else:
            low = mid
    if built[-1] != high:
        build(ranked[:high])  # the graph left at the target is the one chosen
    return ranked[:high], tries[high][1], len(tries)


def per_token_mixed(fp32_model, target, feeds, agrees, weight_bits=8, unsigned_weights=False, ffn_outputs=True):
    """`per_token` with the fewest MatMuls kept fp32 for `agrees(graph)` to hold (every layer
    at the gate): ranked by `sensitivity` on `feeds`, searched by `mixed_precision`. One smoothing
    serves every try (a MatMul kept fp32 computes the same product, smoothed or not). Returns
    the manifest's record: which MatMuls stayed fp32, of how many, and how many graphs were tried."""
    ffn2 = ffn_output_matmuls(fp32_model)
    keep = () if ffn_outputs else tuple(ffn2)
    shifted = {n: GELU_MIN for n in ffn2} if ffn_outputs else {}
    smoothed = smooth_activations(fp32_model, target.parent / "smoothed.onnx", feeds, SMOOTH_ALPHA, skip=keep,
                                  alphas={n: FFN_OUTPUT_ALPHA for n in ffn2})
    names = quantizable_matmuls(smoothed, skip=keep)
    err = sensitivity(smoothed, feeds, names, weight_bits, shifted)
    ranked = sorted(names, key=lambda k: -err[k])

    def build(more):
        return per_token_int8(smoothed, target, skip={*keep, *more}, weight_bits=weight_bits,
                              unsigned_weights=unsigned_weights, shifted=shifted)
    chosen, _, tries = mixed_precision(build, agrees, ranked)
    smoothed.unlink()
    if chosen is None:  # every MatMul fp32 and still below: leave the last try for the caller's gate
        chosen = ranked
    return {"int8_fp32_matmuls": list(keep) + list(chosen), "int8_matmuls": len(names) - len(chosen),
            "int8_search_tries": tries}
