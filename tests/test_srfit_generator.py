"""Our engine inside diffpy.srfit: the generator and ML-MotEx's recipe."""

import numpy as np
import pytest
from scipy.optimize import leastsq

from motex_db.errors import InputError
from motex_db.pdf import PDFParameters, cluster_pdf
from motex_db.pdf.srfit import ClusterPDFGenerator, build_cluster_recipe

R = np.arange(1.6, 10.0 + 1e-9, 0.01)


def settings(**changes):
    values = dict(
        calculator="real",
        radiation="xray",
        qmin=0.7,
        qmax=20.0,
        qdamp=0.05,
        qbroad=0.0,
        delta2=0.0,
        biso={"*": 0.4},
        zoom=1.0,
    )
    values.update(changes)
    return PDFParameters(**values)


@pytest.fixture(scope="module")
def cluster():
    """A small W-O cluster: a WO6 octahedron and a second W sharing a corner."""
    positions = np.array(
        [
            [0.0, 0.0, 0.0],
            [3.75, 0.0, 0.0],
            [1.9, 0.0, 0.0],
            [-1.9, 0.0, 0.0],
            [0.0, 1.9, 0.0],
            [0.0, -1.9, 0.0],
            [0.0, 0.0, 1.95],
            [0.0, 0.0, -1.85],
            [3.75, 1.9, 0.0],
            [3.75, 0.0, 1.9],
        ]
    )
    elements = ["W", "W"] + ["O"] * 8
    return elements, positions


def rwp(recipe):
    profile = recipe.pdf.profile
    return np.sqrt(np.sum((profile.y - profile.ycalc) ** 2) / np.sum(profile.y**2))


def test_generator_equals_the_engine(cluster):
    elements, positions = cluster
    params = settings(biso={"W": 0.3, "O": 0.8}, delta2=1.5)
    generator = ClusterPDFGenerator(elements, positions, params, zoom_mode="iso")
    assert {"zoom", "delta2", "biso_W", "biso_O"} <= set(generator.getNames())
    np.testing.assert_allclose(generator(R), cluster_pdf(elements, positions, R, params), rtol=1e-12, atol=1e-12)

    generator.zoom.setValue(1.01)
    expected = cluster_pdf(elements, positions * 1.01, R, params)
    np.testing.assert_allclose(generator(R), expected, rtol=1e-12, atol=1e-12)


def test_xyz_zoom_multiplies_each_axis(cluster):
    elements, positions = cluster
    generator = ClusterPDFGenerator(elements, positions, settings(), zoom_mode="xyz")
    assert {"zoomx", "zoomy", "zoomz"} <= set(generator.getNames())
    generator.zoomy.setValue(0.99)
    expected = cluster_pdf(elements, positions * [1.0, 0.99, 1.0], R, settings())
    np.testing.assert_allclose(generator(R), expected, rtol=1e-12, atol=1e-12)


def test_generator_reuses_its_last_result(cluster, monkeypatch):
    elements, positions = cluster
    generator = ClusterPDFGenerator(elements, positions, settings())
    calls = []
    import motex_db.pdf.srfit as srfit_module

    def counting(*args):
        calls.append(1)
        return cluster_pdf(*args)

    monkeypatch.setattr(srfit_module, "cluster_pdf", counting)
    first = generator(R)
    assert generator(R.copy()) is first
    generator.biso_O.setValue(0.5)
    generator(R)
    assert len(calls) == 2


def test_recipe_recovers_scale_and_zoom(cluster):
    elements, positions = cluster
    g_obs = 0.7 * cluster_pdf(elements, positions * 1.004, R, settings())
    recipe = build_cluster_recipe(elements, positions, R, g_obs, settings())
    assert recipe.getNames() == ["scale", "zoom"]
    leastsq(recipe.residual, recipe.values)
    assert recipe.scale.value == pytest.approx(0.7, rel=1e-4)
    assert recipe.zoom.value == pytest.approx(1.004, abs=1e-5)
    assert rwp(recipe) < 1e-4


def test_recipe_restrains_zoom_the_srfit_way(cluster):
    elements, positions = cluster
    g_obs = cluster_pdf(elements, positions, R, settings())
    recipe = build_cluster_recipe(elements, positions, R, g_obs, settings(), zoom_mode="xyz")
    assert recipe.getNames() == ["scale", "zoomx", "zoomy", "zoomz"]
    residual = recipe.residual([1.0, 1.0, 1.013, 1.0])
    # Three restraint entries at the end (srfit keeps them unordered):
    # max(0, lb - z, z - ub) / sig.
    np.testing.assert_allclose(sorted(residual[-3:]), [0.0, 0.0, 3.0], atol=1e-9)
    assert len(residual) == len(R) + 3


def test_recipe_refines_biso(cluster):
    elements, positions = cluster
    truth = settings(biso={"W": 0.4, "O": 0.9})
    g_obs = cluster_pdf(elements, positions, R, truth)
    recipe = build_cluster_recipe(elements, positions, R, g_obs, settings(), free=["scale", "biso"])
    assert recipe.getNames() == ["scale", "biso_W", "biso_O"]
    leastsq(recipe.residual, recipe.values)
    assert recipe.biso_W.value == pytest.approx(0.4, abs=2e-3)
    assert recipe.biso_O.value == pytest.approx(0.9, abs=2e-3)
    assert recipe.scale.value == pytest.approx(1.0, abs=1e-3)
    assert rwp(recipe) < 1e-4


def test_recipe_rejects_unknown_parameters(cluster):
    elements, positions = cluster
    with pytest.raises(InputError, match="Cannot refine 'biso_Mo'"):
        build_cluster_recipe(elements, positions, R, np.ones_like(R), settings(), free=["scale", "biso_Mo"])


def test_refining_prints_nothing(cluster, capsys):
    elements, positions = cluster
    g_obs = cluster_pdf(elements, positions, R, settings())
    recipe = build_cluster_recipe(elements, positions, R, g_obs, settings())
    leastsq(recipe.residual, recipe.values)
    assert capsys.readouterr().out == ""
