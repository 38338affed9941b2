"""mLiT keeps PyTorch's contracts, as timm's ViTs do, for every registered model (mlit_* as
mlit's classifier, mmlit_* as timm's headless backbone), in eval and in train mode:
torch.export (strict and not, a dynamic batch), torch.fx, TorchScript (script and trace),
torch.compile (one graph), float64 and bfloat16, the meta device, an empty batch,
channels_last. Eager PyTorch computes the sparse mixture, a recorded graph the dense one
(docs/timm.md). torch.export and torch.compile record two sizes of each family, and every
size is shown to record the same operators."""

import copy
import importlib.util

import pytest
import torch

import mlit
from mlit.model.registry import CONFIGS

HAS_TIMM = importlib.util.find_spec("timm") is not None
# every registered model; the quick tier (-m "not slow") keeps the smallest
MODELS = [name if name == "mlit_micro" else
          pytest.param(name, marks=pytest.mark.slow)
          for name in [*CONFIGS, *(f"m{name}" for name in CONFIGS)]]
CLASSES = 10
# torch.export with a dynamic batch (4-8 s a model) and torch.compile (one graph of the whole
# model: 5-30 s) record the test size and the paper's smallest, mLiT-XXS; the other sizes are
# the same operators at other widths and depths, which fx shows for every registered model
# (test_every_size_records_the_operators_of_the_exported_ones). torch.export's strict mode
# (TorchDynamo's tracer, twice the time of the default non-strict one) on the test size.
EXPORTED = {"mlit_micro", "mmlit_micro", "mlit_xxs", "mmlit_xxs"}
STRICT_TOO = {"mlit_micro", "mmlit_micro"}
COMPILED = ["mlit_micro", "mmlit_micro"]


def build(name: str) -> torch.nn.Module:
    if name.startswith("mmlit_"):  # timm's MAE backbone: the pooled feature, no head
        if not HAS_TIMM:
            pytest.skip("timm is not installed")
        import timm

        return timm.create_model(name)
    return mlit.create_model(name, num_classes=CLASSES)


def first(out) -> torch.Tensor:
    """The logits (mlit's classifier returns them with its MoE loss) or the features."""
    return out[0] if isinstance(out, tuple) else out


def images(model, n: int, **kwargs) -> torch.Tensor:
    size = model.cfg.image_size
    return torch.randn(n, 3, size, size, **kwargs)


def out_width(name: str) -> int:
    return mlit.model_config(name.removeprefix("m")).embed_dim if name.startswith("mm") \
        else CLASSES


def close(got, want, tol=1e-5):
    torch.testing.assert_close(first(got), first(want), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", MODELS)
def test_a_recorded_graph_computes_the_eager_model(name):
    """torch.export (on EXPORTED: non-strict, and strict too on STRICT_TOO; a dynamic batch
    run at 1 and 7), fx, script and trace give eager's outputs in eval; in train mode each
    records, runs and passes gradients to every weight."""
    torch.manual_seed(0)
    model = build(name).eval()
    x, batch = images(model, 2), torch.export.Dim("batch", min=1, max=64)
    modes = (False, True) if name in STRICT_TOO else (False,) if name in EXPORTED else ()
    for strict in modes:
        program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},),
                                      strict=strict).module()
        for n in (1, 7):
            xn = images(model, n)
            close(program(xn), model(xn))
    close(torch.fx.symbolic_trace(model)(x), model(x))
    close(torch.jit.script(copy.deepcopy(model))(x), model(x))
    x5 = images(model, 5)
    close(torch.jit.trace(model, (x,), check_trace=False)(x5), model(x5))

    model.train()
    x3 = images(model, 3)
    for strict in modes:
        program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},),
                                      strict=strict).module()
        assert first(program(x3)).shape == (3, out_width(name))
    graphs = [torch.fx.symbolic_trace(model), torch.jit.script(copy.deepcopy(model)),
              torch.jit.trace(model, (x,), check_trace=False)]
    for graph in graphs:
        out = first(graph(x3))
        assert out.shape == (3, out_width(name)) and torch.isfinite(out).all()
    first(graphs[0](x3)).square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def operators(model: torch.nn.Module) -> set[tuple[str, str]]:
    """What a recorded graph of the model computes, whatever its widths and depth: the modules
    (by class), functions and methods its fx graph calls."""
    found = set()
    for node in torch.fx.symbolic_trace(model).graph.nodes:
        if node.op == "call_module":
            found.add((node.op, type(model.get_submodule(node.target)).__name__))
        elif node.op in ("call_function", "call_method"):
            found.add((node.op, getattr(node.target, "__name__", str(node.target))))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mlit_", "mmlit_"])
