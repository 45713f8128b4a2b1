"""The PDF engine against slow, obvious implementations, and the batched engine against cluster_pdf."""

from __future__ import annotations

import math

import numpy as np
import periodictable
import pytest
import xraydb
from scipy.integrate import simpson

from motex_db.errors import InputError
from motex_db.pdf import MotifPDFEngine, PDFParameters, cluster_pdf
from support import oxide_particle

# --------------------------------------------------------------------------- clusters made here


def small_cluster(seed: int = 0, n: int = 9) -> tuple[list[str], np.ndarray]:
    """A few W and O atoms at random, no two closer than 1.7 Å, all within 7 Å."""
    rng = np.random.default_rng(seed)
    positions: list[np.ndarray] = []
    while len(positions) < n:
        p = rng.uniform(-3.5, 3.5, 3)
        if all(np.linalg.norm(p - q) > 1.7 for q in positions):
            positions.append(p)
    elements = ["W", "O", "O"] * (n // 3) + ["O"] * (n % 3)
    return elements, np.array(positions)


def uniform_grid(r_lo: float, r_hi: float, step: float = 0.01) -> np.ndarray:
    return np.arange(round(r_lo / step), round(r_hi / step)) * step


# --------------------------------------------------------------------------- slow, obvious versions


def slow_real_pdf(elements, positions, r, params, strengths) -> np.ndarray:
    """srreal's real-space algorithm spelled out: Gaussians pair by pair on the grid, then explicit sine sums.

    Grid: r = k * dr; srfit's range rmin = r[0], rmax = r[-1] + dr/2, extended
    by 6 termination ripples (6 * 2 pi / qmax) each side; FFT length the next
    power of two above the extended end; Q_k = k pi / (npad dr) kept for
    qmin <= Q_k < qmax. No peak truncation here (srreal cuts at 3.3e-6 of a peak).
    """
    dr = r[1] - r[0]
    ext = 6 * 2 * math.pi / params.qmax
    lo = max(0, math.ceil((r[0] - ext) / dr - 1e-9))
    hi = math.ceil((r[-1] + dr / 2 + ext) / dr)
    grid = np.arange(lo, hi) * dr
    raw = np.zeros(grid.size)
    u = [params.biso_of(e) / (8 * math.pi**2) for e in elements]
    f = [strengths[e] for e in elements]
    for i in range(len(elements)):
        for j in range(len(elements)):
            if i == j:
                continue
            d = np.linalg.norm(positions[i] - positions[j])
            s2 = u[i] + u[j]
            peak = np.exp(-((grid - d) ** 2) / (2 * s2)) / math.sqrt(2 * math.pi * s2)
            raw += f[i] * f[j] * peak / d
    raw /= sum(f) ** 2 / len(f)
    npad = 2 ** math.ceil(math.log2(hi))
    dq = math.pi / (npad * dr)
    k = np.arange(npad)
    q = k[(k >= math.ceil(params.qmin / dq - 1e-9)) & (k < math.ceil(params.qmax / dq))] * dq
    f_of_q = np.array([dr * np.sum(raw * np.sin(qk * grid)) for qk in q])
    g = np.array([(2 / math.pi) * dq * np.sum(f_of_q * np.sin(q * rj)) for rj in r])
    return g * np.exp(-0.5 * (params.qdamp * r) ** 2)


def slow_debye_pdf(elements, positions, r, params) -> np.ndarray:
    """Debye sum over every pair i != j on a fine Q grid, then G = (2/pi) integral F(Q) sin(Q r) dQ (Simpson)."""
    q = np.linspace(params.qmin, params.qmax, 20001)
    f = {e: np.asarray(xraydb.f0(e, q / (4 * math.pi))) for e in set(elements)}
    u = [params.biso_of(e) / (8 * math.pi**2) for e in elements]
    big_f = np.zeros(q.size)
    for i in range(len(elements)):
        for j in range(len(elements)):
            if i != j:
                d = np.linalg.norm(positions[i] - positions[j])
                damping = np.exp(-0.5 * (u[i] + u[j]) * q**2)
                big_f += f[elements[i]] * f[elements[j]] * damping * np.sin(q * d) / d
    big_f /= sum(f[e] for e in elements) ** 2 / len(elements)
    g = np.array([(2 / math.pi) * simpson(big_f * np.sin(q * rj), x=q) for rj in r])
    return g * np.exp(-0.5 * (params.qdamp * r) ** 2)


def slow_srreal_debye_pdf(elements, positions, r, params, srreal_rmax=None) -> np.ndarray:
    """srreal's DebyePDFCalculator spelled out (libdiffpy 1.4, ``DebyePDFCalculator.cpp``).

    rstep = r[1] - r[0], rmin = r[0], rmax = r[-1] + rstep/2 (srfit) unless given;
    extension = 6 * 2 pi / qmax + the widest Gaussian's half width at 3.33e-6
    of its height; pairs with rcalclo <= d <= rcalchi; F on Q_k = k pi / rcalchi
    for k < ceil(qmax / qstep), zeroed below qmin; an odd, zero-padded FFT of
    length 2 npad; G read off by linear interpolation and damped.
    """
    dr = r[1] - r[0]
    rmin, rmax = r[0], (r[-1] + dr / 2 if srreal_rmax is None else srreal_rmax)
    u = [params.biso_of(e) / (8 * math.pi**2) for e in elements]
    widest = 2 * math.sqrt(2 * math.log(2)) * math.sqrt(2 * max(u))
    ext = 6 * 2 * math.pi / params.qmax + widest * math.sqrt(-math.log(3.33e-6) / (4 * math.log(2)))
    lo = max(0, math.ceil((rmin - ext) / dr - 1e-9)) * dr
    hi = math.ceil((rmax + ext) / dr) * dr
    qstep = math.pi / hi
    q = np.arange(math.ceil(params.qmax / qstep)) * qstep
    f = {e: np.asarray(xraydb.f0(e, q / (4 * math.pi))) for e in set(elements)}
    big_f = np.zeros(q.size)
    for i in range(len(elements)):
        for j in range(len(elements)):
            d = np.linalg.norm(positions[i] - positions[j])
            if i != j and lo <= d <= hi:
                damping = np.exp(-0.5 * (u[i] + u[j]) * q**2)
                big_f += f[elements[i]] * f[elements[j]] * damping * np.sin(q * d) / d
    big_f /= sum(f[e] for e in elements) ** 2 / len(elements)
    big_f[: math.ceil(params.qmin / qstep - 1e-9)] = 0.0
    npad = 2 ** math.ceil(math.log2(max(q.size, math.ceil(math.pi / dr / qstep))))
    odd = np.zeros(2 * npad)
    odd[: q.size] = big_f
    odd[2 * npad - np.arange(1, npad)] = -odd[1:npad]
    g_fft = (2 / math.pi) * qstep * npad * np.fft.ifft(odd).imag[:npad]
    g = np.interp(r, np.arange(npad) * math.pi / (npad * qstep), g_fft)
    return g * np.exp(-0.5 * (params.qdamp * r) ** 2)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# --------------------------------------------------------------------------- one cluster


def test_real_calculator_equals_pair_by_pair_gaussians_and_explicit_fourier_filter():
    elements, positions = small_cluster()
    r = uniform_grid(1.0, 9.0)
    params = PDFParameters(biso={"W": 0.3, "O": 0.8})
    strengths = {e: float(xraydb.f0(e, 0.0)[0]) for e in set(elements)}
    slow = slow_real_pdf(elements, positions, r, params, strengths)
    assert relative_error(cluster_pdf(elements, positions, r, params), slow) < 2e-6


def test_neutron_real_calculator_weights_pairs_by_scattering_lengths():
    elements, positions = small_cluster(seed=1)
    r = uniform_grid(1.0, 9.0)
    params = PDFParameters(radiation="neutron", qmin=1.0, qmax=18.0, qdamp=0.03)
    strengths = {e: periodictable.elements.symbol(e).neutron.b_c for e in set(elements)}
    slow = slow_real_pdf(elements, positions, r, params, strengths)
    assert relative_error(cluster_pdf(elements, positions, r, params), slow) < 2e-6
    xray = cluster_pdf(elements, positions, r, PDFParameters(qmin=1.0, qmax=18.0, qdamp=0.03))
    assert relative_error(xray, slow) > 0.01  # W/O contrast differs between X-rays and neutrons


def test_exact_debye_calculator_equals_debye_double_loop_and_numerical_integral():
    elements, positions = small_cluster(seed=2)
    r = uniform_grid(1.0, 9.0, 0.05)
    params = PDFParameters(calculator="debye-exact", biso={"*": 0.5})
    slow = slow_debye_pdf(elements, positions, r, params)
    assert relative_error(cluster_pdf(elements, positions, r, params), slow) < 1e-9


@pytest.mark.parametrize("srreal_rmax", [None, 14.0, 40.0])
def test_debye_calculator_is_srreals_q_grid_sum_fft_and_interpolation(srreal_rmax):
    elements, positions = small_cluster(seed=2)
    r = uniform_grid(1.0, 6.0)
    params = PDFParameters(calculator="debye", biso={"*": 0.5})
    slow = slow_srreal_debye_pdf(elements, positions, r, params, srreal_rmax)
    ours = cluster_pdf(elements, positions, r, params, rmax_angstrom=srreal_rmax)
    assert relative_error(ours, slow) < 1e-9
    exact = cluster_pdf(elements, positions, r, PDFParameters(calculator="debye-exact", biso={"*": 0.5}))
    assert relative_error(ours, exact) > 1e-4  # the Q grid and the interpolation are visible


def test_debye_calculator_drops_pairs_beyond_srreals_extended_range():
    # two W pairs 2 Å apart, the pairs 30 Å from each other: with r up to 8 Å
    # srreal keeps pairs up to 8 + 2.4 Å only; asked for rmax 40 it keeps all
    elements = ["W"] * 4
    positions = np.array([[0, 0, 0], [2.0, 0, 0], [30.0, 0, 0], [32.0, 0, 0]])
    r = uniform_grid(1.0, 8.0)
    near = cluster_pdf(elements[:2], positions[:2], r, PDFParameters(calculator="debye"))
    both = cluster_pdf(elements, positions, r, PDFParameters(calculator="debye"))
    # the same pairs in range, and half as many atoms per pair in the normalisation
    np.testing.assert_allclose(both, near, rtol=0, atol=1e-12 * np.abs(near).max())
    far = cluster_pdf(elements, positions, r, PDFParameters(calculator="debye"), rmax_angstrom=40.0)
    assert relative_error(far, both) > 1e-3


def test_single_element_pdf_does_not_depend_on_radiation():
    # the normalisation N <f>^2 cancels one element's f exactly
    elements, positions = ["Au"] * 6, small_cluster(seed=3, n=6)[1]
    r = uniform_grid(1.5, 8.0)
    xray = cluster_pdf(elements, positions, r, PDFParameters())
    neutron = cluster_pdf(elements, positions, r, PDFParameters(radiation="neutron"))
    np.testing.assert_allclose(neutron, xray, rtol=0, atol=1e-12 * np.abs(xray).max())


def test_zoom_three_factors_multiplies_x_y_z():
    elements, positions = small_cluster(seed=4)
    r = uniform_grid(1.0, 9.0)
    zoom = (0.97, 1.0, 1.05)
    for calculator in ("real", "debye", "debye-exact"):
        zoomed = cluster_pdf(elements, positions, r, PDFParameters(calculator=calculator, zoom=zoom))
        moved = cluster_pdf(elements, positions * np.array(zoom), r, PDFParameters(calculator=calculator))
        np.testing.assert_allclose(zoomed, moved, rtol=0, atol=1e-12 * np.abs(moved).max())


def test_non_uniform_grid_gives_the_band_limited_curve_at_its_points():
    elements, positions = small_cluster(seed=5)
    r = uniform_grid(1.0, 9.0)
    full = cluster_pdf(elements, positions, r, PDFParameters())
    pick = np.sort(np.random.default_rng(0).choice(np.arange(1, r.size - 1), 200, replace=False))
    pick = np.concatenate([[0], pick, [r.size - 1]])
    sparse_grid = cluster_pdf(elements, positions, r[pick], PDFParameters())
    np.testing.assert_allclose(sparse_grid, full[pick], rtol=0, atol=1e-12 * np.abs(full).max())


def test_clusters_without_pairs_give_zero():
    r = uniform_grid(1.0, 5.0)
    assert not cluster_pdf(["W"], [[0.0, 0.0, 0.0]], r, PDFParameters()).any()
    assert not cluster_pdf([], np.zeros((0, 3)), r, PDFParameters(calculator="debye")).any()


def test_unknown_element_is_named_in_the_error():
    positions = [[0, 0, 0], [2.0, 0, 0]]
    with pytest.raises(InputError, match="Xx"):
        cluster_pdf(["W", "Xx"], positions, uniform_grid(1, 5), PDFParameters())
    with pytest.raises(InputError, match="Qq"):
        cluster_pdf(["Qq", "O"], positions, uniform_grid(1, 5), PDFParameters(radiation="neutron"))


def test_ions_use_their_own_form_factor_or_the_element():
    positions = np.array([[0, 0, 0], [1.9, 0, 0], [0, 1.9, 0.2]])
    r = uniform_grid(1.0, 5.0)
    neutral = cluster_pdf(["W", "O", "O"], positions, r, PDFParameters())
    oxide = cluster_pdf(["W", "O2-", "O2-"], positions, r, PDFParameters())
    tungsten_ion = cluster_pdf(["W6+", "O", "O"], positions, r, PDFParameters())  # in the table
    tungsten_other = cluster_pdf(["W4+", "O", "O"], positions, r, PDFParameters())  # not: neutral W
    assert relative_error(oxide, neutral) > 1e-3
    assert relative_error(tungsten_ion, neutral) > 1e-3
    np.testing.assert_array_equal(tungsten_other, neutral)


def test_bad_input_is_refused_with_a_message():
    with pytest.raises(InputError, match="same position"):
        cluster_pdf(["W", "O"], [[0, 0, 0], [0, 0, 0]], uniform_grid(1, 5), PDFParameters())
    with pytest.raises(InputError, match=r"\(n, 3\)"):
        cluster_pdf(["W"], [0, 0, 0], uniform_grid(1, 5), PDFParameters())
    with pytest.raises(InputError, match="non-negative"):
        cluster_pdf(["W", "O"], [[0, 0, 0], [2, 0, 0]], [-1.0, 1.0], PDFParameters())


# --------------------------------------------------------------------------- parameters


def test_parameters_validate_with_one_clear_sentence():
    for kwargs, words in [
        ({"calculator": "fast"}, "Unknown PDF calculator"),
        ({"radiation": "electron"}, "Unknown radiation"),
        ({"qmin": 5.0, "qmax": 4.0}, "larger than qmin"),
        ({"biso": {"W": -0.1}}, "must not be negative"),
        ({"zoom": (1.0, 1.0)}, "three"),
        ({"zoom": 0.0}, "positive"),
        ({"qdamp": float("nan")}, "finite"),
    ]:
        with pytest.raises(InputError, match=words):
            PDFParameters(**kwargs)


def test_parameters_round_trip_through_a_json_dict():
    import json

    params = PDFParameters(calculator="debye", biso={"W": 0.3, "*": 0.9}, zoom=(1.0, 0.99, 1.01), delta2=1.5)
    again = PDFParameters.from_dict(json.loads(json.dumps(params.to_dict())))
    assert again == params and hash(again) == hash(params)
    assert PDFParameters.from_dict(PDFParameters().to_dict()) == PDFParameters()
    assert params.biso_of("W") == 0.3 and params.biso_of("O2-") == 0.9
    assert PDFParameters(biso={"O": 0.5, "*": 0.4}).biso_of("O2-") == 0.5
    with pytest.raises(InputError, match="Unknown PDF parameter"):
        PDFParameters.from_dict({"qmax": 20, "rmax": 10})
    with pytest.raises(InputError, match="No Biso"):
        PDFParameters(biso={"W": 0.4}).biso_of("O")


# --------------------------------------------------------------------------- the batched engine


def random_masks(n_motifs: int, n_permutable: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n_motifs, n_permutable), dtype=bool)
    for m, k in enumerate(rng.integers(1, n_permutable + 1, n_motifs)):
        masks[m, rng.choice(n_permutable, k, replace=False)] = True
    return masks


