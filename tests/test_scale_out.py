"""Sampling scaled out: many devices, many processes, and a SIGKILL mid-run."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).parents[1]
WORKER = ROOT / "tests" / "sampling_worker.py"


def run_worker(*args, devices=1, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env, cwd=ROOT)


def result_of(process, timeout=300):
  out, err = process.communicate(timeout=timeout)
  assert process.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])


def free_port():
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@pytest.fixture(scope="module")
def single_device():
  return result_of(run_worker(5, devices=1))


def test_eight_devices_give_the_same_samples_and_kl(single_device):
  # Chunk 5 becomes 8 on 8 devices: other chunking, other padding, same answer.
  eight = result_of(run_worker(5, devices=8))
  assert single_device["devices"] == 1 and eight["devices"] == 8
  assert eight["bits"] == single_device["bits"]
  np.testing.assert_allclose(eight["kl"], single_device["kl"], rtol=1e-6)
  other_chunk = result_of(run_worker(13, devices=8))
  np.testing.assert_allclose(other_chunk["kl"], single_device["kl"],
                             rtol=1e-6)


def test_two_processes_give_the_same_samples_and_kl(single_device):
  port = free_port()
  workers = [run_worker(4, port, 2, index, devices=2) for index in range(2)]
  results = [result_of(worker) for worker in workers]
  for index, result in enumerate(results):
    assert result["process"] == index and result["devices"] == 4
    assert result["bits"] == single_device["bits"]
    np.testing.assert_allclose(result["kl"], single_device["kl"], rtol=1e-6)


def test_a_run_killed_mid_sampling_resumes_to_the_uninterrupted_result(
    tmp_path, demo_data_dir):
  import shutil  # pylint: disable=g-import-not-at-top
  from mpq_jax import pipeline  # pylint: disable=g-import-not-at-top
  settings = dict(model="demo_cnn", data_dir=demo_data_dir, num_samples=600,
                  calib_size=8, chunk_size=6, train_epochs=1, seed=0)
  straight = tmp_path / "straight"
  pipeline.run(pipeline.RunConfig(workdir=str(straight), **settings),
               ["model", "bit_range"])
  killed = tmp_path / "killed"
  shutil.copytree(straight, killed)
  command = [sys.executable, "-m", "experiments.main", "--stages=sampling",
             f"--workdir={killed}", f"--data_dir={demo_data_dir}",
             "--num_samples=600", "--calib_size=8", "--chunk_size=6",
             "--train_epochs=1"]
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  chunks = killed / "samples"
  deadline = time.time() + 240
  while len(list(chunks.glob("chunk_*.npz"))) < 5:
    assert process.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline, "no chunk was written in time"
    time.sleep(0.05)
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  kept = {path.name: path.stat().st_mtime_ns
          for path in chunks.glob("chunk_*.npz")}
  assert 5 <= len(kept) < 100, "the kill came after the last chunk"
  resumed = pipeline.Run(pipeline.RunConfig(workdir=str(killed), **settings)
                         ).run(["sampling"])
  pipeline.Run(pipeline.RunConfig(workdir=str(straight), **settings)
               ).run(["sampling"])
  assert resumed["num_samples"] == 600
  assert len(list(chunks.glob("chunk_*.npz"))) == 100
  # Nothing finished before the kill was computed again.
  assert all((chunks / name).stat().st_mtime_ns == mtime
             for name, mtime in kept.items())
  with np.load(killed / "samples.npz") as got, \
      np.load(straight / "samples.npz") as want:
    np.testing.assert_array_equal(got["bits"], want["bits"])
    np.testing.assert_allclose(got["kl"], want["kl"], rtol=1e-6)


def test_two_processes_run_the_pipeline_like_one(tmp_path, demo_data_dir):
  from mpq_jax import pipeline  # pylint: disable=g-import-not-at-top
  flags = ["--stages=model,bit_range,sampling,allocator,sweep",
           f"--data_dir={demo_data_dir}", "--num_samples=40",
           "--calib_size=8", "--chunk_size=8", "--train_epochs=1",
           "--num_targets=5"]
  single = tmp_path / "single"
  pipeline.run(pipeline.RunConfig(
      workdir=str(single), data_dir=demo_data_dir, num_samples=40,
      calib_size=8, chunk_size=8, train_epochs=1, num_targets=5),
               ["model", "bit_range", "sampling", "allocator", "sweep"])
  shared = tmp_path / "shared"
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  processes = [subprocess.Popen(
      [sys.executable, "-m", "experiments.main", f"--workdir={shared}",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={index}", *flags],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for index in range(2)]
  for process in processes:
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
  with np.load(shared / "samples.npz") as got, \
      np.load(single / "samples.npz") as want:
    np.testing.assert_array_equal(got["bits"], want["bits"])
    np.testing.assert_allclose(got["kl"], want["kl"], rtol=1e-6)
  got = json.loads((shared / "sweep.json").read_text())
  want = json.loads((single / "sweep.json").read_text())
  assert [a["bits"] for a in got["allocations"]] == [
      a["bits"] for a in want["allocations"]]
  assert [a["top1"] for a in got["allocations"]] == [
      a["top1"] for a in want["allocations"]]
  # The vmap width was measured once for all four devices of both
  # processes, on process 0's timings.
  record = json.loads((shared / "vmap_width.json").read_text())
  assert record["key"]["devices"] == 4 and record["width"] >= 1
  # One writer: one set of chunk files, no temporaries left behind.
  assert len(list((shared / "samples").glob("chunk_*.npz"))) == 5
  assert not list((shared / "samples").glob(".*"))


def test_split_host_cpu_sets_the_flag_once_and_keeps_the_users(monkeypatch):
  from mpq_jax import distributed  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  assert distributed.split_host_cpu(4) == 4
  assert os.environ["XLA_FLAGS"].split() == [
      "--xla_cpu_enable_fast_math=false",
      "--xla_force_host_platform_device_count=4"]
  # A count already there (the user's, or an earlier call) is kept.
  assert distributed.split_host_cpu(2) == 4
  assert os.environ["XLA_FLAGS"].count("device_count") == 1
  monkeypatch.setenv("XLA_FLAGS", "")
  assert distributed.split_host_cpu(1) == 1
  assert os.environ["XLA_FLAGS"] == ""
