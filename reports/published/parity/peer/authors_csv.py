"""The authors' finished runs (run_authors.py) as peer rows for `mfcbench parity`: the last epoch's test
accuracy of every facet x label pair (majority mapping, their cluster_acc_and_conf_mat).
    python authors_csv.py OUT.csv [RUNS_DIR]"""
import csv, json, sys
from pathlib import Path

LABELS = {"shapes-config1": ["shape", "floor_hue"], "fashion-mnist": ["label"]}
DATASET = {"shapes-config1": "shapes-config1-authors-split", "fashion-mnist": "fashion-mnist"}
BUDGET = {"shapes-config1": "25+75 epochs, fade-in 500", "fashion-mnist": "15+15 epochs, fade-in 1500"}
ARCH = {"fc_vlae": "ladder-mlp", "conv_vlae": "ladder-conv"}
out = csv.writer(open(sys.argv[1], "w", newline=""))
out.writerow(["code", "variant", "architecture", "dataset", "budget", "seed", "facet", "factor", "acc", "commit",
              "machine", "wall_s", "last_epoch", "clusters_present"])
for run in sorted(Path(sys.argv[2] if len(sys.argv) > 2 else "runs").iterdir()):
    if not (run / "done").exists():
        continue
    meta = json.loads((run / "meta.json").read_text())
    rows = [json.loads(l) for l in open(run / "log.jsonl") if "test_metric/acc_facet_0_label_0" in l]
    last = rows[-1]
    labels = LABELS[meta["dataset"]]
    for j in range(2):
        for l, factor in enumerate(labels):
            key = f"test_metric/acc_facet_{j}_label_{l}" if len(labels) > 1 else f"test_metric/acc_facet_{j}_label_0"
            out.writerow(["authors", "FabianFalck/mfcvae", ARCH[meta["model"]], DATASET[meta["dataset"]],
                          BUDGET[meta["dataset"]], meta["seed"], j + 1, factor, round(last[key], 6),
                          "9f1eca4", meta["host"], meta["wall_s"], int(last["step"]),
                          int(last[f"test_metric/clusters_present_{j}"])])