@pytest.fixture(scope="module")
def particle():
    return oxide_particle(10)


@pytest.mark.parametrize("calculator", ["real", "debye", "debye-exact"])
@pytest.mark.parametrize("zoom", [1.0, 1.007, (0.995, 1.0, 1.01)])
def test_batched_pdfs_equal_cluster_pdf_of_each_motif(particle, calculator, zoom):
    elements, positions, membership = particle
    r = uniform_grid(1.6, 10.0)
    params = PDFParameters(calculator=calculator, biso={"W": 0.35, "O": 0.6})
    engine = MotifPDFEngine(elements, positions, membership, r, params)
    masks = random_masks(12, membership.shape[1], seed=hash(str(zoom)) % 1000)
    batched = engine.pdfs(masks, zoom=zoom)
    presence = engine.presence(masks)
    for mask, present, g in zip(masks, presence, batched):
        assert np.array_equal(present, (membership & mask).any(axis=1))
        motif = [e for e, keep in zip(elements, present) if keep]
        one = cluster_pdf(motif, positions[present], r, PDFParameters(**{**params.to_dict(), "zoom": zoom}))
        assert np.abs(g - one).max() <= 1e-6 * np.abs(one).max()


def test_anisotropic_zoom_splits_classes_and_isotropic_zoom_keeps_them(particle):
    elements, positions, membership = particle
    engine = MotifPDFEngine(elements, positions, membership, uniform_grid(1.6, 10.0), PDFParameters())
    iso = engine.n_classes(1.0)
    assert engine.n_classes(1.02) == iso
    assert engine.n_classes((1.0, 1.0, 1.01)) > iso
    assert engine.classes().size.sum() == len(elements) * (len(elements) - 1) // 2
    assert iso < len(elements) * (len(elements) - 1) // 2  # a lattice piece repeats distances


