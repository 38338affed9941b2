"""The Triton expert dispatch against the PyTorch reference: output and every gradient.
On a machine without a GPU this runs the kernels in Triton's interpreter (float32)."""

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

import mlit
from mlit.model import kernel_check
from mlit.model.dispatch import expert_mixture
from mlit.model.kernel_check import NAMES, SHAPES, as_w_w2

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def routed_inputs(*shape, **kwargs):
    return kernel_check.routed_inputs(*shape, device=DEVICE, **kwargs)


def output_and_grads(impl, inputs, shared="v_w2"):
    return kernel_check.output_and_grads(partial(expert_mixture, impl=impl), inputs, shared)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_triton_matches_reference_output_and_every_gradient(shape):
    inputs = routed_inputs(*shape)
    ref, got = output_and_grads("torch", inputs), output_and_grads("triton", inputs)
    for name, a, b in zip(NAMES, ref, got):
        torch.testing.assert_close(b, a, atol=2e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("shape", [SHAPES["odd_widths"], SHAPES["mlit_xxs_last_layer"]],
                         ids=["odd_widths", "mlit_xxs_last_layer"])
def test_triton_serves_the_w_w2_arrangement(shape):
    """Table 9's second arrangement: the swish moves to the shared projection (SWISH_SHARED),
    the experts own V; output and every gradient as the reference."""
    inputs = as_w_w2(routed_inputs(*shape))
    ref = output_and_grads("torch", inputs, "w_w2")
    got = output_and_grads("triton", inputs, "w_w2")
    for name, a, b in zip(NAMES, ref, got):
        torch.testing.assert_close(b, a, atol=2e-4, rtol=1e-4, msg=name)


def test_tokens_routed_to_no_expert_of_a_tile():
    """The first 64-token tile never picks expert 1 (the kernel skips it there), the second
    tile does; and expert 3 is chosen by nobody at all."""
    N, d, h, E = 128, 32, 40, 4
    inputs = routed_inputs(N, d, h, E, avoid=(1, 64))
    gates = inputs[1]
    gates[:, 3] = 0
    inputs[1] = gates / gates.sum(1, keepdim=True)
    assert (inputs[1][:64, 1] == 0).all() and (inputs[1][64:, 1] > 0).any()
    ref, got = output_and_grads("torch", inputs), output_and_grads("triton", inputs)
    for name, a, b in zip(NAMES, ref, got):
        torch.testing.assert_close(b, a, atol=2e-4, rtol=1e-4, msg=name)
    assert (got[3][3] == 0).all() and (got[4][3] == 0).all()  # unused expert: no gradient


def test_custom_op_registration_passes_opcheck():
    """Schema, fake (meta) implementation and autograd registration: what torch.compile needs."""
    from mlit.kernels.moe import moe_hidden

    x, gates, w, b, v, c, *_ = routed_inputs(20, 16, 8, 3)
    for swish_shared in (False, True):
        args = (x.requires_grad_(), gates, w.requires_grad_(), b, v, c, swish_shared)
        torch.library.opcheck(moe_hidden, args,
                              test_utils=("test_schema", "test_autograd_registration",
                                          "test_faketensor"))


@pytest.mark.parametrize("shared", ["v_w2", "w_w2"])
def test_model_with_triton_dispatch_equals_torch_dispatch(shared):
    torch.manual_seed(0)
    ref = mlit.create_model("mlit_micro", num_classes=10, moe_impl="torch", shared=shared,
                            expert_dropout=0.0).to(DEVICE).eval()
    tri = mlit.create_model("mlit_micro", num_classes=10, moe_impl="triton", shared=shared,
                            expert_dropout=0.0).to(DEVICE).eval()
    tri.load_state_dict(ref.state_dict())
    imgs = torch.randn(4, 3, 12, 12, device=DEVICE)
    (la, _), (lb, _) = ref(imgs), tri(imgs)
    torch.testing.assert_close(lb, la, atol=1e-4, rtol=1e-4)
    la.square().sum().backward()
    lb.square().sum().backward()
    for (name, pa), pb in zip(ref.named_parameters(), tri.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, atol=1e-4, rtol=1e-3, msg=name)


def test_shape_mismatch_is_a_clear_error():
    from mlit.kernels.moe import moe_hidden

    x, gates, w, b, v, c, *_ = routed_inputs(8, 16, 8, 3)
    with pytest.raises(ValueError, match="do not fit together"):
        moe_hidden(x, gates[:, :2], w, b, v, c, False)


def test_model_with_triton_dispatch_compiles_as_one_graph():
    """torch.compile traces the custom op through its fake implementation (aot_eager keeps
    CI free of a C++ build; inductor uses the same trace)."""
    model = mlit.create_model("mlit_micro", num_classes=10, moe_impl="triton",
                              expert_dropout=0.0).to(DEVICE).train()
    ref = mlit.create_model("mlit_micro", num_classes=10, moe_impl="torch",
                            expert_dropout=0.0).to(DEVICE).train()
    ref.load_state_dict(model.state_dict())
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    imgs = torch.randn(4, 3, 12, 12, device=DEVICE)
    results = []
    for net in (compiled, ref):
        torch.manual_seed(1)  # the same gate noise
        logits, aux = net(imgs)
        (logits.square().sum() + aux).backward()
        results.append((logits, aux))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1])
    for (name, pa), pb in zip(ref.named_parameters(), model.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, atol=1e-4, rtol=1e-3, msg=name)


