"""End-to-end tests of mpq_jax/pipeline.py and experiments/main.py on the demo, tiny S."""

import dataclasses
import json
import os

import numpy as np
import pytest

from mpq_jax import pipeline
from mpq_jax import sampling

REPORT_KEYS = {
    "model", "num_layers", "layer_names", "layer_params", "bit_range",
    "num_samples", "calib_size", "fp_top1", "kl_size_spearman", "uniform",
    "allocations", "best", "timings",
}
ALLOCATION_KEYS = {"method", "target_kl", "bits", "kl", "top1", "compression",
                   "weight_compression", "bytes"}


def tiny_config(workdir, data_dir, **overrides):
  settings = dict(model="demo_cnn", workdir=str(workdir), data_dir=data_dir,
                  num_samples=48, calib_size=16, chunk_size=16, num_targets=6,
                  train_epochs=1, seed=0)
  settings.update(overrides)
  return pipeline.RunConfig(**settings)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, demo_data_dir):
  workdir = tmp_path_factory.mktemp("run")
  config = tiny_config(workdir, demo_data_dir)
  report = pipeline.run(config)
  return config, report


def test_report_has_every_key_with_consistent_numbers(finished_run):
  config, report = finished_run
  assert REPORT_KEYS <= set(report)
  on_disk = json.loads((
      __import__("pathlib").Path(config.workdir) / "report.json").read_text())
  assert on_disk["fp_top1"] == report["fp_top1"]
  assert report["model"] == "demo_cnn" and report["num_layers"] == 9
  assert report["layer_names"][0] == "convs/0"
  assert report["layer_names"][-1] == "head"
  # 3*3*(1*16 + 16*16 + 16*32 + 32*32 + 32*64 + 64*64) + 576*128 + 128*64 + 64*10
  assert sum(report["layer_params"]) == 154_128
  assert report["num_samples"] == 48 and report["calib_size"] == 16
  # One epoch on 4,000 digits already classifies most of them.
  assert report["fp_top1"] > 80.0
  low, high = report["bit_range"]
  assert 2 <= low < high <= 8
  assert [u["bits"] for u in report["uniform"]] == list(range(2, 9))
  # More uniform bits never make the divergence worse by much; 8 bits is
  # far closer to full precision than 2 bits.
  assert report["uniform"][-1]["kl"] < 0.1 * report["uniform"][0]["kl"]
  assert -1.0 <= report["kl_size_spearman"] <= 1.0
  assert set(report["timings"]) == set(pipeline.STAGES)
  for allocation in report["allocations"]:
    assert ALLOCATION_KEYS <= set(allocation)
    assert all(low <= b <= high for b in allocation["bits"])
    assert allocation["compression"] > 1.0
    assert allocation["weight_compression"] >= 32 / high - 1e-9
  best = report["best"]
  if best is not None:
    assert best["top1_drop_pp"] <= config.tolerance_pp + 1e-9
    assert best["bytes"] == min(
        a["bytes"] for a in report["allocations"]
        if report["fp_top1"] - a["top1"] <= config.tolerance_pp)


