"""The paper's figures are written as PNG files."""
from mapa_vae.cli import main


def test_paper_figures(tmp_path, capsys):
    out = tmp_path / "figures"
    assert main(["figures", "--n-train", "200", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["fig1_quadratic.png", "fig3_posterior_trend.png", "fig4_absolute_value.png",
                     "fig5_circle.png"]
    for name in names:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out.count("wrote") == 4
