"""Fitting numerics: settings, the batched fits against direct computations, DiffPy's fits and srfit."""

from __future__ import annotations

import csv
import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.optimize import leastsq

from motex_db.catalogue import membership_matrix
from motex_db.errors import InputError
from motex_db.fitting import ENGINE_VERSION, RECIPES, FitSettings, MotifFitter
from motex_db.pdf import PDFParameters, cluster_pdf
from support import KEGGIN, REFERENCE, oxide_particle, requires_shared

# --------------------------------------------------------------------------- helpers


def motif_atoms(elements, positions, membership, mask):
    keep = membership[:, np.asarray(mask, dtype=bool)].any(axis=1)
    return [e for e, k in zip(elements, keep) if k], positions[keep]


def zoom_of(values: dict):
    if "zoomx" in values:
        return (values["zoomx"], values["zoomy"], values["zoomz"])
    return values["zoom"]


def direct_rwp(elements, positions, membership, mask, r, y, settings: FitSettings, values: dict) -> float:
    """Rwp of cluster_pdf of the motif at the reported values: the obvious computation."""
    el, pos = motif_atoms(elements, positions, membership, mask)
    biso = dict(settings.biso)
    biso.update({key[5:]: v for key, v in values.items() if key.startswith("biso_")})
    params = PDFParameters(
        calculator=settings.calculator, radiation=settings.radiation, qmin=settings.qmin, qmax=settings.qmax,
        qdamp=settings.qdamp, qbroad=settings.qbroad, delta2=values.get("delta2", settings.delta2),
        biso=biso, zoom=zoom_of(values),
    )
    g = cluster_pdf(el, pos, r, params)
    return math.sqrt(float(((y - values["scale"] * g) ** 2).sum() / (y @ y)))


