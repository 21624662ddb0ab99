#!/usr/bin/env bash
# smt eval end to end: tiny checkpoints (synthetic, LIAR six-way, LIAR binary) are evaluated;
# report.json has every documented key, the SVG plots parse as XML, the table is printed.
# usage: eval_report.sh SMT_BINARY PROJECT_ROOT
set -eu
smt=$1; root=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
. "$root/tests/cli/lib/eval.bash"
make_liar "$tmp/liar"
tiny_train "$smt" "$tmp/syn"
tiny_train "$smt" "$tmp/liar6" --data.source=liar --data.path="$tmp/liar"
tiny_train "$smt" "$tmp/liar2" --data.source=liar --data.path="$tmp/liar" --data.binary=true
ck() { echo "$1/checkpoints/step-00000006.h5"; }

# synthetic, default output folder next to the run
"$smt" eval --checkpoint "$(ck "$tmp/syn")" --data synthetic --threads 1 >"$tmp/syn.out" 2>&1 || { cat "$tmp/syn.out"; exit 1; }
grep -q "ngram-lr" "$tmp/syn.out" && grep -q "specialisation" "$tmp/syn.out" || { echo "FAIL: table incomplete"; cat "$tmp/syn.out"; exit 1; }
syn_out="$tmp/syn/eval-step-00000006-synthetic"
# LIAR six-way and binary heads, explicit --out
"$smt" eval --checkpoint "$(ck "$tmp/liar6")" --data "liar:$tmp/liar/valid.tsv" --out "$tmp/e6" --threads 1 --batch-size 7 >"$tmp/l6.out" 2>&1 || { cat "$tmp/l6.out"; exit 1; }
"$smt" eval --checkpoint "$(ck "$tmp/liar2")" --data "liar:$tmp/liar/valid.tsv" --out "$tmp/e2" --threads 1 >"$tmp/l2.out" 2>&1 || { cat "$tmp/l2.out"; exit 1; }
# a checkpoint scored on another data source than it was trained on says so (once); a matching one does not
"$smt" eval --checkpoint "$(ck "$tmp/syn")" --data "liar:$tmp/liar/valid.tsv" --out "$tmp/x" --threads 1 >"$tmp/x.out" 2>&1 || { cat "$tmp/x.out"; exit 1; }
[ "$(grep -c "trained on data.source = synthetic and is scored on liar" "$tmp/x.out")" = 1 ] || { echo "FAIL: no transfer note"; cat "$tmp/x.out"; exit 1; }
! grep -q "is scored on" "$tmp/syn.out" "$tmp/l2.out" || { echo "FAIL: transfer note on matching data"; exit 1; }
# the same checkpoint and data give the same report whatever the batch size
"$smt" eval --checkpoint "$(ck "$tmp/liar6")" --data "liar:$tmp/liar/valid.tsv" --out "$tmp/e6b" --threads 1 --batch-size 64 >/dev/null 2>&1
# --bootstrap 0: no intervals, no paired comparisons (in the report or the table)
"$smt" eval --checkpoint "$(ck "$tmp/liar2")" --data "liar:$tmp/liar/valid.tsv" --out "$tmp/e2z" --threads 1 --bootstrap 0 >"$tmp/l2z.out" 2>&1 || { cat "$tmp/l2z.out"; exit 1; }
grep -q "model minus baseline" "$tmp/l6.out" && grep -q "McNemar" "$tmp/l6.out" && grep -q "95% intervals" "$tmp/l6.out" || { echo "FAIL: no intervals in the table"; cat "$tmp/l6.out"; exit 1; }
! grep -q "95% intervals\|model minus baseline" "$tmp/l2z.out" || { echo "FAIL: intervals printed with --bootstrap 0"; exit 1; }

