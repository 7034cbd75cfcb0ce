import pandas as pd
import pytest
from click.testing import CliRunner

from usspectrum.cli import cli


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_flops_table_and_csv(tmp_path):
    out = tmp_path / "f.csv"
    result = run("flops", "--widths", "0.25,0.5,0.75,1.0", "--csv", str(out))
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out)
    assert list(df.width) == [0.25, 0.5, 0.75, 1.0]
    assert [int(v) for v in df.mflops] == [41, 149, 325, 568]
    assert "568.7" in result.output


def test_flops_stage_option_adds_rows(tmp_path):
    out = tmp_path / "f.csv"
    result = run("flops", "--widths", "0.5,1.0", "--stage", "5", "--stage", "1",
                 "--ratio", "0.6", "--stem", "cifar", "--csv", str(out))
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out)
    assert list(df.width) == ["0.5", "1.0", "0.5@s5x0.6", "1.0@s5x0.6", "0.5@s1x0.6", "1.0@s1x0.6"]
    assert (df.image_size == 32).all()


def test_flops_json_at_another_input_size():
    import json

    result = run("flops", "--widths", "0.75,1.0", "--json", "--image-size", "160")
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert [r["image_size"] for r in rows] == [160, 160]
    # the MobileNet paper's Table 7: 1.0 MobileNet-160 has 290 million mult-adds
    # (Table 6's 0.75 at 224 is 325M; at 160 it scales with the pixels, 325 * (160/224)^2)
    assert abs(rows[1]["mflops"] - 290) < 1
    assert abs(rows[0]["mflops"] - 325 * (160 / 224) ** 2) < 3


@pytest.mark.parametrize("args, needle", [
    (["--model", "nope"], "known models: autoslim_mnasnet, autoslim_mobilenet_v1"),
    (["--widths", "1.2"], "give widths in (0, 1.0]"),
    (["--widths", "0.5:x"], "malformed"),
    (["--stage", "6", "--ratio", "0.6"], "out of range"),
    (["--stage", "0", "--ratio", "0.6"], "out of range"),
    (["--stage", "5", "--ratio", "1.5"], "(0, 1]"),
    (["--stage", "5"], "go together"),
])
def test_bad_input_is_one_line_exit_2(args, needle):
    result = run("flops", *args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and needle in lines[0], result.output