def test_every_size_records_the_operators_of_the_exported_ones(family):
    """Each registered size records the same operators as the sizes torch.export and
    torch.compile record (EXPORTED, COMPILED), in eval and in train mode: their contracts
    hold for the other sizes, which differ in widths and depth alone."""
    names = [n for n in (*CONFIGS, *(f"m{n}" for n in CONFIGS)) if n.startswith(family)]
    for train in (False, True):
        found = {name: operators(build(name).train(train)) for name in names}
        recorded = [n for n in names if n in EXPORTED or n in COMPILED]
        assert len(recorded) == 2 and found[recorded[0]] == found[recorded[1]]
        assert {n: s for n, s in found.items() if s != found[recorded[0]]} == {}, train


@pytest.mark.parametrize("name", MODELS)
def test_dtypes_devices_and_batch_shapes(name):
    """float64 and bfloat16 by .to(dtype) (outputs in that dtype; float64 within 1e-5 of
    fp32), the meta device, a batch of 0 images, channels_last (the same logits)."""
    torch.manual_seed(0)
    for train in (False, True):
        model = build(name).train(train)
        x = images(model, 2)
        ref = first(model(x)) if not train else None
        wide = copy.deepcopy(model).double()
        out = first(wide(x.double()))
        assert out.dtype == torch.float64 and out.shape == (2, out_width(name))
        if not train:
            close(out.float(), ref)
        half = first(copy.deepcopy(model).bfloat16()(x.bfloat16()))
        assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
        empty = first(model(images(model, 0)))
        assert empty.shape == (0, out_width(name))
        cl = first(model(x.contiguous(memory_format=torch.channels_last)))
        if not train:
            close(cl, ref)
        with torch.device("meta"):
            on_meta = build(name).train(train)
        out = first(on_meta(images(model, 2, device="meta")))
        assert out.device.type == "meta" and out.shape == (2, out_width(name))


@pytest.fixture
def fresh_dynamo():
    """Each compile test compiles: Dynamo's caches and its recompile limit (after which it
    runs a function eagerly, silently) start empty."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", [n if n == "mlit_micro" else
                                  pytest.param(n, marks=pytest.mark.slow) for n in COMPILED])
def test_torch_compile_forward_and_backward(name, fresh_dynamo):
    """Dynamo captures the whole model in one graph (fullgraph: the MoE's routing breaks none,
    since under torch.compile `auto` takes the dense mixture), eval forward equal to eager,
    train forward and backward through AOT autograd; inductor's code generation is torch's
    own and runs once below."""
    torch.manual_seed(0)
    model = build(name).eval()
    x = images(model, 2)
    close(torch.compile(model, backend="aot_eager", fullgraph=True)(x), model(x))
    model.train()
    first(torch.compile(model, backend="aot_eager", fullgraph=True)(x)).square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.slow
def test_torch_compile_with_inductor(fresh_dynamo):
    """Inductor's code for the inference graph gives eager's logits. Its training graph is
    what `train.compile` runs: tests/test_distributed.py's compiled run ends on eager's
    weights."""
    torch.manual_seed(0)
    model = mlit.create_model("mlit_micro", num_classes=CLASSES).eval()
    x = images(model, 4)
    close(torch.compile(model, fullgraph=True)(x), model(x), tol=1e-4)


def test_eager_computes_only_the_routed_experts_a_graph_every_expert():
    """Eager PyTorch's sparse reference (moe_impl=torch; `auto` on the CPU takes it above a
    few tokens) computes each token's k experts alone (fewer FLOPs than every expert on every
    token); a recorded graph computes every expert and multiplies it by its gate, exactly the
    dense implementation's FLOPs, for the same logits."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(model, x):
        with FlopCounterMode(display=False) as counter:
            out = first(model(x))
        return counter.get_total_flops(), out

    torch.manual_seed(0)
    model = mlit.create_model("mlit_tiny", num_classes=CLASSES, moe_impl="torch").eval()
    dense = mlit.create_model("mlit_tiny", num_classes=CLASSES, moe_impl="dense").eval()
    dense.load_state_dict(model.state_dict())
    x = images(model, 4)
    eager, logits = flops(model, x)
    graph, graph_logits = flops(torch.fx.symbolic_trace(model), x)
    assert eager < graph == flops(dense, x)[0]
    close(graph_logits, logits)


def test_onnx_export_through_torch_export_of_a_module_around_mlit(tmp_path):
    """torch.onnx's exporter (dynamo=True) on a user's module that wraps mLiT: the file runs
    in ONNX Runtime and gives PyTorch's logits within 1e-4, at a batch it was not traced at."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = mlit.create_model("mlit_micro", num_classes=CLASSES)
            self.scale = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, x):
            logits, _ = self.backbone(x)
            return logits.softmax(-1) * self.scale

    torch.manual_seed(0)
    model = Wrapper().eval()
    x = images(model.backbone, 2)
    path = tmp_path / "wrapped.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x5 = images(model.backbone, 5)
    got = session.run(None, {session.get_inputs()[0].name: x5.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), model(x5), rtol=1e-4, atol=1e-4)