python3 - "$syn_out" "$tmp/e6" "$tmp/e2" "$tmp/e6b" "$tmp/e2z" <<'PY'
import json, math, sys, xml.etree.ElementTree as ET
syn, l6, l2, l6b, l2z = sys.argv[1:]
VIEW_KEYS = {"n", "accuracy", "macro_f1", "per_class", "confusion", "nll", "brier", "ece"}
def check_view(name, v, classes, binary):
    missing = VIEW_KEYS - set(v)
    assert not missing, f"{name}: missing {missing}"
    assert set(v["per_class"]) == set(classes), f"{name}: per_class keys {list(v['per_class'])}"
    for c, m in v["per_class"].items():
        assert set(m) >= {"precision", "recall", "f1", "support"}, (name, c, m)
    C = len(classes)
    assert len(v["confusion"]) == C and all(len(r) == C for r in v["confusion"]), name
    assert sum(map(sum, v["confusion"])) == v["n"], f"{name}: confusion does not sum to n"
    for r, c in zip(v["confusion"], classes):
        assert sum(r) == v["per_class"][c]["support"], f"{name}: row {c} != support"
    assert 0 <= v["accuracy"] <= 1 and 0 <= v["ece"] <= 1 and v["nll"] > 0 and 0 <= v["brier"] <= 2, name
    diag = sum(v["confusion"][i][i] for i in range(C))
    assert abs(diag / v["n"] - v["accuracy"]) < 1e-6, f"{name}: accuracy != trace/n"
    if binary:
        assert "auc" in v and (v["auc"] is None or 0 <= v["auc"] <= 1), f"{name}: auc"
    else:
        assert "auc" not in v, f"{name}: auc on a multi-class view"
def check_common(r, moe_layers):
    assert set(r) >= {"views", "routing", "attention", "baselines"}, list(r)
    assert len(r["routing"]) == moe_layers and len(r["attention"]) == moe_layers
    for layer in r["routing"]:
        for k in ("tokens_per_expert", "load_balance", "routing_entropy_bits", "specialisation", "specialisation_shuffled"):
            assert k in layer, (k, layer)
        assert len(layer["tokens_per_expert"]) == 4
        assert 0 <= layer["load_balance"] <= 1 and 0 <= layer["specialisation"] <= 1
    for a in r["attention"]:
        assert a["pattern"] == "local" and 0 < a["element_density"] <= a["block_density"] <= 1, a
    b = r["baselines"]
    assert "majority" in b and "ngram_lr" in b, list(b)
    assert set(b["ngram_lr"]["views"]) == set(r["views"]) == set(b["majority"]["views"])
def mcnemar(b, c):  # exact two-sided binomial test at 1/2, in integers
    k, t = min(b, c), b + c
    return 1.0 if t == 0 else min(1.0, 2 * sum(math.comb(t, i) for i in range(k + 1)) / 2 ** t)
def check_intervals(r):
    B = r["bootstrap"]["resamples"]
    assert B == 1000 and r["bootstrap"]["seed"] == 1 and r["bootstrap"]["level"] == 0.95, r["bootstrap"]
    systems = {"model": r["views"], "majority": r["baselines"]["majority"]["views"],
               "ngram_lr": r["baselines"]["ngram_lr"]["views"]}
    for sysname, views in systems.items():
        for name, v in views.items():
            ci = v["ci95"]
            assert set(ci) == ({"accuracy", "macro_f1", "nll", "auc"} if "auc" in v else {"accuracy", "macro_f1", "nll"}), (sysname, name, ci)
            for k, (lo, hi) in ((k, x) for k, x in ci.items() if x is not None):
                assert lo <= hi, (sysname, name, k, lo, hi)
            for k in ("accuracy", "nll"):  # means over the examples: the interval holds the point
                lo, hi = ci[k]
                assert lo - 1e-9 <= v[k] <= hi + 1e-9, (sysname, name, k, lo, v[k], hi)
            assert 0 <= ci["accuracy"][0] and ci["accuracy"][1] <= 1
    mmb = r["model_minus_baselines"]
    assert set(mmb) == {"majority", "ngram_lr"}, list(mmb)
    for base, per_view in mmb.items():
        assert set(per_view) == set(r["views"]), (base, list(per_view))
        for name, c in per_view.items():
            m, b = r["views"][name], systems[base][name]
            for k in ("accuracy", "macro_f1", "nll"):
                d = c[k]
                assert abs(d["difference"] - (m[k] - b[k])) < 1e-6, (base, name, k, d, m[k], b[k])
                assert d["ci95"][0] <= d["ci95"][1] and 1 / (B + 1) - 1e-9 <= d["p"] <= 1, (base, name, k, d)
            if m.get("auc") is None or b.get("auc") is None:  # six-way view, or one class absent
                assert c["auc"] is None, (base, name, c["auc"])
            elif m["n"] >= 40:
                assert abs(c["auc"]["difference"] - (m["auc"] - b["auc"])) < 1e-6, (base, name, c["auc"])
            mc = c["mcnemar"]
            # accuracy difference = (model alone right - baseline alone right) / n
            assert mc["model_only_correct"] - mc["baseline_only_correct"] == round(m["n"] * (m["accuracy"] - b["accuracy"])), (base, name, mc)
            assert abs(mc["p"] - mcnemar(mc["model_only_correct"], mc["baseline_only_correct"])) < 1e-9, (base, name, mc)
