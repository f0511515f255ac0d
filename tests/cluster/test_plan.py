"""`spinal plan` on meta-device models: GPUs per replica, device maps, the refusal, store sizes, parameter counts."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from spinal.cluster.planner.plan import PlanConfig, plan
from spinal.cluster.planner.config import write_rate
from spinal.cluster.planner.cost import TABLE_BYTES_PER_TOKEN
from spinal.capture.discover import block_list
from spinal.cluster.planner.presets import ALIASES, PRESETS, build_meta_model
from spinal.errors import InputError

GIB = 1 << 30


@pytest.fixture(scope="module")
def llama70():
    return build_meta_model("llama-3-70b", "bfloat16")


@pytest.fixture(scope="module")
def llama8():
    return build_meta_model("meta-llama/Meta-Llama-3-8B", "bfloat16")


@pytest.fixture(scope="module")
def plan70(llama70):
    cfg = PlanConfig(model="llama-3-70b", nodes=2, gpus_per_node=8, gpu_memory_gib=80, tokens=512 * 512)
    return plan(cfg, llama70)


def _placed_once(dmap: dict, name: str) -> bool:
    """Exactly one map key places module/parameter ``name``, and no key splits it."""
    covering = [k for k in dmap if k == "" or name == k or name.startswith(k + ".")]
    inside = [k for k in dmap if k.startswith(name + ".")]
    return len(covering) == 1 and not inside


def test_llama3_70b_bf16_needs_two_80gib_gpus_per_replica(plan70, llama70):
    p = plan70.placement
    assert (p.gpus_per_replica, p.replicas_per_node, p.replicas, p.idle_gpus_per_node) == (2, 4, 8, 0)
    dmap = p.device_map
    assert set(dmap.values()) == {0, 1}  # nothing on "cpu" or "disk"
    assert p.offloaded == ()
    prefix, blocks = block_list(llama70.model)
    assert len(blocks) == 80
    assert all(_placed_once(dmap, f"{prefix}.{i}") for i in range(80))
    assert all(_placed_once(dmap, n) for n, _ in llama70.model.named_parameters())
    # each GPU's weights fit in what the plan left it after the reserve
    usable = float(p.max_memory["0"].removesuffix("GiB"))
    assert usable == pytest.approx(80 - p.reserve_gib, abs=0.01)
    assert all(d["gib"] <= usable for d in p.devices)
    # the compact description agrees with the exact map: block ranges partition 0–79 in order
    ranges = [re.findall(r"blocks (\d+)–(\d+)", d["holds"]) for d in p.devices]
    spans = [(int(a), int(b)) for r in ranges for a, b in r]
    assert spans[0][0] == 0 and spans[-1][1] == 79
    assert all(b + 1 == c for (_, b), (c, _) in zip(spans, spans[1:]))
    for dev, (a, b) in zip((0, 1), spans):
        assert {dmap[f"{prefix}.{i}"] for i in range(a, b + 1)} == {dev}
    assert p.devices[0]["holds"].startswith("embed_tokens") and p.devices[-1]["holds"].endswith("lm_head")


def test_one_gpu_per_replica_is_refused_for_70b(llama70):
    cfg = PlanConfig(model="llama-3-70b", gpus_per_node=8, gpu_memory_gib=80, gpus_per_replica=1)
    with pytest.raises(InputError, match=r"131\.4 GiB of weights.*1 × 80 GiB GPUs"):
        plan(cfg, llama70)


def test_llama3_8b_fits_one_80gib_gpu(llama8):
    p = plan(PlanConfig(model="llama-3-8b", gpus_per_node=8, gpu_memory_gib=80), llama8).placement
    assert (p.gpus_per_replica, p.replicas) == (1, 8)
    assert set(p.device_map.values()) == {0}


def test_70b_on_one_24gib_gpu_is_refused_with_the_sizes(llama70):
    cfg = PlanConfig(model="llama-3-70b", gpus_per_node=1, gpu_memory_gib=24)
    with pytest.raises(InputError) as e:
        plan(cfg, llama70)
    msg = str(e.value)
    assert "Meta-Llama-3-70B in bfloat16 needs ~131.4 GiB of weights" in msg
    assert "1 × 24 GiB" in msg and "allow_offload" in msg


def test_offload_is_planned_only_when_allowed(llama70):
    cfg = PlanConfig(model="llama-3-70b", gpus_per_node=1, gpu_memory_gib=24, allow_offload=True,
                     offload_cpu_gib=100)
    p = plan(cfg, llama70)
    places = set(p.placement.device_map.values())
    assert places == {0, "cpu", "disk"} and p.placement.offloaded
    assert p.capture.bound == "offload streaming"
    assert "OFFLOAD" in p.render()


def test_store_size_per_token_is_layers_times_hidden_times_itemsize(plan70, llama70):
    s = plan70.store
    assert TABLE_BYTES_PER_TOKEN == 12  # tokens/ids, tokens/sequence, tokens/position as int32
    assert s.layers == 81  # embedding output + 80 blocks
    assert s.bytes_per_token == 81 * 8192 * 2 + 12
    assert s.total_bytes == 512 * 512 * (81 * 8192 * 2 + 12)
    assert s.lens_bytes == (128256 * 8192 + 8192) * 2
    assert (s.t_chunk, s.t_shard) == (64, 512)  # 1 MiB chunks of 8192 bf16 values
    sub = plan(PlanConfig(model="llama-3-70b", nodes=2, layers="0,40-41,80", tokens=1000), llama70).store
    assert sub.bytes_per_token == 4 * 8192 * 2 + 12 and sub.total_bytes == 1000 * sub.bytes_per_token


@pytest.mark.parametrize(
    "name, published",
    [
        ("llama-3-70b", 70.6e9),
        ("llama-3-8b", 8.03e9),
        ("Qwen/Qwen2.5-72B", 72.7e9),
        ("Mistral-7B-v0.1", 7.24e9),
    ],
)
def test_meta_model_parameter_count_matches_the_published_figure(name, published, llama70, llama8):
    meta = {"llama-3-70b": llama70, "llama-3-8b": llama8}.get(name) or build_meta_model(name, "bfloat16")
    params = sum(p.numel() for p in meta.model.parameters())
    assert params == pytest.approx(published, rel=0.01)
    assert all(p.device.type == "meta" for p in meta.model.parameters())


def test_compute_params_exclude_embedding_and_head(plan70):
    m = plan70.model
    assert m.params == 70_553_706_496
    assert m.compute_params == m.params - 2 * 128256 * 8192  # untied embedding and lm_head


def test_capture_time_follows_the_stated_assumptions(llama70):
    base = dict(model="llama-3-70b", nodes=2, tokens=512 * 512, store_write_gib_s=1e6)  # compute-bound
    a = plan(PlanConfig(**base), llama70).capture
    b = plan(PlanConfig(**base, gpu_tflops=2 * 989.0), llama70).capture
    assert a.bound == "GPU compute"
    flops = 2 * (70_553_706_496 - 2 * 128256 * 8192) + 4 * 80 * 512 * 8192
    assert a.flops_per_token == flops
    assert a.tokens_s == pytest.approx(989e12 * 0.4 / flops)  # one GPU's rate: the map is a pipeline
    assert b.run_s == pytest.approx(a.run_s / 2)
    # the writer: measured GiB/s per core × its share of the node's cores (96 × 2 GPUs / 8) × measured scaling
    slow = dict(model="llama-3-70b", nodes=2, tokens=512 * 512, write_gib_s_per_core=0.05, write_scaling=0.5)
    w = plan(PlanConfig(**slow), llama70).capture
    assert w.write.cores == 24 and w.write.gib_s == pytest.approx(0.05 * 24 * 0.5)
    assert w.bound == "store writes" and w.tokens_s == pytest.approx(0.6 * GIB / (81 * 8192 * 2 + 12))
    need = w.write_cores_needed  # the fewest writer cores that keep up with compute
    assert need * 0.05 * 0.5 * GIB / (81 * 8192 * 2 + 12) >= w.compute_tokens_s
    assert (need - 1) * 0.05 * 0.5 * GIB / (81 * 8192 * 2 + 12) < w.compute_tokens_s
    enough = plan(PlanConfig(**{**slow, "node_cpu_cores": 4 * need}), llama70).capture
    assert enough.bound == "GPU compute" and enough.write.cores == need
    measured = plan(PlanConfig(model="llama-3-70b", nodes=2, tokens=512 * 512), llama70).capture
    per_core, scaling = write_rate("zstd-1", "bfloat16")
    assert measured.write.gib_s == pytest.approx(per_core * 24 * scaling)
    few = plan(PlanConfig(model="llama-3-70b", nodes=2, tokens=3 * 8192), llama70).capture
    assert few.active_replicas == 3  # 3 work units for 8 replicas


def test_analysis_cost_counts_gram_eigen_shares_and_lens(plan70):
    """The replicates cost no eigensolves: one eigh + one eigvalsh per layer, whatever n_boot is."""
    a, n, d = plan70.analysis, 512 * 512, 8192
    cfg = plan70.config
    assert a.gram_flops == 81 * n * d * d  # SYRK: half a GEMM's 2·N·d²
    assert a.eigen_core_s == pytest.approx(cfg.cpu_eigen_s_1024 * 8**3)
    assert a.eigen_s == pytest.approx(81 * a.eigen_core_s / cfg.cpu_cores)
    assert a.shares_flops == 81 * 16 * 2 * d * d * d
    assert a.lens_tokens == 12288 and a.lens_flops == 81 * 2 * 12288 * d * 128256
    assert a.lens_all_s == pytest.approx(a.lens_s * n / 12288)
    assert a.packed_s == pytest.approx(a.gram_s + a.eigen_s + a.shares_s + a.lens_s)
    # 81 single-threaded layer tasks on 64 cores run in two waves: the wall time exceeds perfect packing, and the
    # lens tasks fill the 47 cores the second wave leaves idle (so less than two full layer waves + the lens)
    per_layer = (a.gram_s + a.eigen_s + a.shares_s) * 64 / 81
    assert a.layer_waves == 2 and a.packed_s < a.total_s < 2 * per_layer + a.lens_s


def test_few_tokens_for_the_width_price_the_jackknife_and_the_calibration_simulations(plan70, llama70):
    """At N ≤ 8·d every layer adds its exact jackknife (one eigvalsh per block) and its share of the 96 simulated
    layers (⌈96/81⌉ = 2), each its own Gram and 1 + 16 eigvalsh (issue 13: analyze/contraction/calibration.py), an eigvalsh priced at EIGVALSH_SHARE of a layer's
    eigh + eigvalsh; calibration_sims = 0 keeps the jackknife alone; above 8·d nothing is added."""
    from spinal.cluster.planner.cost import EIGVALSH_SHARE
    assert not plan70.analysis.calibrated and plan70.analysis.calibration_sims == 0  # N = 32·d
    layers = plan70.store.layers
    solves = lambda a: a.eigen_s * 64 / (layers * a.eigen_core_s)  # noqa: E731  eigen units per layer
    assert solves(plan70.analysis) == pytest.approx(1.0)
    few = dict(model="llama-3-70b", nodes=2, gpus_per_node=8, gpu_memory_gib=80, tokens=8 * 8192)
    on = plan(PlanConfig(**few), llama70).analysis
    off = plan(PlanConfig(**few, calibration_sims=0), llama70).analysis
    assert on.calibrated and off.calibrated and on.calibration_sims == 2 and off.calibration_sims == 0
    assert solves(off) == pytest.approx(1 + 16 * EIGVALSH_SHARE)
    assert solves(on) == pytest.approx(1 + (16 + 2 * 17) * EIGVALSH_SHARE)
    assert on.gram_flops == pytest.approx(3 * off.gram_flops) and on.shares_flops == off.shares_flops
    assert on.lens_s == off.lens_s
    text = plan(PlanConfig(**few), llama70).render()
    assert "exact jackknife (16 eigvalsh per layer, as tokens ≤ 8·d) and 2 simulated layers" in text


def test_the_comparison_is_priced_per_pair_from_its_readouts(plan70, llama70):
    """The comparison's lens work (issue 38): 3 readouts of 2·d·V per token, layer and pair for the cross-readout,
    2 final-layer readouts per token and pair for the positions, at the lens rate, scheduled as its tasks run
    (one per pair and layer, one per pair); one checkpoint has nothing to compare."""
    from spinal.cluster.planner.cost import makespan

    k, cfg, d, v = plan70.comparison, plan70.config, 8192, 128256
    assert (k.pairs, k.cross_tokens, k.position_tokens) == (1, 20000, 20000)
    assert k.cross_flops == 81 * 3 * 2 * 20000 * d * v and k.position_flops == 2 * 2 * 20000 * d * v
    rate = cfg.cpu_gflops_f32 * 1e9
    assert k.total_s == pytest.approx(makespan([3 * 2 * 20000 * d * v / rate] * 81 + [4 * 20000 * d * v / rate], 64))
    five = plan(dataclasses.replace(cfg, checkpoints=5), llama70).comparison
    assert five.pairs == 4 and five.cross_flops == 4 * k.cross_flops and five.total_s > 3 * k.total_s
    assert "compare    4 pair(s) against the first checkpoint" in plan(dataclasses.replace(cfg, checkpoints=5),
                                                                        llama70).render()
    none = plan(dataclasses.replace(cfg, checkpoints=1, position_tokens=0), llama70)
    assert none.comparison.pairs == 0 and none.comparison.total_s == 0 and "nothing to compare" in none.render()
    off = plan(dataclasses.replace(cfg, cross_readout_tokens=0), llama70).comparison
    assert off.cross_flops == 0 and off.total_s == pytest.approx(4 * 20000 * d * v / rate)


def test_makespan_is_greedy_list_scheduling_in_task_order():
    from spinal.cluster.planner.cost import makespan

    assert makespan([3.0, 3.0, 3.0], 2) == 6.0  # the third task waits for a free worker
    assert makespan([3.0, 3.0, 1.0, 1.0, 1.0], 2) == 5.0  # short tasks fill in behind the long ones
    assert makespan([2.0] * 4, 8) == 2.0 and makespan([], 4) == 0.0


def test_the_70b_analysis_fits_in_an_hour_at_the_measured_rates(plan70):
    """Issue 13's goal, priced with this repository's measured per-core rates (cluster/planner/analysis_rates.json)."""
    from spinal.cluster.planner.config import RATES

    cfg = plan70.config
    assert cfg.cpu_gflops_f64 == RATES["gram_gflops_per_core"] and cfg.cpu_cores == 64
    assert plan70.analysis.total_s <= 3600, plan70.analysis
    assert "measured by benchmarks/bench_rates.py" in plan70.render()


def test_render_and_dict_state_every_assumption(plan70):
    text = plan70.render()
    for f in dataclasses.fields(PlanConfig):
        if f.metadata.get("assumption"):
            assert re.search(rf"^  {f.name} +=", text, re.M), f.name
    assert "2 GPU(s) per replica → 4 per node, 8 in all" in text
    mm = plan70.placement.max_memory
    assert f"--max-memory 0={mm['0']},1={mm['1']}" in text  # what capture is given for one replica
    d = json.loads(json.dumps(plan70.to_dict()))
    assert d["placement"]["device_map"] == plan70.placement.device_map
    assert d["store"]["bytes_per_token"] == 81 * 8192 * 2 + 12
    assert d["config"]["gpu_tflops"] == 989.0


def _tiny_config() -> dict:
    return dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=128, max_position_embeddings=256,
                tie_word_embeddings=False, torch_dtype="float32")


@pytest.mark.parametrize("as_folder", [False, True])
def test_local_config_json(tmp_path, as_folder):
    from transformers import AutoConfig, AutoModelForCausalLM

    (tmp_path / "config.json").write_text(json.dumps(_tiny_config()))
    p = plan(PlanConfig(model=str(tmp_path if as_folder else tmp_path / "config.json"), dtype="auto",
                        gpus_per_node=1, gpu_memory_gib=24, tokens=100))
    assert p.model.dtype == "float32" and p.model.source == str(tmp_path / "config.json")
    assert p.placement.gpus_per_replica == 1
    assert p.store.bytes_per_token == 3 * 64 * 4 + 12
    kw = _tiny_config()
    real = AutoModelForCausalLM.from_config(AutoConfig.for_model(kw.pop("model_type"), **kw))
    assert p.model.params == sum(t.numel() for t in real.parameters())


def test_tied_embeddings_are_counted_and_placed_once(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(n_embd=512, n_layer=8, n_head=8, vocab_size=16384, n_positions=256, bos_token_id=0, eos_token_id=0)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", **kw}))
    real = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", **kw))
    assert real.lm_head.weight is real.transformer.wte.weight
    # 0.126 GiB of float32 weights on 0.1 GiB GPUs: the map must split over two
    p = plan(PlanConfig(model=str(tmp_path), dtype="float32", gpus_per_node=4, gpu_memory_gib=0.1,
                        headroom_gib=0, batch_size=1, seq_len=2, tokens=10))
    assert p.model.params == sum(t.numel() for t in real.parameters())
    assert p.model.compute_params == p.model.params - 16384 * 512  # one shared embedding matrix
    dmap = p.placement.device_map
    assert p.placement.gpus_per_replica == 2 and set(dmap.values()) == {0, 1}
    assert dmap["lm_head"] == dmap["transformer.wte"]  # the shared matrix lives on one GPU


def test_unknown_preset_lists_the_presets():
    with pytest.raises(InputError) as e:
        plan(PlanConfig(model="llama-4-400b"))
    for name in list(ALIASES) + list(PRESETS):
        assert name in str(e.value)


def test_config_with_remote_code_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**_tiny_config(), "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(InputError, match="auto_map"):
        plan(PlanConfig(model=str(tmp_path)))


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(gpus_per_node=0), "gpus_per_node"),
        (dict(mfu=1.5), "mfu"),
        (dict(gpus_per_replica=9), "gpus_per_replica"),
        (dict(gpu_memory_gib=0), "gpu_memory_gib"),
        (dict(dtype="int8"), "dtype"),
        (dict(layers="0,x"), "layers"),
        (dict(tokens=0), "tokens"),
    ],
)
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(InputError, match=field):
        PlanConfig(model="llama-3-8b", **kw)


def test_meta_model_must_match_the_config(llama8):
    with pytest.raises(InputError, match="meta model given"):
        plan(PlanConfig(model="llama-3-70b"), llama8)
    with pytest.raises(InputError, match="meta model given"):
        plan(PlanConfig(model="llama-3-8b", dtype="float32"), llama8)


def test_reserve_larger_than_the_gpu_is_refused(llama8):
    with pytest.raises(InputError, match="batch_size, seq_len or headroom_gib"):
        plan(PlanConfig(model="llama-3-8b", gpu_memory_gib=4, headroom_gib=4), llama8)


def test_cluster_doc_shows_the_planners_current_output():
    """The Llama-3-70B plan in docs/cluster.md is what `spinal plan` prints today (no hand-copied numbers)."""
    from pathlib import Path

    from typer.testing import CliRunner

    from spinal.cli.app import app

    readme = (Path(__file__).parents[2] / "docs" / "cluster.md").read_text()
    block = readme.split("<!-- plan:llama-3-70b -->")[1].split("<!-- /plan:llama-3-70b -->")[0]
    shown = block.strip().removeprefix("```").removesuffix("```").strip()
    r = CliRunner().invoke(app, ["plan", "llama-3-70b", "--nodes", "2", "--gpus-per-node", "8",
                                 "--gpu-memory-gib", "80", "--tokens", "262144"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert shown == r.stdout.strip()


def test_a_run_config_is_planned_with_its_own_settings(tmp_path, checkpoint):
    """`spinal plan RUN.toml` plans the run about to start: its first checkpoint, capture and analysis settings;
    --set still overrides; a checkpoint that is not on this machine is named in one line."""
    import json as _json

    from typer.testing import CliRunner

    from spinal.cli.app import app

    ck = checkpoint("llama")
    f = tmp_path / "run.toml"
    f.write_text(f'[run]\nout = "o"\nprompts = "p.jsonl"\n[[checkpoints]]\nlabel = "a"\npath = "{ck}"\n'
                 '[capture]\nbatch_size = 3\nmax_length = 96\nunit_tokens = 512\ndtype = "float32"\n'
                 '[analyze]\nlens_tokens = 999\n')
    r = CliRunner().invoke(app, ["plan", str(f), "--json", "--set", "unit_tokens=1024"])
    assert r.exit_code == 0, r.output
    cfg = _json.loads(r.stdout)["config"]
    assert (cfg["model"], cfg["batch_size"], cfg["seq_len"], cfg["dtype"], cfg["lens_tokens"], cfg["unit_tokens"]) == (
        str(ck), 3, 96, "float32", 999, 1024)
    assert (cfg["checkpoints"], cfg["cross_readout_tokens"], cfg["position_tokens"]) == (1, 20000, 20000)
    cluster_toml = Path(__file__).parents[2] / "configs" / "llama70b-cluster.toml"
    r = CliRunner().invoke(app, ["plan", str(cluster_toml)])  # /shared/models/Meta-Llama-3-70B: its preset
    assert r.exit_code == 0, r.output
    assert "/shared/models/Meta-Llama-3-70B is not on this machine; planned as the preset " \
           "meta-llama/Meta-Llama-3-70B" in r.stderr
    assert r.stdout.startswith("spinal plan: Meta-Llama-3-70B (preset meta-llama/Meta-Llama-3-70B)")
    f.write_text(f.read_text() + f'[[checkpoints]]\nlabel = "tuned"\npath = "{ck}"\nadapter = "lora-folder"\n')
    r = CliRunner().invoke(app, ["plan", str(f)])  # an adapter is merged into its base: the base's plan, said so
    assert r.exit_code == 0, r.output
    assert "1 checkpoint(s) (tuned) add a LoRA adapter" in r.stderr and "costs what its base costs" in r.stderr
    f.write_text(f.read_text().replace(str(ck), "/nowhere/my-own-model"))
    r = CliRunner().invoke(app, ["plan", str(f)])
    assert r.exit_code == 2 and "/nowhere/my-own-model is not on this machine" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