def test_building_blocks_combine_to_the_pdfs(particle):
    elements, positions, membership = particle
    r = uniform_grid(1.6, 10.0)
    masks = random_masks(20, membership.shape[1], seed=3)
    real = MotifPDFEngine(elements, positions, membership, r, PDFParameters())
    counts = real.class_counts(masks, zoom=1.004)
    assert counts.shape == (20, real.n_classes())
    by_parts = counts @ real.kernel(1.004) / real.normalisation(masks)
    np.testing.assert_allclose(by_parts, real.pdfs(masks, zoom=1.004), rtol=0, atol=1e-10)
    left, right = real.projection_factors(1.004)
    np.testing.assert_allclose(right @ right.T, np.eye(right.shape[0]), atol=1e-10)
    assert right.shape[0] < real.q.size < r.size  # band-limited: a small basis spans every G

    debye = MotifPDFEngine(elements, positions, membership, r, PDFParameters(calculator="debye"))
    norm = debye.normalisation(masks, zoom=1.004)
    assert norm.shape == (20, debye.transform(1.004).n_q)  # X-ray f depends on Q
    counts = debye.class_counts(masks, zoom=1.004)
    by_parts = (counts @ debye.kernel_q(1.004) / norm) @ debye.projection(1.004)
    np.testing.assert_allclose(by_parts, debye.pdfs(masks, zoom=1.004), rtol=0, atol=1e-10)