def test_auto_picks_triton_on_cuda_dense_for_a_few_cpu_tokens_and_torch_elsewhere():
    from mlit.kernels.moe import TRITON_ARRANGEMENTS
    from mlit.model.dispatch import CPU_DENSE_MAX_UNROUTED, TRITON_SHARED, resolve_impl

    assert set(TRITON_ARRANGEMENTS) == set(TRITON_SHARED)  # the kernel serves what dispatch says

    width = (3 - 2) * 80  # (E - k) h
    few, many = CPU_DENSE_MAX_UNROUTED // width, CPU_DENSE_MAX_UNROUTED // width + 1
    assert resolve_impl("auto", torch.empty(few, 8), "v_w2", width) == "dense"
    assert resolve_impl("auto", torch.empty(many, 8), "v_w2", width) == "torch"
    assert resolve_impl("auto", torch.empty(few, 8), "v_w2", 2 * width) == "torch"
    assert resolve_impl("auto", torch.empty(few, 8, device="meta"), "v_w2", width) == "torch"
    assert resolve_impl("torch", torch.empty(few, 8), "v_w2", width) == "torch"
    assert resolve_impl("dense", torch.empty(many, 8), "v_w2", width) == "dense"
    if torch.cuda.is_available():
        assert resolve_impl("auto", torch.empty(1, device="cuda")) == "triton"


@pytest.mark.slow
def test_kernels_compile_for_ampere_and_hopper_without_spills():
    """The real compiler (not the interpreter), ahead of time for sm_80 and sm_90: both
    kernels build to a cubin in every dtype; in the training dtypes they use tensor cores
    (mma on Ampere, wgmma on Hopper) and keep everything in registers."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    tool = Path(__file__).parents[1] / "tools" / "kernel_report.py"
    done = subprocess.run([sys.executable, str(tool), "--json", "--shared", "v_w2,w_w2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = {(r["shared"], r["arch"], r["dtype"], r["kernel"]): r
            for r in json.loads(done.stdout)}
    assert len(rows) == 2 * 2 * 3 * 2
    for (shared, arch, dtype, kernel), r in rows.items():
        assert r["registers"] > 0
        if dtype != "fp32":  # fp32 is exact (ieee) FMA math, not a training dtype on CUDA
            assert r["tensor_core"] == {"sm_80": "mma", "sm_90": "wgmma"}[arch], (arch, kernel)
            assert r["spill_bytes"] == 0, (shared, arch, dtype, kernel, r)


# -- the first Triton dispatch on a device checks the kernel there ---------------------------
QUICK = ["recipes/quickstart.yaml", "model.name=mlit_micro", "pretrain.epochs=1",
         "finetune.epochs=1", "pretrain.warmup_epochs=0", "finetune.warmup_epochs=0",
         "train.progress=false"]


@pytest.fixture
def wrong_kernel(monkeypatch):
    """A Triton mixture that returns wrong numbers, and a process that has checked nothing."""
    import mlit.kernels.moe
    import mlit.model.dispatch

    real = mlit.kernels.moe.triton_expert_mixture
    monkeypatch.setattr(mlit.kernels.moe, "triton_expert_mixture",
                        lambda *args: real(*args) + 0.1)
    monkeypatch.setattr(mlit.model.dispatch, "_TRUSTED", {})


def test_explicit_triton_with_a_wrong_kernel_stops_with_one_line(tmp_path, wrong_kernel,
                                                                   capsys):
    from mlit.train import main

    code = main([*QUICK, f"train.out={tmp_path}", "model.moe_impl=triton"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("mlit.train: Triton MoE kernel on cpu, float32: disagrees with "
                             "the PyTorch reference (y off by ")
    assert not (tmp_path / "pretrain" / "checkpoint.pt").exists()  # before any training


def test_auto_with_a_wrong_kernel_warns_once_and_trains_with_torch(tmp_path, wrong_kernel,
                                                                    monkeypatch, capsys):
    """`auto` picks Triton where triton_preferred says so (CUDA; here the CPU, under the
    interpreter): the check fails, one line says so, and the run finishes with torch."""
    import mlit.model.dispatch
    from mlit.train import main

    monkeypatch.setattr(mlit.model.dispatch, "triton_preferred", lambda x: True)
    assert main([*QUICK, f"train.out={tmp_path}"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "Triton" in line]
    assert len(warnings) == 1, warnings
    assert "disagrees with the PyTorch reference" in warnings[0]
    assert warnings[0].endswith("using moe_impl=torch (the PyTorch implementation) for the "
                                "rest of this run")
    x = torch.randn(3, 16)
    assert mlit.model.dispatch.resolve_impl("auto", x) == "torch"


def test_a_kernel_that_fails_to_build_is_named_with_its_error(monkeypatch):
    import mlit.kernels.moe
    import mlit.model.dispatch

    def broken(*args):
        raise RuntimeError("PTX .version 9.9 does not support .target sm_999\nmore detail")

    monkeypatch.setattr(mlit.kernels.moe, "triton_expert_mixture", broken)
    monkeypatch.setattr(mlit.model.dispatch, "_TRUSTED", {})
    with pytest.raises(kernel_check.KernelFault, match=r"^Triton MoE kernel on cpu, float32: "
                       r"failed to run \(RuntimeError: PTX .version 9.9 does not support "
                       r"\.target sm_999\)$"):
        mlit.model.dispatch.kernel_trusted(torch.device("cpu"), torch.float32, "v_w2", strict=True)


def test_the_real_kernel_passes_its_first_dispatch_check(monkeypatch):
    import mlit.model.dispatch

    monkeypatch.setattr(mlit.model.dispatch, "_TRUSTED", {})
    result = kernel_check.compare(kernel_check.routed_inputs(*kernel_check.SMALL_PROBLEM))
    assert result.passed and set(result.errors) == set(NAMES)
    assert mlit.model.dispatch.kernel_trusted(torch.device(DEVICE), torch.float32, "w_w2")
    assert mlit.model.dispatch._TRUSTED == {(torch.device(DEVICE), torch.float32, "w_w2"): True}
