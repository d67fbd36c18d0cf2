"""Per-block parameter counts, output shapes and init statistics of the authors' ladders
(FabianFalck/mfcvae 9f1eca4), the constants of mfcbench's tests/test_parity.py.
    AUTHORS_CODE=<checkout> python authors_constants.py OUT.json   (from mfcbench's root, boilr installed)"""
import os, sys, json
import numpy as np, torch
sys.path[:0] = [os.environ.get("AUTHORS_CODE", "mfcvae"), "."]
from mfcvae import MFCVAE
from boilr.nn.init import data_dependent_init

torch.set_num_threads(1)

def build(kind, in_dim, z, K, bn, act, cov, fix_pi):
    if kind == "fc_vlae":
        enc = [[500, "branch"], [2000, "branch"]]
        dec = [[500, "merge", 500], [2000, 500]]
    else:
        enc = dec = None
    m = MFCVAE(in_dim=in_dim, J_n_mixtures=2, z_j_dim_list=z, n_clusters_j_list=K, encode_layer_dims=enc,
               decode_layer_dims=dec, device=torch.device("cpu"), n_train_batches_per_epoch=1,
               n_epochs_per_progressive_step=[1, 1], model_type=kind,
               likelihood_model="Gaussian" if in_dim == 3072 else "Bernoulli",
               activation_x_hat_z="sigmoid" if in_dim == 784 else None, cov_type_p_z_c=cov,
               fix_pi_p_c=fix_pi, activation=act, do_fc_batch_norm=bn, do_progressive_training=False)
    return m

def count(mods):
    return sum(p.numel() for mod in mods for p in mod.parameters())

def blocks(m, kind):
    e, d = m.encoder, m.decoder
    if kind == "conv_vlae":
        return {
            "enc_backbone_1": [e.conv_backbone_0], "enc_rung_1": [e.conv_rung_0, m.fc_mu_q_z_x_list[0], m.fc_log_sigma_square_q_z_x_list[0]],
            "enc_backbone_2": [e.conv_backbone_1], "enc_rung_2": [e.conv_rung_1, m.fc_mu_q_z_x_list[1], m.fc_log_sigma_square_q_z_x_list[1]],
            "dec_rung_2": [d.mlp_rung_1], "dec_backbone_2": [d.conv_backbone_1],
            "dec_rung_1": [d.mlp_rung_0], "dec_backbone_1": [d.conv_backbone_0]}
    return {
        "enc_backbone_1": [e.fc_backbone[0]], "enc_rung_1": [e.fc_rung[0], m.fc_mu_q_z_x_list[0], m.fc_log_sigma_square_q_z_x_list[0]],
        "enc_backbone_2": [e.fc_backbone[1]], "enc_rung_2": [e.fc_rung[1], m.fc_mu_q_z_x_list[1], m.fc_log_sigma_square_q_z_x_list[1]],
        "dec_rung_2": [], "dec_backbone_2": [d.fc_backbone[1]],
        "dec_rung_1": [d.fc_rung[0]], "dec_backbone_1": [d.fc_backbone[0], m.layer_x_hat_z]}

def shapes(m, kind, x):
    out = {}
    hooks = []
    def grab(name):
        def h(mod, i, o):
            out[name] = list(o.shape[1:])
        return h
    def called(mod, last=True):
        while isinstance(mod, torch.nn.ModuleList):
            mod = mod[-1] if last else mod[0]
        return mod
    for name, mods in blocks(m, kind).items():
        if mods:
            target = called(mods[0]) if name.startswith("enc_rung") else called(mods[-1])
            hooks.append(target.register_forward_hook(grab(name)))
    m.eval()
    with torch.no_grad():
        m(x, 0, 0)
    for h in hooks: h.remove()
    return out

CASES = {
    "mnist_fc": ("fc_vlae", 784, [5, 5], [25, 25], False, "relu", "diag", False),
    "shapes_fc": ("fc_vlae", 3072, [20, 2], [60, 20], False, "elu", "full", True),
    "shapes_conv": ("conv_vlae", 3072, [20, 2], [60, 20], True, "elu", "full", True),
    "svhn_conv": ("conv_vlae", 3072, [22, 7], [200, 50], True, "elu", "full", True),
}
result = {}
for name, args in CASES.items():
    kind = args[0]
    m = build(*args)
    x = torch.rand(4, 784) if args[1] == 784 else (torch.rand(4, 3, 32, 32) if kind == "conv_vlae" else torch.rand(4, 3072))
    result[name] = {"params": {b: count(mods) for b, mods in blocks(m, kind).items()},
                    "total": sum(p.numel() for n, p in m.named_parameters() if not n.startswith(("_pi", "mu_p", "_sigma", "_l_mat"))),
                    "shapes": shapes(m, kind, x)}

# Init statistics: train.py's order (lines 429-467) on a fixed batch of shapes-config1.
from harness.data.procedural_shapes import load_procedural_shapes
data = load_procedural_shapes(1, split_seed=0)
X = data.x_train[:600].float()
def init_stats(kind, seed):
    args = CASES["shapes_conv" if kind == "conv_vlae" else "shapes_fc"]
    torch.manual_seed(seed); np.random.seed(seed)
    m = build(*args)
    t = X[:150] if kind == "conv_vlae" else X[:150].reshape(150, -1)
    xs = X if kind == "conv_vlae" else X.reshape(len(X), -1)
    with torch.no_grad():
        m(t, 0, 0)                                   # train.py line 443: first_forward
        data_dependent_init(m, {"x": t, "epoch": 0, "batch_idx": 0})
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, torch.zeros(len(xs))), batch_size=150)
    m.initialize_p_z_c_params_with_gmm(loader, model_type=kind, epoch=-1, batch_idx=-1)
    row = {}
    for mode in ("eval", "train"):
        m.train(mode == "train")
        with torch.no_grad():
            mus, _ = m.encode(xs)
            q = m.compute_q_c_j_x(mus)
        for j in range(2):
            row[f"{mode}_mean_spread_{j+1}"] = float(mus[j].std(0).mean())
            row[f"{mode}_max_q_{j+1}"] = float(q[j].max(1).values.mean())
    return row
for kind in ("conv_vlae", "fc_vlae"):
    rows = [init_stats(kind, s) for s in range(5)]
    result[f"init_{kind}"] = {k: [round(r[k], 5) for r in rows] for k in rows[0]}
open(sys.argv[1], 'w').write(json.dumps(result, indent=1))