def test_chunks_change_nothing_and_stay_small(particle):
    elements, positions, membership = particle
    r = uniform_grid(1.6, 10.0)
    masks = random_masks(101, membership.shape[1], seed=4)
    whole = MotifPDFEngine(elements, positions, membership, r, PDFParameters()).pdfs(masks)
    tiny = MotifPDFEngine(elements, positions, membership, r, PDFParameters(), chunk_size=7)
    sizes = []
    streamed = np.empty_like(whole)
    for start, stop, g in tiny.iter_pdfs(masks):
        sizes.append(stop - start)
        streamed[start:stop] = g
    assert max(sizes) == 7 and sum(sizes) == 101
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tiny.class_counts(masks), MotifPDFEngine(
        elements, positions, membership, r, PDFParameters()).class_counts(masks))


def test_empty_and_single_atom_motifs_give_zero():
    elements, positions = small_cluster(seed=6)
    membership = np.eye(len(elements), dtype=bool)  # every atom permutable, no bonds
    engine = MotifPDFEngine(elements, positions, membership, uniform_grid(1, 8), PDFParameters())
    masks = np.zeros((3, len(elements)), dtype=bool)
    masks[1, 0] = True
    masks[2, [0, 1]] = True
    g = engine.pdfs(masks)
    assert not g[0].any() and not g[1].any() and np.abs(g[2]).max() > 0