def sampled_masks(n_permutable: int, n: int, seed: int) -> np.ndarray:
    """ML-MotEx's sampler: k uniform in 1..N, then a random subset of k."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, n_permutable), dtype=bool)
    for row, k in zip(masks, rng.integers(1, n_permutable + 1, n)):
        row[rng.choice(n_permutable, k, replace=False)] = True
    return masks


def read_reference(name: str):
    with open(REFERENCE / name) as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    masks = np.array([[c == "1" for c in row["mask"]] for row in rows])
    return masks, rows


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def keggin():
    from motex_db.datasets import read_pdf_data
    from motex_db.structures import read_structure

    structure = read_structure(KEGGIN / "109725.xyz")
    data = read_pdf_data(KEGGIN / "DanMAX_AlphaKeggin.gr")
    permutable = np.array([e == "W" for e in structure.elements])
    membership = membership_matrix(structure.positions, permutable, 2.6)
    return structure.elements, structure.positions, membership, data


@pytest.fixture(scope="module")
def keggin_fitters(keggin):
    elements, positions, membership, data = keggin
    out = {}
    for recipe in ("fast", "mlmotex"):
        settings = FitSettings.for_recipe(recipe).resolved(data.meta)
        out[recipe] = (settings, MotifFitter(elements, positions, membership, data.r, data.g, settings))
    return out


@pytest.fixture(scope="module")
def particle():
    return oxide_particle(8)


def synthetic(particle, mask, params: PDFParameters, scale: float):
    """G of one motif of the particle, times ``scale``, on 1.6-10 Å (0.01 Å)."""
    elements, positions, membership = particle
    r = np.arange(160, 1001) * 0.01
    el, pos = motif_atoms(elements, positions, membership, mask)
    return r, scale * cluster_pdf(el, pos, r, params)


# --------------------------------------------------------------------------- settings


def test_recipes_and_overrides():
    assert RECIPES["fast"] == FitSettings()
    assert RECIPES["mlmotex"].free == ("scale", "zoom3")
    assert FitSettings.for_recipe("fast", rmax=12.0).recipe == "fast"
    assert FitSettings.for_recipe("fast", free=("zoom", "scale")).recipe == "fast"
    custom = FitSettings.for_recipe("mlmotex", free=("scale", "zoom3", "biso_W"))
    assert custom.recipe == "custom" and custom.free == ("scale", "zoom3", "biso_W")
    assert FitSettings.for_recipe("custom", free=("biso", "biso_W", "scale")).free == ("scale", "biso")


def test_resolved_takes_the_header_q_window():
    settings = FitSettings().resolved({"qmin": 0.7, "qmax": 19.9989799422})
    assert (settings.qmin, settings.qmax) == (0.7, 19.9989799422)
    assert FitSettings(qmax=18.0).resolved({"qmax": 25}).qmax == 18.0
    assert (FitSettings().resolved({}).qmin, FitSettings().resolved(None).qmax) == (0.7, 20.0)
    with pytest.raises(InputError, match="larger than qmin"):
        FitSettings(qmin=5.0).resolved({"qmax": 3.0})


def test_content_hash_is_the_identity_of_resolved_settings():
    a = FitSettings.for_recipe("fast", biso={"W": 0.4, "*": 0.4}).resolved({"qmax": 20})
    b = FitSettings.from_dict(a.to_dict())
    assert a == b and a.content_hash(ENGINE_VERSION) == b.content_hash(ENGINE_VERSION)
    assert a.to_dict() == FitSettings.from_dict(a.to_dict()).to_dict()
    assert list(a.to_dict()) == sorted(a.to_dict())
    # the same values written differently are the same configuration
    c = FitSettings.for_recipe("fast", free=["zoom", "scale"], rmax=10, biso={"*": 0.4, "W": 0.4})
    c = c.resolved({"qmax": 20.0})
    assert c.content_hash(ENGINE_VERSION) == a.content_hash(ENGINE_VERSION)
    assert a.content_hash(ENGINE_VERSION) != a.content_hash("motex-pdf 0")
    assert a.content_hash(ENGINE_VERSION) != FitSettings(qmax=20.0).resolved({"qmax": 19.9}).content_hash()
    with pytest.raises(InputError, match="Resolve"):
        FitSettings().content_hash(ENGINE_VERSION)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rmin": 5.0, "rmax": 2.0}, "rmin < rmax"),
        ({"free": ("zoom", "zoom3")}, "not both"),
        ({"free": ("scale", "bisoW")}, "Cannot refine 'bisoW'"),
        ({"zoom_bounds": (1.01, 0.99)}, "ordered"),
        ({"biso_bounds": (1.0,)}, "two numbers"),
        ({"zoom_sigma": 0.0}, "positive"),
        ({"qmin": 3.0, "qmax": 2.0}, "larger than qmin"),
        ({"calculator": "fft"}, "Unknown PDF calculator"),
        ({"biso": {"W": -1.0}}, "negative"),
        ({"qdamp": float("nan")}, "finite"),
    ],
)
def test_bad_settings_are_one_sentence_input_errors(overrides, message):
    with pytest.raises(InputError, match=message) as info:
        FitSettings.for_recipe("custom", **overrides)
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")


def test_named_recipe_cannot_refine_other_things():
    with pytest.raises(InputError, match="custom"):
        FitSettings(recipe="fast", free=("scale", "zoom3"))


# --------------------------------------------------------------------------- synthetic data, no shared files


def test_fast_recovers_scale_and_zoom(particle):
    elements, positions, membership = particle
    mask = np.array([1, 1, 0, 1, 1, 0, 1, 1], dtype=bool)
    r, g = synthetic(particle, mask, PDFParameters(zoom=1.004), 0.8)
    settings = FitSettings(rmin=r[0], rmax=r[-1]).resolved({})
    batch = MotifFitter(elements, positions, membership, r, g, settings).fit(mask)
    assert batch.ok[0] and batch.errors == [None]
    assert batch.rwp[0] < 1e-6
    assert batch.params[0]["scale"] == pytest.approx(0.8, rel=1e-6)
    assert batch.params[0]["zoom"] == pytest.approx(1.004, abs=1e-7)


def test_mlmotex_recovers_three_zooms(particle):
    elements, positions, membership = particle
    mask = np.array([1, 1, 1, 1, 0, 1, 1, 1], dtype=bool)
    r, g = synthetic(particle, mask, PDFParameters(zoom=(1.004, 0.996, 1.007)), 0.8)
    settings = FitSettings.for_recipe("mlmotex", rmin=r[0], rmax=r[-1]).resolved({})
    batch = MotifFitter(elements, positions, membership, r, g, settings).fit(mask[None])
    values = batch.params[0]
    assert batch.rwp[0] < 1e-5
    assert values["scale"] == pytest.approx(0.8, rel=1e-5)
    assert (values["zoomx"], values["zoomy"], values["zoomz"]) == pytest.approx((1.004, 0.996, 1.007), abs=2e-6)


@pytest.mark.parametrize("zoom_sigma, n_panels", [(0.001, 1), (0.05, 5)])
def test_global_zoom_search_beats_a_fine_scan(particle, zoom_sigma, n_panels):
    """The fast fit's objective is never above the exact objective anywhere on a fine zoom scan."""
    elements, positions, membership = particle
    r = np.arange(160, 1001) * 0.01
    rng = np.random.default_rng(3)
    # a rough G, nothing like any motif: several minima in zoom
    g = cluster_pdf(*motif_atoms(elements, positions, membership, np.ones(8, bool)), r, PDFParameters(zoom=1.02))
    g = g * (1 + 0.3 * rng.standard_normal(r.size))
    settings = FitSettings(zoom_sigma=zoom_sigma).resolved({})
    fitter = MotifFitter(elements, positions, membership, r, g, settings)
    assert len(fitter._iso.panels) == n_panels  # a wide search window is cut into Chebyshev panels
    masks = sampled_masks(8, 6, seed=4)
    batch = fitter.fit(masks)
    low, high = settings.zoom_bounds
    zoom = np.array([values["zoom"] for values in batch.params])
    ours = batch.rwp**2 * (g @ g) + (np.maximum(0, np.maximum(low - zoom, zoom - high)) / settings.zoom_sigma) ** 2
    best = np.full(len(masks), np.inf)
    for z in np.linspace(*fitter.window, 2001):
        calc = fitter.engine.pdfs(masks, z)
        scale = (calc @ g) / (calc * calc).sum(1)
        pen = max(0.0, low - z, z - high) / settings.zoom_sigma
        best = np.minimum(best, ((g - scale[:, None] * calc) ** 2).sum(1) + pen**2)
    assert np.all(ours <= best * (1 + 1e-6))


