"""`robustcaps models`: every registered model with its parameters, FLOPs, configuration and paper."""

from __future__ import annotations

from click.testing import CliRunner

from robustcaps.cli import cli
from robustcaps.models import list_models, model_info


def test_models_lists_every_family_with_its_paper_and_counts():
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[2:]}
    assert set(lines) == set(list_models())
    assert (
        "6,640,384" in lines["dynamic-capsnet"]
        and "Sabour, Frosst, Hinton, NeurIPS 2017" in lines["dynamic-capsnet"]
    )
    assert "2,432,864" in lines["sr-capsnet"] and "Hahn, Pyeon, Kim, NeurIPS 2019" in lines["sr-capsnet"]
    assert "3 iters, no decoder" in lines["dynamic-capsnet"]
    # FLOPs, 2 per multiply-add: the two convolutions, the votes û_j|i = W_ij u_i, and routing's products:
    # s_j in each of 3 iterations and the agreement û·v in the first 2, each 2,048 × 5 × 16 multiply-adds
    convolutions = 2 * (24 * 24 * 256 * 81 + 8 * 8 * 256 * 256 * 81)
    votes, per_sum = 2 * 2048 * 5 * 16 * 8, 2 * 2048 * 5 * 16
    assert model_info("dynamic-capsnet")["flops_per_image"] == convolutions + votes + (3 + 2) * per_sum
    stereo = CliRunner().invoke(cli, ["models", "--in-channels", "2"])
    assert "6,661,120" in stereo.output  # Conv1 gains 256 × 81 weights for the second camera
