"""The compiled (numba) CPU backend against the sparse PyTorch reference: projection, compositing,
float32 training inputs, early termination, absgrad, threads, camera gradients and SH colours."""

from __future__ import annotations

import threading

import pytest
import torch

from unisem_ns.render import rasterization, sh_colors_split
from unisem_ns.render.compiled_projection import project_gaussians_compiled
from unisem_ns.render.compiled_sh import sh_colors_compiled
from unisem_ns.render.projection import project_gaussians

from test_render import make_scene, render_with_grads


def _rotation(wx, wy, wz, dtype=torch.float64):
    k = torch.tensor([[0.0, -wz, wy], [wz, 0.0, -wx], [-wy, wx, 0.0]], dtype=dtype)
    return torch.linalg.matrix_exp(k)


def _project_with_grads(fn, means, quats, scales, antialiased):
    params = [t.clone().requires_grad_(True) for t in (means, quats, scales)]
    out = fn(*params, antialiased)
    g = torch.Generator().manual_seed(0)
    loss = sum((x * torch.randn(x.shape, generator=g, dtype=x.dtype)).sum() for x in out[1:] if x is not None)
    loss.backward()
    return out, [p.grad for p in params]


@pytest.mark.parametrize("antialiased", [False, True])
def test_projection_matches_the_torch_projection_with_gradients(antialiased):
    means, quats, scales, _, _, viewmats, ks = make_scene(n=400, c=3, spread=2.5, size=0.3, seed=4)
    means[:25, 2] = -1.0  # behind every camera
    viewmats[1, :3, :3] = _rotation(0.2, 0.3, 0.1)
    viewmats[2, :3, :3] = _rotation(-0.1, 0.5, -0.3)  # many off-screen: the Jacobian clamp is exercised
    kw = dict(width=40, height=30)

    def ours(m, q, s, aa):
        return project_gaussians_compiled(m, q, s, viewmats, ks, calc_compensations=aa, **kw)

    def ref(m, q, s, aa):
        return project_gaussians(m, None, viewmats, ks, calc_compensations=aa, quats=q, scales=s, **kw)

    (r1, m1, d1, c1, p1), g1 = _project_with_grads(ours, means, quats, scales, antialiased)
    (r2, m2, d2, c2, p2), g2 = _project_with_grads(ref, means, quats, scales, antialiased)
    assert torch.equal(r1, r2)
    assert 0 < int((r1 > 0).sum()) < r1.numel(), "want both culled and projected Gaussians"
    for x, y in [(m1, m2), (d1, d2), (c1, c2)] + ([(p1, p2)] if antialiased else []):
        torch.testing.assert_close(x, y, atol=1e-9, rtol=1e-9)
    assert (p1 is None) == (not antialiased)
    for name, x, y in zip(["means", "quats", "scales"], g1, g2):
        assert x.abs().sum() > 0, name
        torch.testing.assert_close(x, y, atol=1e-9, rtol=1e-7, msg=name)


def test_float32_training_inputs_match_the_torch_backend():
    scene = make_scene(n=3000, width=96, height=64, d=20, c=2, dtype=torch.float32, seed=7, spread=1.0, size=0.05)
    bg = torch.rand(2, 20, generator=torch.Generator().manual_seed(1))
    r1, a1, g1, i1 = render_with_grads("numba", scene, 96, 64, render_mode="RGB+ED", backgrounds=bg, absgrad=True)
    r2, a2, g2, i2 = render_with_grads("torch", scene, 96, 64, render_mode="RGB+ED", backgrounds=bg, absgrad=True)
    assert r1.dtype == torch.float32 and i1["backend"] == "numba"
    torch.testing.assert_close(r1, r2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a1, a2, atol=1e-5, rtol=1e-4)
    for name, x, y in zip(["means", "quats", "scales", "opacities", "colors"], g1, g2):
        torch.testing.assert_close(x, y, atol=1e-3, rtol=1e-3, msg=name)
    torch.testing.assert_close(i1["means2d"].absgrad, i2["means2d"].absgrad, atol=1e-5, rtol=1e-3)


