"""report.json, report.md and the PNG figures of a finished run."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from mpq_jax import store

MEGABYTE = 1e6


def _save(figure, path: pathlib.Path) -> str:
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)
  return path.name


def write_figures(workdir, report: dict, sample_sizes: np.ndarray,
                  sample_kl: np.ndarray) -> list[str]:
  """The paper-style figures; returns their file names."""
  workdir = pathlib.Path(workdir)
  mlp = [a for a in report["allocations"] if a["method"] == "mlp"]
  names = []

  figure, axis = plt.subplots(figsize=(6.4, 4.4))
  axis.scatter(sample_sizes / MEGABYTE, sample_kl, s=6, alpha=0.35,
               color="tab:gray", label=f"{len(sample_kl)} Monte Carlo samples")
  axis.scatter([a["bytes"] / MEGABYTE for a in mlp], [a["kl"] for a in mlp],
               s=28, color="tab:red", marker="D", label="MLP allocations")
  axis.scatter([u["bytes"] / MEGABYTE for u in report["uniform"]],
               [max(u["kl"], 1e-12) for u in report["uniform"]], s=36,
               color="tab:blue", marker="s", label="uniform bits")
  axis.set_yscale("log")
  axis.set_xlabel("model size (MB)")
  axis.set_ylabel("KL divergence (Omega)")
  axis.set_title(f"{report['model']}: KL against size")
  axis.legend()
  names.append(_save(figure, workdir / "kl_vs_size.png"))

  figure, axis = plt.subplots(figsize=(max(6.4, 0.35 * report["num_layers"]),
                                       4.0))
  positions = np.arange(report["num_layers"])
  queries = report["query_kl"]
  width = 0.8 / max(len(queries), 1)
  by_target = {a["target_kl"]: a for a in mlp}
  for index, target in enumerate(queries):
    allocation = by_target[min(by_target, key=lambda t: abs(t - target))]
    axis.bar(positions + (index - (len(queries) - 1) / 2) * width,
             allocation["bits"], width,
             label=f"target KL {target:.3g} (measured {allocation['kl']:.3g})")
  axis.set_xticks(positions, report["layer_names"], rotation=60, ha="right",
                  fontsize=7)
  axis.set_ylabel("bits")
  axis.set_ylim(0, report["bit_range"][1] + 1)
  axis.set_title(f"{report['model']}: bits per layer")
  axis.legend()
  names.append(_save(figure, workdir / "bits_per_layer.png"))

  figure, axis = plt.subplots(figsize=(6.4, 4.4))
  axis.scatter([a["bytes"] / MEGABYTE for a in mlp], [a["top1"] for a in mlp],
               color="tab:red", marker="D", label="MLP allocations")
  axis.plot([u["bytes"] / MEGABYTE for u in report["uniform"]],
            [u["top1"] for u in report["uniform"]], "s-", color="tab:blue",
            label="uniform bits")
  for u in report["uniform"]:
    axis.annotate(f"{u['bits']}b", (u["bytes"] / MEGABYTE, u["top1"]),
                  fontsize=7, xytext=(3, -9), textcoords="offset points")
  axis.axhline(report["fp_top1"], color="black", linewidth=0.8,
               label=f"full precision {report['fp_top1']:.2f}%")
  axis.axhline(report["fp_top1"] - report["tolerance_pp"], color="black",
               linestyle=":", linewidth=0.8, label="tolerance")
  floor = min(a["top1"] for a in mlp)
  axis.set_ylim(max(0.0, floor - 2.0), report["fp_top1"] + 1.0)
  axis.set_xlabel("model size (MB)")
  axis.set_ylabel("top-1 (%)")
  axis.set_title(f"{report['model']}: top-1 against size")
  axis.legend(fontsize=8)
  names.append(_save(figure, workdir / "top1_vs_size.png"))
  return names


METHOD_MARKERS = {"mlp": ("D", "tab:red"), "uniform": ("s", "tab:blue"),
                  "best_sampled": ("o", "tab:gray"), "greedy": ("^", "tab:green"),
                  "zeroq": ("v", "tab:purple"), "hawq": ("P", "tab:orange")}


def write_comparison_figure(workdir, report: dict) -> str | None:
  """Top-1 against size for every method at every budget."""
  comparisons = report.get("comparisons")
  if not comparisons:
    return None
  figure, axis = plt.subplots(figsize=(6.4, 4.4))
  methods = {}
  for comparison in comparisons:
    axis.axvline(comparison["budget_bytes"] / MEGABYTE, color="lightgray",
                 linewidth=0.8)
    for row in comparison["methods"]:
      methods.setdefault(row["method"], []).append(row)
  for method, rows in methods.items():
    marker, color = METHOD_MARKERS.get(method, ("x", "black"))
    axis.scatter([r["bytes"] / MEGABYTE for r in rows],
                 [r["top1"] for r in rows], marker=marker, color=color,
                 label=method, s=30, alpha=0.85)
  axis.axhline(report["fp_top1"], color="black", linewidth=0.8,
               label="full precision")
  values = [r["top1"] for rows in methods.values() for r in rows]
  # Show every point unless one collapsed far below the rest.
  axis.set_ylim(max(0.0, min(values) - 1.0, max(values) - 25.0),
                report["fp_top1"] + 1.0)
  axis.set_xlabel("model size (MB); gray lines: budgets")
  axis.set_ylabel("top-1 (%)")
  axis.set_title(f"{report['model']}: allocators under the same budgets")
  axis.legend(fontsize=8)
  return _save(figure, pathlib.Path(workdir) / "methods_top1_vs_size.png")


def _allocation_row(label: str, allocation: dict | None) -> str:
  if allocation is None:
    return f"| {label} | none within tolerance | | | | |"
  bits = allocation["bits"]
  bits_text = ",".join(str(b) for b in bits) if isinstance(bits, list) else (
      str(bits))
  return (f"| {label} | {bits_text} | {allocation['top1']:.2f} |"
          f" {allocation['kl']:.4g} | {allocation['compression']:.2f}x |"
          f" {allocation['bytes']:,} |")


def render_markdown(report: dict) -> str:
  """A human-readable summary of report.json."""
  lines = [
      f"# mpq_jax report: {report['model']}",
      "",
  ]
  if report.get("random_init"):
    lines += [
        "**RANDOM WEIGHTS AND SYNTHETIC IMAGES (--random_init): every"
        " accuracy, KL and allocation below is meaningless; only sizes and"
        " timings mean something.** Top-1 here is agreement with the random"
        " full-precision model.",
        "",
    ]
  lines += [
      f"Full-precision top-1: {report['fp_top1']:.2f}% on"
      f" {report['eval_images']} evaluation images;"
      f" {report['num_layers']} quantized layers;"
      f" {report['fp_bytes']:,} bytes in float32.",
      f"Bit range {report['bit_range']} ({report['bit_range_rule']});"
      f" {report['num_samples']} Monte Carlo samples on"
      f" {report['calib_size']} calibration images; beta = {report['beta']};"
      f" activations {report['activation_bits'] or 'not'}-bit;"
      f" {'per-channel' if report['per_channel'] else 'per-tensor'} weights.",
      f"Spearman correlation of size and KL over the samples:"
      f" {report['kl_size_spearman']:.3f}.",
      f"Largest share of samples that beat an MLP allocation on both size and"
      f" KL: {report['max_dominated_fraction']:.3f}.",
      "",
      f"## Chosen (smallest within {report['tolerance_pp']} pp of full"
      " precision)",
      "",
      "| method | bits | top-1 % | KL | compression | bytes |",
      "| --- | --- | --- | --- | --- | --- |",
      _allocation_row("MLP", report["best"]),
      _allocation_row("uniform", report["best_uniform"]),
      "",
  ]
  exported = report.get("export")
  if exported and "file_bytes" in exported:
    lines += [
        f"Exported: `{exported['path']}`, {exported['file_bytes']:,} bytes"
        f" ({exported['size_ratio']:.3f} x the predicted"
        f" {exported['predicted_bytes']:,}); reloaded top-1"
        f" {exported['reloaded_top1']:.2f}%, KL {exported['reloaded_kl']:.4g}.",
        "",
    ]
  elif exported:
    lines += [f"Export skipped: {exported['skipped']}", ""]
  lines += [
      "## Uniform bit-widths",
      "",
      "| bits | top-1 % | KL | compression | bytes |",
      "| --- | --- | --- | --- | --- |",
  ]
  lines += [f"| {u['bits']} | {u['top1']:.2f} | {u['kl']:.4g} |"
            f" {u['compression']:.2f}x | {u['bytes']:,} |"
            for u in report["uniform"]]
  if report.get("comparisons"):
    lines += ["", "## Allocators under the same budgets", "",
              "Search cost counts configurations measured and forward /"
              " backward passes per image, including the sampling the MLP and"
              " best_sampled reuse.",
              "",
              "| budget | method | bits | top-1 % | KL | bytes |"
              " configurations | fwd / bwd passes | seconds |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for comparison in report["comparisons"]:
      for row in comparison["methods"]:
        cost = row["search_cost"]
        lines.append(
            f"| {comparison['budget']} ({comparison['budget_bytes']:,} B) |"
            f" {row['method']} | {','.join(map(str, row['bits']))} |"
            f" {row['top1']:.2f} | {row['kl']:.4g} | {row['bytes']:,} |"
            f" {cost['configurations']:,} | {cost['forward_passes']:,} /"
            f" {cost['backward_passes']:,} | {cost['seconds']:.1f} |")
      for failure in comparison.get("failures", []):
        lines.append(f"| {comparison['budget']} | {failure['method']} |"
                     f" no answer: {failure['error']} | | | | | | |")
    if report.get("mlp_gap_pp") is not None:
      lines += ["", f"At the chosen MLP allocation's size, the best method's"
                    f" top-1 exceeds the MLP's by {report['mlp_gap_pp']:.2f}"
                    " pp (0 or less: the MLP is best)."]
  lines += ["", "## MLP allocations (KL sweep)", "",
            "| target KL | bits | top-1 % | KL | compression | dominated |",
            "| --- | --- | --- | --- | --- | --- |"]
  lines += [f"| {a['target_kl']:.4g} | {','.join(map(str, a['bits']))} |"
            f" {a['top1']:.2f} | {a['kl']:.4g} | {a['compression']:.2f}x |"
            f" {a['dominated_fraction']:.3f} |"
            for a in report["allocations"] if a["method"] == "mlp"]
  lines += ["", "## Layers", "", "| layer | parameters |", "| --- | --- |"]
  lines += [f"| {name} | {count:,} |"
            for name, count in zip(report["layer_names"],
                                   report["layer_params"])]
  lines += ["", "## Timings (seconds)", "", "| stage | seconds |",
            "| --- | --- |"]
  lines += [f"| {stage} | {seconds} |"
            for stage, seconds in report["timings"].items()]
  lines += ["", "Figures: " + ", ".join(f"![{n}]({n})"
                                        for n in report.get("figures", [])),
            ""]
  return "\n".join(lines)


def write_report_files(workdir, report: dict) -> None:
  """report.json and report.md in `workdir`."""
  workdir = pathlib.Path(workdir)
  store.write_json(workdir / "report.json", report)
  (workdir / "report.md").write_text(render_markdown(report))
