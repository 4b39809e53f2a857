"""The pruning report: Markdown and JSON, and the plots (accuracy and latency against lambda; accuracy
against latency), Lambda marked, part 2's curve over part 1's points."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

__all__ = ["compare", "markdown", "plot_lambda", "plot_front", "write_report"]


def compare(report: Dict) -> List[Dict]:
    """At each part-1 lambda: part 2's network against part 1's (and the exact optimum when enumerated)."""
    by_lam = {round(r["lambda"], 12): r for r in report["part2"]["rows"]}
    exact = {round(r["lambda"], 12): r for r in report.get("exact", [])}
    rows = []
    for p1 in report["part1"]:
        k = round(p1["lambda"], 12)
        p2 = by_lam.get(k)
        if p2 is None:
            continue
        ex = exact.get(k)
        rows.append({"lambda": p1["lambda"], "part1_gamma": p1["gamma"], "part2_gamma": p2["gamma"],
                     "exact_gamma": ex["gamma"] if ex else None, "same": p1["gamma"] == p2["gamma"],
                     "d_test_acc": p2["test_acc"] - p1["test_acc"], "d_ms": p2["measured_ms"] - p1["measured_ms"],
                     "part1_objective": p1["objective"], "part2_objective": p2["objective"],
                     "exact_objective": ex["objective"] if ex else None})
    return rows


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def markdown(report: Dict) -> str:
    lam, split, full = report["lambda"], report["split"]["text"], report["full"]
    cfg, t = report["config"], report["timing"]
    Lb = lam["Lambda_best"]
    out = ["# Pruning a pretrained ResNet with a lambda-conditioned hypernetwork (seed 000)", "",
           f"Data: {split}. Accuracies are on the test split unless marked val; gammas are optimised on the "
           f"validation split.", "",
           f"Model: {cfg['model']} ResNet {report['model']['widths']} x {report['model']['blocks']} blocks, "
           f"pretrained {report['pretrain']['epochs']} epochs "
           f"({'cached' if report['pretrain']['cached'] else 'trained'}"
           f" now); all edges on: test {_pct(full['test_acc'])}, val loss {full['val_loss']:.4f}, "
           f"{full['measured_ms']:.2f} ms per batch of {t['batch']} ({t['threads']} thread, {t['clock']} clock).", "",
           "## Prunable edges", "",
           "| edge | block | shape | T (ms) | T / whole net |", "|---|---|---|---|---|"]
    for i, e in enumerate(report["edges"]):
        out.append(f"| {i} | {e['name']} | {'x'.join(map(str, e['in_shape'][1:]))} | {e['time_ms']:.3f} | "
                   f"{e['t_norm']:.3f} |")
    for r in report["rejected"]:
        out.append(f"| - | {r['name']} | {'x'.join(map(str, r['in_shape'][1:]))} -> "
                   f"{'x'.join(map(str, r['out_shape'][1:]))} | not prunable: {r['reason']} | |")
    out += _lambda_lines(report)
    out += ["## Part 1: gamma optimised for each fixed lambda", "",
            "| lambda | lambda/Lambda_best | gamma | val loss | test acc | ms | speed-up | objective | exact optimum |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in report["part1"]:
        out.append(f"| {r['lambda']:.4g} | {r['lambda'] / Lb:.2f} | {r['gamma']} | {r['val_loss']:.4f} | "
                   f"{_pct(r['test_acc'])} | {r['measured_ms']:.2f} | {full['measured_ms'] / r['measured_ms']:.2f}x | "
                   f"{r['objective']:.4f} | {r['exact_gamma'] or '-'} |")
    p2 = report["part2"]
    out += ["", "## Part 2: one hypernetwork for every lambda (Algorithm 1)", "",
            f"Warm-up {p2['warmup_steps']} steps (hypernet(0) val accuracy {_pct(p2['warmup_acc0'])}, target "
            f"{_pct(p2['warmup_target'])}: midway between chance {_pct(report['chance_acc'])} and all-on), then "
            f"{p2['steps']} steps with lambda ~ U[{p2['train_range'][0]:.3g}, {p2['train_range'][1]:.4g}] per sample.",
            "", "| lambda | lambda/Lambda_best | gamma | val loss | test acc | ms | objective |",
            "|---|---|---|---|---|---|---|"]
    for r in p2["rows"]:
        out.append(f"| {r['lambda']:.4g} | {r['lambda'] / Lb:.2f} | {r['gamma']} | {r['val_loss']:.4f} | "
                   f"{_pct(r['test_acc'])} | {r['measured_ms']:.2f} | {r['objective']:.4f} |")
    cmp_rows = compare(report)
    out += ["", "## Part 2 against part 1", "",
            f"Compute: part 1 {report['compute']['part1_gamma_steps']} gamma steps over {len(report['part1'])} "
            f"runs; part 2 {report['compute']['part2_steps']} steps in one run.", "",
            "| lambda | part 1 gamma | part 2 gamma | exact | d test acc (2-1) | d ms (2-1) | objective 1 | "
            "objective 2 | exact |", "|---|---|---|---|---|---|---|---|---|"]
    for c in cmp_rows:
        ex = "-" if c["exact_objective"] is None else f"{c['exact_objective']:.4f}"
        out.append(f"| {c['lambda']:.4g} | {c['part1_gamma']} | {c['part2_gamma']} | {c['exact_gamma'] or '-'} | "
                   f"{100 * c['d_test_acc']:+.1f} pt | {c['d_ms']:+.2f} | {c['part1_objective']:.4f} | "
                   f"{c['part2_objective']:.4f} | {ex} |")
    same = sum(c["same"] for c in cmp_rows)
    out += ["", f"Same network at {same} of {len(cmp_rows)} lambdas. 'objective' is the deterministic "
            f"L_val(gamma) + lambda T^T gamma; 'exact' its minimum over every gamma when all were enumerated.", "",
            "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["timings"].items()), ""]
    return "\n".join(out)


def _lambda_lines(report: Dict) -> List[str]:
    lam, t, L = report["lambda"], report["timing"], report["lambda"]["Lambda"]
    return ["", f"Whole network: {t['full_ms']:.3f} ms. T is normalised by it, so lambda is in nats per "
            f"whole-network forward time.", "",
            "## Lambda (Theorem 1)", "",
            f"- L_inf (best constant prediction = label entropy on val): {lam['L_inf']:.4f} nats",
            f"- L_sup (worst val loss over the {sum(e['valid'] for e in lam['explored'])} explored gammas that beat "
            f"it; gamma {lam['gamma_sup']}): {lam['L_sup']:.4f}",
            f"- gammas explored: {len(lam['explored'])}; no better than a constant (excluded): "
            f"{len(lam['excluded_no_better_than_constant'])}",
            f"- T^T 1 = {lam['T_sum']:.4f}",
            f"- **Lambda = (L_inf - L_sup) / T^T 1 = {L:.4g}** "
            f"(= {L / t['full_ms']:.4g} nats/ms)",
            f"- Lambda_best (same proof with the best valid gamma {lam['gamma_min']}, loss {lam['L_min']:.4f}): "
            f"{lam['Lambda_best']:.4g}",
            (f"- The seed's Lambda is {L / lam['Lambda_best']:.2g} x Lambda_best: its L_sup is the valid gamma "
             f"whose loss is nearest L_inf, so it certifies almost nothing here; the plateau and the fall are read "
             f"against Lambda_best." if L < 0.2 * lam["Lambda_best"] else ""),
            f"- lambda range of the experiment: [0, {report['lambda_range'][1]:.4g}] (top: "
            f"{report.get('lambda_top', 'seed')}: 'seed' is {report['config']['top_factor']} x Lambda, 'best' "
            f"{report['config']['top_factor']} x Lambda_best)", ""]


def _mark_lambda(ax, report: Dict) -> None:
    top = report["lambda_range"][1]
    for key, label, ls in (("Lambda", "Lambda", "--"), ("Lambda_best", "Lambda_best", ":")):
        L = report["lambda"][key]
        if L <= 1.02 * top:
            ax.axvline(L, color="grey", ls=ls, lw=1)
            ax.text(L, ax.get_ylim()[1], " " + label, va="top", ha="left", fontsize=8, color="grey")


def plot_lambda(report: Dict, path: Path) -> Path:
    """Test accuracy and measured latency against lambda: part 1 points, part 2 line, exact optimum, Lambda."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    p1, p2, ex = report["part1"], report["part2"]["rows"], report.get("exact", [])
    for ax, key, label, scale in ((a1, "test_acc", "test accuracy (%)", 100), (a2, "measured_ms", "measured ms", 1)):
        if ex:
            ax.step([r["lambda"] for r in ex], [scale * r[key] for r in ex], where="mid", color="0.7",
                    label="exact optimum (enumerated)")
        ax.plot([r["lambda"] for r in p2], [scale * r[key] for r in p2], "-", color="C1", label="part 2: hypernetwork")
        ax.plot([r["lambda"] for r in p1], [scale * r[key] for r in p1], "o", color="C0", label="part 1: per lambda")
        ax.set_xlabel("lambda (nats per whole-network time)")
        ax.set_ylabel(label)
        _mark_lambda(ax, report)
    a1.axhline(100 * report["chance_acc"], color="C3", lw=0.8, ls=":", label="chance")
    a1.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{report['split']['text']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_front(report: Dict, path: Path) -> Path:
    """Test accuracy against measured latency, both parts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.8))
    p1, p2 = report["part1"], report["part2"]["rows"]
    ax.plot([r["measured_ms"] for r in p2], [100 * r["test_acc"] for r in p2], "s", color="C1", ms=8, alpha=0.5,
            label="part 2: hypernetwork")
    ax.plot([r["measured_ms"] for r in p1], [100 * r["test_acc"] for r in p1], "o", color="C0",
            label="part 1: per lambda")
    ax.set_xlabel(f"measured ms per batch of {report['timing']['batch']}")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    ax.set_title(report["split"]["text"], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: Dict, out_dir, plots: bool = True) -> Dict[str, Path]:
    """``prune_report.json``, ``prune_report.md`` and (with matplotlib) the two plots in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "prune_report.json", "markdown": out / "prune_report.md"}
    paths["json"].write_text(json.dumps({**report, "comparison": compare(report)}, indent=1))
    paths["markdown"].write_text(markdown(report))
    if plots:
        try:
            paths["lambda_plot"] = plot_lambda(report, out / "prune_lambda.png")
            paths["front_plot"] = plot_front(report, out / "prune_front.png")
        except ImportError:
            pass
    return paths