def test_failed_motifs_leave_the_rest_alone():
    elements = ["W", "W", "W", "W"]
    positions = np.array([[0.0, 0, 0], [3.2, 0, 0], [0, 3.3, 0], [60.0, 0, 0]])
    membership = np.eye(4, dtype=bool)
    r = np.arange(160, 1001) * 0.01
    g = cluster_pdf(elements[:3], positions[:3], r, PDFParameters(zoom=1.003))
    masks = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 1], [1, 1, 0, 1]], dtype=bool)
    for recipe, extra in (("fast", {}), ("mlmotex", {}), ("custom", {"free": ("scale", "zoom", "biso")})):
        settings = FitSettings.for_recipe(recipe, **extra).resolved({})
        batch = MotifFitter(elements, positions, membership, r, g, settings).fit(masks)
        assert list(batch.ok) == [True, False, False, True], recipe
        assert batch.rwp[0] < 1e-5 and batch.rwp[3] > 0
        assert np.isnan(batch.rwp[1]) and batch.params[1] is None
        assert batch.errors[1] == batch.errors[2] and "zero on the fit range" in batch.errors[1]
        assert batch.errors[0] is None and batch.errors[3] is None
        assert batch.seconds.shape == (4,) and np.all(batch.seconds >= 0)
    assert len(MotifFitter(elements, positions, membership, r, g, settings).fit(np.zeros((0, 4), bool))) == 0