def test_report_files_and_figures_are_written(finished_run):
  config, report = finished_run
  workdir = __import__("pathlib").Path(config.workdir)
  markdown = (workdir / "report.md").read_text()
  assert "# mpq_jax report: demo_cnn" in markdown
  assert f"{report['fp_top1']:.2f}%" in markdown
  for name in ("kl_vs_size.png", "bits_per_layer.png", "top1_vs_size.png"):
    data = (workdir / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_rerun_reuses_every_stage(finished_run):
  config, report = finished_run
  workdir = __import__("pathlib").Path(config.workdir)
  checkpoint_time = os.path.getmtime(workdir / "model_checkpoint")
  chunk_times = {p.name: os.path.getmtime(p)
                 for p in (workdir / "samples").glob("chunk_*.npz")}
  again = pipeline.run(config)
  assert os.path.getmtime(workdir / "model_checkpoint") == checkpoint_time
  assert chunk_times == {p.name: os.path.getmtime(p)
                         for p in (workdir / "samples").glob("chunk_*.npz")}
  assert again["allocations"] == report["allocations"]
  # Reused stages keep the timing of the run that computed them; only the
  # report (cheap, always redrawn) is timed again.
  for stage in pipeline.STAGES[:-1]:
    assert again["timings"][stage] == report["timings"][stage]


def test_the_vmap_width_is_measured_once_and_the_fastest_kept(finished_run,
                                                            monkeypatch):
  config, _ = finished_run
  workdir = __import__("pathlib").Path(config.workdir)
  record = json.loads((workdir / "vmap_width.json").read_text())
  timings = record["timings"]
  speeds = {t["width"]: t["configs_per_second"] for t in timings}
  assert all(speed > 0 for speed in speeds.values())
  assert record["width"] == max(speeds, key=speeds.get)
  assert set(speeds) <= set(sampling.width_candidates(record["widest_fitting"]))
  assert record["key"]["platform"] == "cpu"
  # A later run with the same key reads the choice instead of measuring.
  def refuse(*args, **kwargs):
    raise AssertionError("measured again")
  monkeypatch.setattr(sampling, "pick_vmap_width", refuse)
  assert pipeline.Run(config).kl_of.vmap_width == record["width"]


def test_lost_and_corrupt_chunks_are_redone_identically(finished_run):
  config, _ = finished_run
  workdir = __import__("pathlib").Path(config.workdir)
  with np.load(workdir / "samples.npz") as samples:
    bits, kl = samples["bits"], samples["kl"]
  chunks = sorted((workdir / "samples").glob("chunk_*.npz"))
  assert len(chunks) == 3
  chunks[0].unlink()
  chunks[1].write_bytes(b"not a chunk")
  pipeline.Run(config).run(["sampling"])
  with np.load(workdir / "samples.npz") as samples:
    np.testing.assert_array_equal(samples["bits"], bits)
    np.testing.assert_allclose(samples["kl"], kl, rtol=1e-6)


def test_more_samples_extend_the_store(finished_run, tmp_path):
  config, _ = finished_run
  # Same settings, more samples: the first 48 are reused, not redrawn.
  bigger = dataclasses.replace(config, num_samples=64)
  record = pipeline.Run(bigger).run(["sampling"])
  assert record["num_samples"] == 64
  expected = sampling.sample_bit_configs(0, 0, 64, 9, record["bit_range"],
                                         config.sampler)
  with np.load(__import__("pathlib").Path(config.workdir) / "samples.npz") as s:
    np.testing.assert_array_equal(s["bits"], expected)


def test_changed_settings_are_refused_not_mixed(finished_run):
  config, _ = finished_run
  with pytest.raises(ValueError, match="differing: seed"):
    pipeline.Run(dataclasses.replace(config, seed=1)).run(["sampling"])


def test_workdir_of_another_model_is_refused(tmp_path, demo_data_dir):
  (tmp_path / "run.json").write_text(json.dumps({"model": "resnet50"}))
  with pytest.raises(ValueError, match="holds a run of model 'resnet50'"):
    pipeline.Run(tiny_config(tmp_path, demo_data_dir))


def test_unknown_model_lists_the_known_ones(tmp_path, demo_data_dir):
  with pytest.raises(ValueError, match="unknown model 'resnet51'.*demo_cnn"):
    pipeline.Run(tiny_config(tmp_path, demo_data_dir, model="resnet51"))


def test_empty_calibration_set_is_refused(tmp_path, demo_data_dir):
  with pytest.raises(ValueError, match="calibration set is empty"):
    pipeline.Run(tiny_config(tmp_path, demo_data_dir, calib_size=0))


def test_bad_bit_range_and_stage_names(tmp_path, demo_data_dir):
  with pytest.raises(ValueError, match="at least 2 bits"):
    pipeline.Run(tiny_config(tmp_path, demo_data_dir, bit_range=(1, 4)))
  with pytest.raises(ValueError, match="unknown stage"):
    pipeline.run(tiny_config(tmp_path, demo_data_dir), ["samplng"])


def test_a_stage_without_its_inputs_names_the_missing_stage(tmp_path,
                                                             demo_data_dir):
  with pytest.raises(FileNotFoundError, match="run the 'model' stage first"):
    pipeline.run(tiny_config(tmp_path, demo_data_dir), ["bit_range"])


def test_main_flags_build_the_config():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from experiments import main  # pylint: disable=g-import-not-at-top
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main", "--bit_range=2,6", "--num_samples=100",
               "--sampler=uniform", "--query_kl=0.1,1.5"])
  try:
    config = main.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()
  assert config.model == "demo_cnn" and config.workdir == "runs/demo_cnn"
  assert config.bit_range == (2, 6) and config.num_samples == 100
  assert config.sampler == "uniform" and config.query_kl == (0.1, 1.5)
  assert config.calib_size == 50 and config.beta == 1.0