def test_heavy_early_termination_and_empty_tiles_match_dense():
    # Large, nearly opaque Gaussians stacked in one corner: most pixels stop after a few layers, and the
    # rest of the image (most tiles) holds no Gaussian at all.
    g = torch.Generator().manual_seed(3)
    n = 120
    means = torch.rand(n, 3, generator=g, dtype=torch.float64) * torch.tensor([0.4, 0.4, 2.0]) + torch.tensor([-1.0, -0.8, 3.0])
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    scales = torch.rand(n, 3, generator=g, dtype=torch.float64) * 0.2 + 0.1
    opac = torch.rand(n, generator=g, dtype=torch.float64) * 0.1 + 0.9
    colors = torch.rand(n, 5, generator=g, dtype=torch.float64)
    ks = torch.tensor([[[48.0, 0, 32], [0, 48.0, 24], [0, 0, 1]]], dtype=torch.float64)
    scene = (means, quats, scales, opac, colors, torch.eye(4, dtype=torch.float64)[None], ks)
    r1, a1, g1, i1 = render_with_grads("numba", scene, 64, 48, render_mode="RGB+D")
    r2, a2, g2, i2 = render_with_grads("dense", scene, 64, 48, render_mode="RGB+D")
    _, _, _, i3 = render_with_grads("torch", scene, 64, 48, render_mode="RGB+D")
    assert (a1 > 0.999).float().mean() > 0.05, "the stack should saturate some pixels"
    assert (a1 == 0).float().mean() > 0.5, "most of the image should be empty"
    assert i1["n_pairs"] < 0.7 * i3["n_pairs"], "the early stop should skip a good share of the pairs"
    torch.testing.assert_close(r1, r2, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(a1, a2)
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x, y, atol=1e-8, rtol=1e-6)


def test_one_and_two_threads_give_the_same_render_and_gradients():
    scene = make_scene(n=2000, width=80, height=60, d=4, c=1, seed=2, spread=1.0, size=0.05)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = render_with_grads("numba", scene, 80, 60)
        torch.set_num_threads(2)
        two = render_with_grads("numba", scene, 80, 60)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(one[0], two[0], atol=0, rtol=0)  # forward: every pixel is one thread's
    for x, y in zip(one[2], two[2]):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-10)  # per-worker sums in another grouping


def test_renders_from_two_python_threads_at_once():
    # The viewer renders from its own thread while training steps; launches are serialised.
    scene = make_scene(n=1500, width=64, height=48, d=3, seed=5, spread=1.0, size=0.05)
    want = rasterization(*scene, 64, 48, backend="numba")[0]
    got, errors = [], []

    def work():
        try:
            for _ in range(3):
                got.append(rasterization(*scene, 64, 48, backend="numba")[0])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(got) == 6 and all(torch.equal(x, want) for x in got)


def test_camera_gradients_fall_back_to_the_torch_projection():
    means, quats, scales, opac, colors, viewmats, ks = make_scene(n=200, seed=6)
    grads = {}
    for backend in ("numba", "torch"):
        vm = viewmats.clone().requires_grad_(True)
        render, alpha, _ = rasterization(means, quats, scales, opac, colors, vm, ks, 40, 30, backend=backend)
        (render.square().sum() + alpha.sum()).backward()
        grads[backend] = vm.grad
    assert grads["numba"].abs().sum() > 0
    torch.testing.assert_close(grads["numba"], grads["torch"], atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_compiled_sh_matches_the_torch_sh_with_gradients(degree):
    g = torch.Generator().manual_seed(degree)
    n = 500
    means = torch.randn(n, 3, generator=g, dtype=torch.float64)
    dc = torch.randn(n, 3, generator=g, dtype=torch.float64)
    rest = 0.3 * torch.randn(n, 15, 3, generator=g, dtype=torch.float64)
    viewmats = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    viewmats[1, :3, :3] = _rotation(0.3, -0.2, 0.4)
    viewmats[1, :3, 3] = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)

    def run(backend):
        params = [t.clone().requires_grad_(True) for t in (means, dc, rest)]
        out = sh_colors_split(*params, viewmats, degree, backend)
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=out.dtype)
        grads = torch.autograd.grad((out * weight).sum(), params, allow_unused=True)
        return out, [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads)]

    out, grads = run("numba")
    ref, ref_grads = run("torch")
    assert bool((ref == 0).any()), "the clamp at 0 should be exercised"
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    for name, x, y in zip(["means", "dc", "rest"], grads, ref_grads):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-10, msg=name)
    assert grads[2][:, (degree + 1) ** 2 - 1 :].abs().sum() == 0, "unused bands get no gradient"
    if degree > 0:
        assert grads[0].abs().sum() > 0
    small = [t[:20].clone().requires_grad_(True) for t in (means, dc, rest)]
    assert torch.autograd.gradcheck(lambda m, d, r: sh_colors_split(m, d, r, viewmats, degree, "numba"), small)


def test_compiled_sh_keeps_float32_and_rejects_degree_four():
    g = torch.Generator().manual_seed(0)
    means, dc, rest = torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g), torch.randn(64, 24, 3, generator=g)
    viewmats = torch.eye(4).repeat(1, 1, 1)
    out = sh_colors_split(means, dc, rest, viewmats, 3, "numba")
    ref = sh_colors_split(means, dc, rest, viewmats, 3, "torch")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # degree 4 is outside the compiled kernels: the numba backend falls back to the torch evaluation
    torch.testing.assert_close(sh_colors_split(means, dc, rest, viewmats, 4, "numba"),
                               sh_colors_split(means, dc, rest, viewmats, 4, "torch"))
    with pytest.raises(ValueError, match="degrees 0..3"):
        sh_colors_compiled(means, dc, rest, viewmats[:, :3, 3], 4)
