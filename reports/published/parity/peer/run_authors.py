"""Run the authors' train.py (FabianFalck/mfcvae 9f1eca4) for one (dataset, ladder, seed) in its own
folder, as the parity study ran it (outside this repository, in the authors' own environment: see
../README.md). Patches, on copies: every facet x label test accuracy is logged (logging only); np.in1d ->
np.isin (numpy 2); the 3DShapes
80/20 split is seed 0's for every seed (np.random.RandomState(0).choice). Done runs (a `done` file) are skipped, so a queue can be rerun after a stop."""
import os, subprocess, sys, time, yaml, json, socket
from pathlib import Path

# A checkout of FabianFalck/mfcvae, the folder for run folders, the data folder (export_shapes.py's
# output, with Fashion-MNIST's four decompressed IDX files in Fast_MNIST/raw/), the Python to run
# train.py with, and PYTHONPATH entries for it (a wandb stand-in, boilr): set them in the environment.
CODE = Path(os.environ.get("AUTHORS_CODE", "mfcvae"))
RUNS = Path(os.environ.get("AUTHORS_RUNS", "runs"))
DATA = os.environ.get("AUTHORS_DATA", "data")
PY = os.environ.get("AUTHORS_PYTHON", sys.executable)
EXTRA_PATH = os.environ.get("AUTHORS_PYTHONPATH", "")


def prepare(tag, dataset, model, seed):
    d = RUNS / tag
    if (d / "done").exists():
        return None
    if d.exists():
        subprocess.run(["rm", "-rf", str(d)], check=True)   # no checkpoints: a stopped run starts again
    (d / "configs").mkdir(parents=True)
    for f in CODE.glob("*.py"):
        if f.name not in ("train.py", "datasets.py"):
            (d / f.name).symlink_to(f)
    train = (CODE / "train.py").read_text()
    anchor = "                log_dict = {'test_metric/loss': eval_loss}\n"
    assert anchor in train
    train = train.replace(anchor, anchor +
        "                for j in range(mfcvae.J_n_mixtures):\n"
        "                    for l in range(n_labels):\n"
        "                        log_dict['test_metric/acc_facet_%d_label_%d' % (j, l)] = eval_acc_j_l_list[j][l]\n")
    (d / "train.py").write_text(train)
    datasets = (CODE / "datasets.py").read_text().replace("np.in1d(", "np.isin(")
    split = "train_indices = np.random.choice(data.shape[0]"
    assert split in datasets
    # one train/test split for every seed (seed 0's), without touching the global RNG the model init draws from
    datasets = datasets.replace(split, "train_indices = np.random.RandomState(0).choice(data.shape[0]")
    (d / "datasets.py").write_text(datasets)
    (d / "data").symlink_to(Path(DATA).resolve())
    (d / "configs" / "wandb.yml").write_text((CODE / "configs" / "wandb.yml").read_text())
    if dataset == "shapes-config1":
        cfg = yaml.safe_load((CODE / "configs" / "3dshapes_1.yml").read_text())
        cfg["n_epochs_per_progressive_step"] = [26, 75]      # epoch 0 only evaluates: 25 + 75 training epochs
        cfg["n_batches_fade_in"] = 500
        cfg["do_fc_batch_norm"] = model == "conv_vlae"      # Table 5 has batch norm on the rungs, Table 4 none
    else:
        cfg = yaml.safe_load((CODE / "configs" / "mnist.yml").read_text())
        cfg["n_epochs_per_progressive_step"] = [16, 15]      # 15 + 15 training epochs
        cfg["n_batches_fade_in"] = 1500
    cfg.update(model_type=model, seed=seed, device="cpu", wandb_mode="disabled", save_model=True,
               dataset_on_gpu=False)
    for k in list(cfg):
        if k.startswith("do_vis"):
            cfg[k] = False
    (d / "configs" / "run.yml").write_text(yaml.safe_dump(cfg))
    return d


def run(tag, dataset, model, seed):
    d = prepare(tag, dataset, model, seed)
    if d is None:
        print(tag, "already done", flush=True)
        return
    env = dict(os.environ, PYTHONPATH=EXTRA_PATH, WANDB_STUB_LOG=str(d / "log.jsonl"),
               WANDB_STUB_DIR=str(d), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.time()
    with open(d / "stdout.txt", "w") as out:
        rc = subprocess.run([PY, "train.py", "--config_args_path", "configs/run.yml"], cwd=d, env=env,
                            stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.time() - t0
    meta = dict(tag=tag, dataset=dataset, model=model, seed=seed, rc=rc, wall_s=round(wall, 1),
                host=socket.gethostname(), commit="9f1eca4", cpu_threads=1)
    (d / "meta.json").write_text(json.dumps(meta))
    if rc == 0:
        (d / "done").write_text("")
    print(tag, "rc", rc, "wall", round(wall), "s", flush=True)


if __name__ == "__main__":
    # jobs as DATASET:MODEL:SEED, e.g. shapes-config1:conv_vlae:0 fashion-mnist:fc_vlae:3
    for job in sys.argv[1:]:
        dataset, model, seed = job.split(":")
        run(f"{dataset}-{model}-s{seed}", dataset, model, int(seed))