def test_fitter_input_errors(particle):
    elements, positions, membership = particle
    r = np.arange(160, 1001) * 0.01
    g = np.sin(r)
    resolved = FitSettings().resolved({})
    with pytest.raises(InputError, match="Resolve"):
        MotifFitter(elements, positions, membership, r, g, FitSettings())
    with pytest.raises(InputError, match="data points lie in the fit range"):
        MotifFitter(elements, positions, membership, r, g, FitSettings(rmin=20, rmax=30).resolved({}))
    with pytest.raises(InputError, match="zero everywhere"):
        MotifFitter(elements, positions, membership, r, 0 * g, resolved)
    with pytest.raises(InputError, match="no Mo atoms"):
        settings = FitSettings.for_recipe("custom", free=("scale", "biso_Mo")).resolved({})
        MotifFitter(elements, positions, membership, r, g, settings)
    fitter = MotifFitter(elements, positions, membership, r, g, resolved)
    with pytest.raises(InputError, match=r"\(n_motifs, 8\)"):
        fitter.fit(np.ones((2, 5), bool))


def test_general_path_recovers_biso_and_delta2(particle):
    elements, positions, membership = particle
    mask = np.array([1, 1, 0, 1, 1, 0, 1, 1], dtype=bool)
    r, g = synthetic(particle, mask, PDFParameters(zoom=1.004, biso={"W": 0.3, "O": 0.4}, delta2=1.5), 0.8)
    settings = FitSettings.for_recipe(
        "custom", free=("scale", "zoom", "biso_W", "delta2"), biso={"*": 0.4, "W": 0.5}, delta2=0.5
    ).resolved({})
    batch = MotifFitter(elements, positions, membership, r, g, settings).fit(mask)
    values = batch.params[0]
    assert set(values) == {"scale", "zoom", "biso_W", "delta2"}
    assert batch.rwp[0] < 1e-5
    assert values["biso_W"] == pytest.approx(0.3, abs=1e-4)
    assert values["delta2"] == pytest.approx(1.5, abs=1e-3)
    assert values["zoom"] == pytest.approx(1.004, abs=1e-6)


def test_general_path_debye_calculator(particle):
    elements, positions, membership = particle
    mask = np.array([0, 1, 1, 1, 1, 0, 1, 0], dtype=bool)
    r, g = synthetic(particle, mask, PDFParameters(calculator="debye", zoom=0.997), 1.3)
    settings = FitSettings.for_recipe("custom", calculator="debye", free=("scale", "zoom")).resolved({})
    fitter = MotifFitter(elements, positions, membership, r, g, settings)
    assert fitter.path == "general"
    batch = fitter.fit(np.vstack([mask, np.ones(8, bool)]))
    assert batch.ok.all()
    assert batch.rwp[0] < 1e-6 and batch.rwp[1] > 1e-3
    assert batch.params[0]["zoom"] == pytest.approx(0.997, abs=1e-6)
    assert batch.params[0]["scale"] == pytest.approx(1.3, rel=1e-5)
    for m, rwp, values in zip((mask, np.ones(8, bool)), batch.rwp, batch.params):
        assert rwp == pytest.approx(direct_rwp(elements, positions, membership, m, r, g, settings, values), abs=1e-9)


# --------------------------------------------------------------------------- the Keggin data


@requires_shared
@pytest.mark.parametrize("recipe", ["fast", "mlmotex"])
def test_rwp_is_that_of_cluster_pdf_at_the_reported_values(keggin, keggin_fitters, recipe):
    """The interpolated kernels are exact to far below 1e-6 in Rwp; the scale is the best one."""
    elements, positions, membership, data = keggin
    settings, fitter = keggin_fitters[recipe]
    masks = sampled_masks(24, 12, seed=11)
    batch = fitter.fit(masks)
    assert batch.ok.all()
    r, y = fitter.data.r, fitter.data.y
    for mask, rwp, values in zip(masks, batch.rwp, batch.params):
        assert abs(rwp - direct_rwp(elements, positions, membership, mask, r, y, settings, values)) < 1e-6
        el, pos = motif_atoms(elements, positions, membership, mask)
        g = cluster_pdf(el, pos, r, replace(settings.pdf_parameters(), zoom=zoom_of(values)))
        assert values["scale"] == pytest.approx((g @ y) / (g @ g), rel=1e-5)