def xml_ok(folder, names):
    for n in names:
        root = ET.parse(f"{folder}/{n}").getroot()
        assert root.tag.endswith("svg"), n
        assert len(list(root.iter())) > 10, f"{n}: nearly empty"
r = json.load(open(f"{syn}/report.json"))
check_common(r, 2)
fam = ["factual", "opinion", "context", "temporal", "numerical", "entity", "causal", "contradiction"]
assert "synthetic" in r["views"] and all(f in r["views"] for f in fam), list(r["views"])
for name, v in r["views"].items():
    check_view(name, v, ["false", "true"], True)
assert sum(r["views"][f]["n"] for f in r["views"] if f != "synthetic") == r["views"]["synthetic"]["n"]
# every non-PAD token makes top_k = 2 assignments per layer
tokens = [sum(l["tokens_per_expert"]) for l in r["routing"]]
assert tokens[0] == tokens[1] and tokens[0] % 2 == 0, tokens
assert "specialisation_group" in r["routing"][0]
xml_ok(syn, ["roc.svg", "reliability.svg", "confusion.svg", "expert_load.svg"])
r6 = json.load(open(f"{l6}/report.json"))
check_common(r6, 2)
assert set(r6["views"]) == {"liar6", "liar2"}, list(r6["views"])
six = ["pants-fire", "false", "barely-true", "half-true", "mostly-true", "true"]
check_view("liar6", r6["views"]["liar6"], six, False)
check_view("liar2", r6["views"]["liar2"], ["false", "true"], True)
# liar2 collapses liar6: its rows are sums of liar6 rows/columns
c6, c2 = r6["views"]["liar6"]["confusion"], r6["views"]["liar2"]["confusion"]
assert sum(sum(r[:3]) for r in c6[3:]) + sum(sum(r[3:]) for r in c6[3:]) == sum(c2[1]), "liar2 true row"
assert r6["views"]["liar6"]["n"] == 60 and r6["baselines"]["ngram_lr"]["train_examples"] == 180
xml_ok(l6, ["roc.svg", "reliability.svg", "confusion.svg", "expert_load.svg"])
r6b = json.load(open(f"{l6b}/report.json"))
for k in ("accuracy", "nll", "ece"):
    assert abs(r6b["views"]["liar6"][k] - r6["views"]["liar6"][k]) < 1e-5, (k, "depends on the batch size")
assert r6b["routing"][0]["tokens_per_expert"] == r6["routing"][0]["tokens_per_expert"], "PAD leaked into routing"
r2 = json.load(open(f"{l2}/report.json"))
assert set(r2["views"]) == {"liar2"}, list(r2["views"])
check_view("liar2", r2["views"]["liar2"], ["false", "true"], True)
for rep in (r, r6, r2):
    check_intervals(rep)
rz = json.load(open(f"{l2z}/report.json"))
assert rz["bootstrap"] == {"resamples": 0} and "model_minus_baselines" not in rz, rz["bootstrap"]
assert "ci95" not in rz["views"]["liar2"] and "ci95" not in rz["baselines"]["ngram_lr"]["views"]["liar2"]
assert rz["views"]["liar2"]["accuracy"] == r2["views"]["liar2"]["accuracy"]
print("eval reports ok:", {k: round(v["accuracy"], 3) for k, v in r6["views"].items()})
PY