def test_engine_refuses_bad_masks_and_membership(particle):
    elements, positions, membership = particle
    r = uniform_grid(1.6, 10.0)
    with pytest.raises(InputError, match="membership"):
        MotifPDFEngine(elements, positions, membership[:-1], r, PDFParameters())
    engine = MotifPDFEngine(elements, positions, membership, r, PDFParameters())
    with pytest.raises(InputError, match="Masks"):
        engine.pdfs(np.ones((2, membership.shape[1] + 1)))
    with pytest.raises(InputError, match="0/1"):
        engine.pdfs(np.full((1, membership.shape[1]), 2))


def test_debye_sum_over_thousands_of_distinct_distances_matches_pair_by_pair_kernels():
    # cluster_pdf sums > 2000 distinct distances of one width by binned Taylor
    # moments; the engine sums one exact kernel per class
    rng = np.random.default_rng(8)
    positions = np.cumsum(rng.normal(scale=1.6, size=(75, 3)), axis=0)
    elements = ["Au"] * 75
    r = uniform_grid(1.0, 12.0, 0.02)
    params = PDFParameters(calculator="debye-exact")
    engine = MotifPDFEngine(elements, positions, np.eye(75, dtype=bool), r, params)
    assert engine.n_classes() > 2000
    batched = engine.pdfs(np.ones(75, dtype=bool))[0]
    one = cluster_pdf(elements, positions, r, params)
    assert np.abs(batched - one).max() <= 1e-9 * np.abs(one).max()