@requires_shared
@pytest.mark.parametrize(
    "recipe, reference", [("fast", "fits_109725_danmax_isozoom.csv"), ("mlmotex", "fits_109725_danmax.csv")]
)
def test_never_worse_than_diffpy(keggin_fitters, recipe, reference, record_property):
    settings, fitter = keggin_fitters[recipe]
    masks, rows = read_reference(reference)
    assert len(masks) == 40
    diffpy = np.array([float(row["rwp"]) for row in rows])
    batch = fitter.fit(masks)
    assert batch.ok.all()
    difference = batch.rwp - diffpy
    better = int((difference < -1e-4).sum())
    record_property("max_rwp_minus_diffpy", float(difference.max()))
    record_property("better_than_diffpy_by_1e-4", better)
    assert difference.max() <= 0.002, f"worse than DiffPy by {difference.max():.4g} (better in {better} of 40)"
    # DiffPy's own zooms where it reported them: ours are the same minimum
    if "zoom_a" in rows[0]:
        for values, row, d in zip(batch.params, rows, difference):
            if abs(d) < 1e-5:
                ours = (values["zoomx"], values["zoomy"], values["zoomz"])
                assert ours == pytest.approx([float(row[k]) for k in ("zoom_a", "zoom_b", "zoom_c")], abs=2e-4)


@requires_shared
@pytest.mark.parametrize("recipe, zoom_mode", [("fast", "iso"), ("mlmotex", "xyz")])
def test_never_worse_than_srfit_on_our_engine(keggin, keggin_fitters, recipe, zoom_mode):
    from motex_db.pdf.srfit import build_cluster_recipe

    elements, positions, membership, data = keggin
    settings, fitter = keggin_fitters[recipe]
    masks = sampled_masks(24, 2, seed=5)
    batch = fitter.fit(masks)
    r, y = fitter.data.r, fitter.data.y
    free = ["scale", "zoom"] if zoom_mode == "iso" else ["scale", "zoomx", "zoomy", "zoomz"]
    for mask, rwp in zip(masks, batch.rwp):
        el, pos = motif_atoms(elements, positions, membership, mask)
        fit_recipe = build_cluster_recipe(el, pos, r, y, settings.pdf_parameters(), zoom_mode=zoom_mode, free=free)
        g_start = fit_recipe.pdf.evaluate()  # scale 1: start it at its best value, as motex-db refine does
        fit_recipe.scale.setValue(float(y @ g_start) / float(g_start @ g_start))
        solution, *_ = leastsq(fit_recipe.residual, fit_recipe.values)
        fit_recipe.residual(solution)
        g_calc = fit_recipe.pdf.evaluate()
        srfit_rwp = math.sqrt(float(((y - g_calc) ** 2).sum() / (y @ y)))
        assert rwp <= srfit_rwp + 0.002


@requires_shared
@pytest.mark.parametrize("recipe, n_masks", [("fast", 400), ("mlmotex", 60)])
def test_a_motif_fits_the_same_alone_or_in_a_batch(keggin_fitters, recipe, n_masks):
    settings, fitter = keggin_fitters[recipe]
    masks = sampled_masks(24, n_masks, seed=21)
    together = fitter.fit(masks)
    for i, mask in enumerate(masks):
        alone = fitter.fit(mask)
        assert alone.rwp[0] == pytest.approx(together.rwp[i], abs=1e-7)
        for name, value in alone.params[0].items():
            assert value == pytest.approx(together.params[i][name], abs=1e-5), (i, name)
