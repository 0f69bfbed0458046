"""experiments/benchmark.py on the demo: every strategy computes the same KL, and the figures are sane."""

import json
import subprocess
import sys

import numpy as np
import pytest

from experiments import benchmark


def test_matmul_peak_is_measured():
  peak = benchmark.matmul_peak_gflops(256, repeats=3)
  assert 0.1 < peak < 1e6


def test_every_strategy_times_the_same_kl():
  rows = benchmark.benchmark_model(
      "demo_cnn", 28, 6, [2], strategies={"map", "loop", "map_requant",
                                          "map_bf16", "vmap"},
      peak_gflops=100.0, num_images=8)
  by_strategy = {row["strategy"]: row for row in rows}
  assert set(by_strategy) == {"map", "loop", "map_requant", "map_bf16",
                              "vmap_2"}
  for row in rows:
    assert row["configs_per_second"] > 0
    assert row["gflops_per_config"] == rows[0]["gflops_per_config"]
    np.testing.assert_allclose(
        row["achieved_gflops"],
        row["configs_per_second"] * row["gflops_per_config"], rtol=1e-9)
    np.testing.assert_allclose(row["fraction_of_matmul_peak"],
                               row["achieved_gflops"] / 100.0, rtol=1e-9)
  # demo_cnn's six 3x3 SAME convolutions and three dense layers on 8 images.
  # XLA counts the taps that fall inside the image: (3s - 2)^2 per input and
  # output channel pair on an s x s map, where a dense count would say 9 s^2.
  taps = lambda side: (3 * side - 2) ** 2
  matmul_flops = 2 * 8 * (taps(28) * (16 + 16 * 16) + taps(14) * (16 * 32
                                                                  + 32 * 32)
                          + taps(7) * (32 * 64 + 64 * 64)
                          + 576 * 128 + 128 * 64 + 64 * 10)
  # Above it: bias, ReLU, pooling, the quantizers and the KL.
  assert (matmul_flops <= rows[0]["gflops_per_config"] * 1e9
          < 1.1 * matmul_flops)
  # Tables and re-quantizing give the same numbers; other programs agree
  # within float tolerance; bfloat16 is close, and its error is reported.
  assert by_strategy["map_requant"]["kl_max_abs_diff"] == 0.0
  assert by_strategy["loop"]["kl_max_rel_diff"] < 1e-2
  assert by_strategy["vmap_2"]["kl_max_rel_diff"] < 1e-2
  assert 0 < by_strategy["map_bf16"]["kl_max_abs_diff"]
  assert by_strategy["map_bf16"]["kl_max_rel_diff"] < 0.3
  assert by_strategy["map"]["program_mb"] > 0


def test_the_entry_point_prints_a_table_and_writes_json(tmp_path):
  output = tmp_path / "bench.json"
  completed = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", "--models=demo_cnn",
       "--num_configs=4", "--num_images=8", "--strategies=map,vmap",
       "--vmap_widths=2", "--cpu_devices=2", f"--output={output}"],
      capture_output=True, text=True, timeout=300, check=True)
  assert "configs/s" in completed.stdout and "vmap_2" in completed.stdout
  result = json.loads(output.read_text())
  assert result["machine"]["devices"] == 2  # --cpu_devices took effect
  assert result["machine"]["matmul_peak_gflops"] > 0
  assert [row["strategy"] for row in result["rows"]] == ["map", "vmap_2"]
  assert result["rows"][1]["configs"] == 4  # 2 steps x 2 wide x 2 devices, capped at 4


def test_sampler_timing_runs_the_whole_job_at_the_picked_width():
  result = benchmark.sampler_seconds("demo_cnn", 28, 40, num_images=8)
  assert result["num_samples"] == 40 and result["seconds"] > 0
  speeds = {t["width"]: t["configs_per_second"]
            for t in result["width_timings"]}
  assert result["vmap_width"] == max(speeds, key=speeds.get)


@pytest.mark.parametrize("flag,message", [
    ("--strategies=map,warp", "unknown strategies ['warp']: choose from loop"),
    ("--models=resnet51", "unknown model 'resnet51'"),
    ("--vmap_widths=2,x", "give positive integers, e.g. --vmap_widths=2,4,8"),
])
def test_bad_flags_stop_before_any_work(flag, message, tmp_path):
  completed = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", flag,
       f"--output={tmp_path / 'bench.json'}"],
      capture_output=True, text=True, timeout=120)
  assert completed.returncode != 0
  assert message in completed.stderr
  assert not (tmp_path / "bench.json").exists()