def test_no_pairs_in_reach_gives_zero_not_an_error():
    from motex_db.pdf import MotifPDFEngine, PDFParameters, cluster_pdf

    r = np.linspace(1, 5, 41)
    assert not cluster_pdf(["W"], [[0, 0, 0]], r, PDFParameters()).any()
    assert not cluster_pdf(["W", "W"], [[0, 0, 0], [50, 0, 0]], r, PDFParameters()).any()
    engine = MotifPDFEngine(["W"], [[0, 0, 0]], np.ones((1, 1), bool), r, PDFParameters())
    assert not engine.pdfs(np.ones((1, 1), bool)).any()


def test_fit_configs_of_the_new_debye_meaning_never_match_old_ones():
    # before issue 14, "debye" meant the exact integral; a record holding such
    # results must not hand them out for the srreal-grid calculator
    import hashlib
    import json

    from motex_db.fitting import ENGINE_VERSION, FitSettings

    settings = FitSettings(calculator="debye").resolved({})
    old = hashlib.sha256(json.dumps(
        {"engine_version": ENGINE_VERSION, "settings": settings.to_dict()},
        sort_keys=True, separators=(",", ":"), allow_nan=False,
    ).encode()).hexdigest()
    assert settings.content_hash() != old
    hashes = {FitSettings(calculator=c).resolved({}).content_hash() for c in ("real", "debye", "debye-exact")}
    assert len(hashes) == 3