def test_a_changed_tolerance_reruns_the_bit_range_rule(finished_run, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  config, report = finished_run
  copy = tmp_path / "copy"
  shutil.copytree(config.workdir, copy)
  looser = dataclasses.replace(config, workdir=str(copy), tolerance_pp=100.0)
  record = pipeline.Run(looser).run(["bit_range"])
  # Any width is "within 100 pp", so b_max drops to the smallest candidate's
  # neighbour; the uniform sweep itself is measured again, identically.
  assert record["settings"]["tolerance_pp"] == 100.0
  assert record["bit_range"] == [2, 3]
  assert [u["top1"] for u in record["uniform"]] == [
      u["top1"] for u in report["uniform"]]


def test_the_absl_entry_point_reruns_a_stage(finished_run):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  config, report = finished_run
  result = subprocess.run(
      [sys.executable, "-m", "experiments.main", "--stages=report",
       f"--workdir={config.workdir}", f"--data_dir={config.data_dir}",
       "--num_samples=48", "--calib_size=16", "--chunk_size=16",
       "--num_targets=6"],
      capture_output=True, text=True, timeout=300, check=False,
      cwd=__import__("pathlib").Path(__file__).parents[1])
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"wrote {config.workdir}/report.md" in result.stdout
  again = json.loads((__import__("pathlib").Path(config.workdir)
                      / "report.json").read_text())
  assert again["best"] == report["best"]


def test_the_entry_point_reports_bad_input_without_a_traceback(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  result = subprocess.run(
      [sys.executable, "-m", "experiments.main", "--model=resnet51",
       f"--workdir={tmp_path}"],
      capture_output=True, text=True, timeout=300, check=False,
      cwd=__import__("pathlib").Path(__file__).parents[1])
  assert result.returncode == 1
  assert "unknown model 'resnet51'" in result.stderr
  assert "Traceback" not in result.stderr


def test_export_stage_writes_a_file_that_reproduces_the_report(finished_run,
                                                               tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  config, _ = finished_run
  copy = tmp_path / "copy"
  shutil.copytree(config.workdir, copy)
  # A tolerance every allocation meets, so that there is a best to export.
  looser = dataclasses.replace(config, workdir=str(copy), tolerance_pp=100.0)
  report = pipeline.run(looser, ["sweep", "export", "report"])
  exported = report["export"]
  best = report["best"]
  assert exported["bits"] == best["bits"]
  assert (copy / exported["path"]).exists()
  assert exported["reloaded_top1"] == best["top1"]
  np.testing.assert_allclose(exported["reloaded_kl"], best["kl"], rtol=1e-4)
  assert 1.0 <= exported["size_ratio"] <= 1.02
  assert "Exported:" in (copy / "report.md").read_text()


def test_compare_stage_puts_every_method_under_every_budget(finished_run):
  config, report = finished_run
  comparisons = report["comparisons"]
  assert comparisons, "the default run compares at least one budget"
  for comparison in comparisons:
    answered = {row["method"] for row in comparison["methods"]}
    failed = {row["method"] for row in comparison["failures"]}
    assert answered | failed == set(pipeline.METHODS)
    for row in comparison["methods"]:
      assert row["bytes"] <= comparison["budget_bytes"]
      assert row["within_budget"]
      low, high = report["bit_range"]
      assert all(low <= b <= high for b in row["bits"])
    for row in comparison["failures"]:
      assert row["method"] == "best_sampled" and "none of the" in row["error"]
  costs = {row["method"]: row["search_cost"]
           for row in comparisons[0]["methods"]}
  assert costs["uniform"]["configurations"] == 0
  assert costs["zeroq"]["configurations"] == 9 * (report["bit_range"][1]
                                                 - report["bit_range"][0] + 1)
  assert costs["hawq"]["backward_passes"] > 0
  assert costs["mlp"]["configurations"] >= config.num_samples
  assert "methods_top1_vs_size.png" in report["figures"]


def test_budget_flags_and_unknown_methods(finished_run, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  config, report = finished_run
  copy = tmp_path / "copy"
  shutil.copytree(config.workdir, copy)
  smallest = min(u["bytes"] for u in report["uniform"]
                 if u["bits"] == report["bit_range"][0])
  budgeted = dataclasses.replace(
      config, workdir=str(copy), budget_mb=(smallest * 1.5 / 1e6,),
      compression=(report["fp_bytes"] / (smallest * 1.2),),
      methods=("mlp", "uniform", "zeroq"))
  record = pipeline.Run(budgeted).run(["compare"])
  assert [c["budget_bytes"] for c in record["comparisons"]] == [
      int(smallest * 1.5), int(report["fp_bytes"] / (report["fp_bytes"]
                                                      / (smallest * 1.2)))]
  for comparison in record["comparisons"]:
    assert [r["method"] for r in comparison["methods"]] == [
        "mlp", "uniform", "zeroq"]
  impossible = dataclasses.replace(config, workdir=str(copy),
                                   budget_mb=(smallest / 2e6,))
  with pytest.raises(ValueError, match=f"smallest model .* is {smallest:,}"):
    pipeline.Run(impossible).run(["compare"])
  with pytest.raises(ValueError, match="unknown method"):
    pipeline.Run(dataclasses.replace(config, workdir=str(copy),
                                     methods=("haq",))).run(["compare"])


def test_entry_point_flag_errors_name_the_fix():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from experiments import main  # pylint: disable=g-import-not-at-top
  from mpq_jax import distributed  # pylint: disable=g-import-not-at-top
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["main", "--budget_mb=0.1,small"])
  try:
    with pytest.raises(ValueError, match="--budget_mb takes numbers"):
      main.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()
  with pytest.raises(ValueError, match="needs --num_processes and"):
    distributed.initialize("127.0.0.1:1234", None, None)
