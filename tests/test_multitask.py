"""Multi-task and language-conditioned policies: FiLM, task ids/embeddings in co-training batches, checkpoints that
act with a task, the local-only text encoder, per-task success in evaluation."""
import os

import h5py
import numpy as np
import pytest
import torch

from modmimic import keys as K
from modmimic.components.nets.film import FiLM, TaskConditionedEncoder, film
from modmimic.components.nets.core import ObsEncoder
from modmimic.config import ConfigError, compose
from modmimic.data.synthetic import write_robomimic_hdf5
from modmimic.policy import RolloutPolicy, load_checkpoint, policy_from_checkpoint
from modmimic.tasks import TaskVocab
from modmimic.trainer import build_data, train, with_data

OBS = ["observation.modalities.obs.low_dim=[pos,goal_pos,vel]", "experiment.rollout.enabled=false"]


def write_set(path, n_demos, seed, length=8, tasks=None):
    """Demos with obs pos/goal_pos/vel (2-D each) and 2-D actions; ``tasks``: a task attribute per demo."""
    rng = np.random.default_rng(seed)
    demos = []
    for i in range(n_demos):
        T = length + i % 3
        demos.append({"obs": {"pos": rng.uniform(-1, 1, (T, 2)), "goal_pos": rng.uniform(-1, 1, (T, 2)),
                              "vel": rng.normal(0, 0.1, (T, 2))},
                      "actions": rng.uniform(-1, 1, (T, 2)), "rewards": np.zeros(T),
                      "dones": (np.arange(T) == T - 1) * 1})
    write_robomimic_hdf5(str(path), demos)
    if tasks is not None:
        with h5py.File(path, "r+") as f:
            for i, t in enumerate(tasks):
                f["data"][f"demo_{i}"].attrs["task"] = t
    return str(path)


def task_list(paths, tasks, key="task"):
    return "train.data=[" + ",".join(f"{{path:'{p}',{key}:'{t}'}}" for p, t in zip(paths, tasks)) + "]"


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    d = tmp_path_factory.mktemp("multitask")
    return [write_set(d / "a.hdf5", 6, 0), write_set(d / "b.hdf5", 4, 1), write_set(d / "c.hdf5", 5, 2, length=5)]


# --- FiLM ------------------------------------------------------------------------------------------------------

def test_film_closed_form():
    x = torch.tensor([[1.0, -2.0, 3.0]])
    assert torch.equal(film(x, torch.ones(3), torch.zeros(3)), x)  # gamma = 1, beta = 0: identity
    assert torch.equal(film(x, torch.tensor([2.0, 0.5, -1.0]), torch.tensor([1.0, 1.0, 0.0])),
                       torch.tensor([[3.0, 0.0, -3.0]]))
    m = FiLM(3, 2)  # untrained: gamma = 1, beta = 0 for every conditioning vector
    c = torch.randn(5, 2)
    xs = torch.randn(5, 3)
    assert torch.equal(m(xs, c), xs)
    # hand-set layer: gamma = 1 + Wg c, beta = Wb c + bb; c = [1, 2]
    with torch.no_grad():
        m.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.0, 0.0],     # gamma rows
                                          [0.0, 0.0], [1.0, 1.0], [0.0, -1.0]]))  # beta rows
        m.proj.bias.copy_(torch.tensor([0.0, 0.0, 1.0, 0.5, 0.0, 0.0]))
    # gamma = [1 + 1, 1 + 1, 1 + 1] = [2, 2, 2]; beta = [0.5, 3, -2]
    out = m(x, torch.tensor([[1.0, 2.0]]))
    assert torch.allclose(out, torch.tensor([[2.5, -1.0, 4.0]]))
    # a per-episode embedding [B, C] modulates every step of a [B, T, F] window
    seq = torch.randn(1, 4, 3)
    assert torch.allclose(m(seq, torch.tensor([[1.0, 2.0]])), seq * 2 + torch.tensor([0.5, 3.0, -2.0]))


def test_task_conditioned_encoder_reads_the_batch_key():
    enc = ObsEncoder([(K.obs("pos"), (2,))])
    td = {K.obs("pos"): torch.tensor([[1.0, 2.0]]), K.TASK_EMB: torch.tensor([[0.0, 1.0, 0.0]])}

    class TD(dict):
        def get(self, k):
            return self[k]

    cat = TaskConditionedEncoder(enc, 3, "concat")
    assert cat.output_dim == 5 and K.TASK_EMB in cat.in_keys
    assert torch.equal(cat(TD(td)), torch.tensor([[1.0, 2.0, 0.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="size 3, the policy was built for 4"):
        TaskConditionedEncoder(enc, 4)(TD(td))


# --- data: task ids and embeddings per row ------------------------------------------------------------------------

def test_cotraining_batch_carries_each_rows_task(three, tiny):
    cfg = compose("bc_rnn", [task_list(three, ["reach", "push", "reach"]), "train.batch_size=64",
                             "task.conditioning=onehot", "train.seq_length=4", "algo.rnn.horizon=4", *tiny("bc_rnn")])
    data = build_data(with_data(cfg))
    v = data.task_vocab
    assert v.names == ["reach", "push"] and v.texts == ["reach", "push"] and data.task_dim == 2
    assert torch.equal(v.embeddings, torch.eye(2))
    want = {0: 0, 1: 1, 2: 0}  # dataset -> task row
    starts = np.cumsum([0] + [len(c) for c in data.train_sampler.samplers])
    for _ in range(5):
        b = data.train_sampler.sample()
        ds = np.searchsorted(starts, b[K.INDEX][:, 0].numpy(), side="right") - 1
        ids = b[K.TASK_ID]
        assert ids.shape == b.batch_size and (ids == ids[:, :1]).all()  # one task per window
        assert ids[:, 0].tolist() == [want[d] for d in ds]
        assert torch.equal(b[K.TASK_EMB], torch.eye(2)[ids])
    first = data.train_sampler.samplers[0].sample()
    assert (first[K.TASK_ID] == 0).all()
    # the batch function keeps them (first step for BC)
    from modmimic.components.batching import first_step
    assert first_step(b)[K.TASK_EMB].shape == (64, 2)


def test_demo_tasks_from_the_file_and_language_from_a_pluggable_encoder(tmp_path, tiny, monkeypatch):
    """One file, a task per demo (HDF5 attribute, as LeRobot -> HDF5 conversion writes it); language conditioning
    with a text encoder named by dotted path (a trusted module): embeddings computed once per task."""
    path = write_set(tmp_path / "m.hdf5", 6, 0, tasks=["open the drawer", "push the cube"] * 3)
    calls = []

    def fake_encoder(texts, scale=1.0):
        calls.append(list(texts))
        return np.stack([[len(t) * scale, t.count("e")] for t in texts]).astype(np.float32)

    import modmimic.text
    monkeypatch.setattr(modmimic.text, "fake_encoder", fake_encoder, raising=False)
    cfg = compose("bc", [f"train.data={path}", "task.conditioning=language", "task.fuse=concat",
                         "task.text_encoder.fn=modmimic.text.fake_encoder", "+task.text_encoder.kwargs.scale=0.5",
                         *tiny("bc")])
    data = build_data(with_data(cfg))
    v = data.task_vocab
    assert v.names == ["open the drawer", "push the cube"] and calls == [v.texts]
    assert torch.equal(v.embeddings, torch.tensor([[7.5, 3.0], [6.5, 2.0]]))
    b = data.train_sampler.sample()
    ep = b[K.EPISODE][:, 0]
    assert torch.equal(b[K.TASK_ID][:, 0], ep % 2)  # demo i has task i mod 2
    assert torch.equal(b[K.TASK_EMB][:, 0], v.embeddings[ep % 2])
    # a new instruction is embedded when asked for; a one-hot vocabulary refuses unknown tasks
    assert torch.equal(v.embed(["push the cube", "close it"]), torch.tensor([[6.5, 2.0], [4.0, 1.0]]))
    with pytest.raises(ConfigError, match="not one of the policy's 2 tasks: a, b"):
        TaskVocab("onehot", ["a", "b"], ["a", "b"], torch.eye(2)).embed(["c"])


def test_missing_tasks_are_a_clear_error(three, tiny):
    cfg = compose("bc", [f"train.data={three[0]}", "task.conditioning=onehot", *tiny("bc")])
    with pytest.raises(Exception, match="needs each demo's task: give its train.data entry task"):
        build_data(with_data(cfg))
    with pytest.raises(ConfigError, match="task.conditioning must be null, onehot or language"):
        compose("bc", ["task.conditioning=words", *tiny("bc")])
    from modmimic.algo import algo_factory
    cfg = compose("vq_bet", ["task.conditioning=onehot", *tiny("vq_bet")])
    with pytest.raises(ConfigError, match="recipe 'vq_bet' has networks without a task input"):
        algo_factory(cfg.algo_name, cfg, {"pos": (2,), "goal_pos": (2,), "vel": (2,)}, 2, task_dim=3)
    cfg = compose("td3_bc", ["task.conditioning=onehot", *tiny("td3_bc")])  # its actor would take it, its critics not
    with pytest.raises(ConfigError, match=r"without a task input \(task_dim\): critic"):
        algo_factory(cfg.algo_name, cfg, {"pos": (2,), "goal_pos": (2,), "vel": (2,)}, 2, task_dim=3)


# --- checkpoints act with the task ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fuse", ["film", "concat"])
def test_checkpoint_round_trip_acts_with_the_task(three, tiny, tmp_path, fuse):
    cfg = compose("bc_rnn", [task_list(three[:2], ["reach-v3", "push-v3"]), "task.conditioning=onehot",
                             f"task.fuse={fuse}", f"train.output_dir={tmp_path}", "train.num_epochs=2",
                             "experiment.epoch_every_n_steps=15", "experiment.logging.log_tb=false",
                             "algo.optim_params.policy.learning_rate.initial=0.01", *tiny("bc_rnn")])
    out = train(cfg, rollout_fn=None, progress=False)
    path = os.path.join(out["run_dir"], "models", "last.pth")
    ckpt = load_checkpoint(path)
    assert ckpt["task_vocab"]["names"] == ["reach-v3", "push-v3"] and ckpt["shape_metadata"]["task_dim"] == 2
    policy, _ = policy_from_checkpoint(ckpt_path=path)
    assert policy.multi_task and policy.task_vocab.names == ["reach-v3", "push-v3"]
    rng = np.random.default_rng(0)
    ob = {k: np.repeat(rng.uniform(-1, 1, (1, 2)), 3, 0).astype(np.float32) for k in ("pos", "goal_pos", "vel")}
    policy.start_episode(3)
    with pytest.raises(ConfigError, match="this policy is multi-task: give the task"):
        policy(ob, batched_ob=True)
    a = policy(ob, batched_ob=True, tasks=["reach-v3", "push-v3", "reach-v3"])
    # the same observation, another task: another action; the same task: the same action
    assert not np.allclose(a[0], a[1], atol=1e-4) and np.allclose(a[0], a[2])
    # the loaded policy acts as the in-training algorithm does (same weights, same embeddings)
    from modmimic.algo import algo_factory
    from modmimic.policy import algo_from_checkpoint
    algo = algo_from_checkpoint(path)
    assert algo.task_dim == 2
    policy.start_episode(3)
    b = policy(ob, batched_ob=True, tasks=["push-v3"] * 3)
    again = RolloutPolicy(algo, task_vocab=TaskVocab.from_plain(ckpt["task_vocab"]),
                          action_normalization_stats=policy.action_normalization_stats)
    again.start_episode(3)
    assert np.allclose(again(ob, batched_ob=True, tasks="push-v3"), b)
    with pytest.raises(ConfigError, match="is not one of the policy's 2 tasks"):
        policy(ob, batched_ob=True, tasks="door-open-v3")
    with pytest.raises(ConfigError, match="needs the task embedding size"):
        algo_factory("bc", algo.config, algo.obs_key_shapes, algo.ac_dim)


@pytest.fixture(scope="module")
def mt_ckpt(three, tmp_path_factory):
    from conftest import tiny_overrides

    out = tmp_path_factory.mktemp("mt_ckpt")
    cfg = compose("bc", [task_list(three[:2], ["reach-v3", "push-v3"]), "task.conditioning=onehot",
                         f"train.output_dir={out}", "train.num_epochs=1", "experiment.epoch_every_n_steps=20",
                         "experiment.logging.log_tb=false", "algo.optim_params.policy.learning_rate.initial=0.01",
                         *tiny_overrides("bc")])
    return os.path.join(train(cfg, rollout_fn=None, progress=False)["run_dir"], "models", "last.pth")


def test_served_multi_task_policy_acts_as_in_process(mt_ckpt):
    """The policy server takes the task with each act (one per environment) and answers as the in-process policy;
    an unknown task is a refused request; export refuses a multi-task policy in one line."""
    pytest.importorskip("websockets")
    from modmimic.client import RemoteError, RemotePolicy
    from modmimic.serve import server_from_checkpoint

    local, _ = policy_from_checkpoint(ckpt_path=mt_ckpt)
    ob = {k: np.random.default_rng(1).uniform(-1, 1, (2, 2)).astype(np.float32) for k in ("pos", "goal_pos", "vel")}
    local.start_episode(2)
    want = local(ob, batched_ob=True, tasks=["push-v3", "reach-v3"])
    server = server_from_checkpoint(mt_ckpt, port=0).start()
    try:
        with RemotePolicy(server.url) as remote:
            assert remote.multi_task and remote.metadata["tasks"] == ["reach-v3", "push-v3"]
            remote.start_episode(2)
            assert np.allclose(remote(ob, batched_ob=True, tasks=["push-v3", "reach-v3"]), want, atol=1e-6)
            with pytest.raises(RemoteError, match="not one of the policy's 2 tasks"):
                remote(ob, batched_ob=True, tasks=["door-open-v3", "reach-v3"])
    finally:
        server.stop()
    from modmimic.export import export
    with pytest.raises(ConfigError, match="exporting a multi-task policy"):
        export(mt_ckpt, "torchscript", str(os.path.dirname(mt_ckpt) + "/exported"))


# --- the text encoder: local weights only ---------------------------------------------------------------------------

def make_tiny_clip(path):
    """A CLIP text model with random (seeded) weights and a word-level tokenizer, saved with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing

    words = ["<pad>", "<unk>", "<bos>", "<eos>"] + "pick place the cube open close drawer door push reach".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                         bos_token="<bos>", eos_token="<eos>").save_pretrained(path)
    torch.manual_seed(0)
    cfg = transformers.CLIPTextConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                      projection_dim=8, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    transformers.CLIPTextModelWithProjection(cfg).save_pretrained(path)
    return str(path)


def test_text_encoder_loads_only_from_a_local_directory(tmp_path):
    from modmimic.text import clip_text_embeddings

    for bad in ("openai/clip-vit-base-patch32", str(tmp_path / "absent")):
        with pytest.raises(ConfigError) as e:
            clip_text_embeddings(["pick the cube"], path=bad)
        msg = str(e.value)
        assert "\n" not in msg and "not a local directory" in msg and "nothing is downloaded" in msg
    with pytest.raises(ConfigError, match="is not set"):
        clip_text_embeddings(["pick the cube"], path=None)


def test_clip_text_embeddings_of_a_local_model(tmp_path):
    from modmimic.text import clip_text_embeddings

    d = make_tiny_clip(tmp_path / "clip")
    e = clip_text_embeddings(["pick the cube", "open the drawer", "pick the cube"], path=d)
    assert e.shape == (3, 8) and e.dtype == np.float32 and np.isfinite(e).all()
    assert np.array_equal(e[0], e[2]) and not np.allclose(e[0], e[1])
    # the CLIP model's own forward gives the same vector
    import transformers
    m = transformers.CLIPTextModelWithProjection.from_pretrained(d, local_files_only=True).eval()
    tok = transformers.AutoTokenizer.from_pretrained(d, local_files_only=True)
    with torch.no_grad():
        ref = m(**tok(["open the drawer"], return_tensors="pt")).text_embeds[0].numpy()
    assert np.allclose(e[1], ref, atol=1e-6)


def test_language_policy_end_to_end_with_a_local_clip(three, tiny, tmp_path):
    d = make_tiny_clip(tmp_path / "clip")
    cfg = compose("bc", [task_list(three[:2], ["pick the cube", "open the drawer"], key="lang"),
                         "task.conditioning=language", f"task.text_encoder.kwargs.path={d}",
                         f"train.output_dir={tmp_path / 'runs'}", "train.num_epochs=1",
                         "experiment.epoch_every_n_steps=5", "experiment.logging.log_tb=false", *tiny("bc")])
    out = train(cfg, rollout_fn=None, progress=False)
    policy, ckpt = policy_from_checkpoint(ckpt_path=os.path.join(out["run_dir"], "models", "last.pth"))
    from modmimic.text import clip_text_embeddings
    v = policy.task_vocab
    assert v.conditioning == "language" and v.texts == ["pick the cube", "open the drawer"]
    assert torch.allclose(v.embeddings, torch.from_numpy(clip_text_embeddings(v.texts, path=d)))
    # an instruction it was not trained on is embedded by the checkpoint's (local) text encoder
    assert torch.allclose(v.embed(["close the door"])[0],
                          torch.from_numpy(clip_text_embeddings(["close the door"], path=d)[0]))
    policy.start_episode(1)
    ob = {k: np.zeros(2, np.float32) for k in ("pos", "goal_pos", "vel")}
    assert policy(ob, tasks="close the door").shape == (2,)


# --- evaluation: the task reaches the policy, success per task ------------------------------------------------------

class TaskLine:
    """A point on a line; seed k plays task ``left`` (k even) or ``right`` (k odd), succeeding past -0.5 / +0.5."""
    type = 2
    name = "TaskLine"
    action_dimension = 1

    def reset(self, seed=None):
        self.task = "left" if int(seed) % 2 == 0 else "right"
        self.x, self.ok = 0.0, False
        return {"pos": np.array([self.x])}

    @property
    def current_task(self):
        return self.task

    def step(self, action):
        self.x += 0.2 * float(np.clip(action, -1, 1)[0])
        self.ok = self.x < -0.5 if self.task == "left" else self.x > 0.5
        return {"pos": np.array([self.x])}, float(self.ok), False, {}

    def is_success(self):
        return {"task": bool(self.ok)}

    def get_state(self, include_model=True):
        return {"states": np.array([self.x]), "model": None}

    def serialize(self):
        return {"env_name": self.name, "type": 2, "env_kwargs": {}}

    def close(self):
        pass


def test_rollouts_pass_each_envs_task_and_report_success_per_task(tiny):
    """A multi-task BC policy whose weights send task ``left`` left and ``right`` right (its concatenated one-hot
    drives the output layer): with each environment's own task every episode succeeds; told ``left`` everywhere, the
    ``right`` episodes fail. Two environments at once, so the tasks of a batch differ row by row."""
    from modmimic.algo import algo_factory
    from modmimic.envs.vector import LocalEnvs
    from modmimic.rollout import run_episodes, summarize_tasks

    cfg = compose("bc", ["observation.modalities.obs.low_dim=[pos]", "task.conditioning=onehot", "task.fuse=concat",
                         "algo.actor_layer_dims=[]", "experiment.rollout.enabled=false"])
    algo = algo_factory("bc", cfg, {"pos": (1,)}, 1, task_dim=2)
    lin = algo.nets["policy"].head.linear
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.0, -5.0, 5.0]]))  # [pos, left, right]
        lin.bias.zero_()
    policy = RolloutPolicy(algo, task_vocab=TaskVocab("onehot", ["left", "right"], ["left", "right"], torch.eye(2)))
    envs = LocalEnvs([TaskLine(), TaskLine()])
    eps = run_episodes(policy, envs, n=6, horizon=10, seed=0)
    assert [e.task for e in eps] == ["left", "right"] * 3 and all(e.success for e in eps)
    s = summarize_tasks(eps)
    assert s["Mean_Task_Success_Rate"] == 1.0 and list(s["Tasks"]) == ["left", "right"]
    assert s["Tasks"]["right"]["Num_Episodes"] == 3
    eps = run_episodes(policy, envs, n=6, horizon=10, seed=0, task="left")
    s = summarize_tasks(eps)
    assert [e.success for e in eps] == [True, False] * 3 and all(e.task == "left" for e in eps)
    assert s["Tasks"] == {"left": s["Tasks"]["left"]} and s["Tasks"]["left"]["Success_Rate"] == 0.5
    from modmimic.eval import format_summary
    from modmimic.rollout import summarize
    eps = run_episodes(policy, envs, n=6, horizon=10, seed=0)
    text = format_summary({**summarize(eps), **summarize_tasks(eps), "Episodes_per_Second": 1.0,
                           "Wall_Seconds": 1.0, "num_envs": 2})
    assert "left   success rate 1.000 (3/3)" in text and "mean success rate over 2 tasks 1.000" in text


def test_eval_arguments():
    from modmimic.cli import ArgumentError
    from modmimic.eval import parse_args

    assert parse_args(["checkpoint=x.pth", "instruction=open the drawer"])["task"] == "open the drawer"
    assert parse_args(["checkpoint=x.pth", "task=reach-v3"])["task"] == "reach-v3"
    with pytest.raises(ArgumentError, match="not both"):
        parse_args(["checkpoint=x.pth", "task=a", "instruction=b"])


def test_robomimic_lang_emb_key_is_language_conditioning():
    """robomimic v0.5 lists ``lang_emb`` among the observation keys; modmimic reads it as task.conditioning."""
    from modmimic.robomimic_config import to_overrides

    data = {"algo_name": "bc", "train": {"data": [{"path": "a.hdf5", "lang": "pick the cube"}]},
            "observation": {"modalities": {"obs": {"low_dim": ["robot0_eef_pos", "lang_emb"]}}}}
    recipe, out = to_overrides(data)
    assert recipe == "bc" and "task.conditioning=language" in out and "task.fuse=concat" in out
    assert any(o.startswith("observation.modalities.obs.low_dim=") and "lang_emb" not in o for o in out)
    assert data["observation"]["modalities"]["obs"]["low_dim"] == ["robot0_eef_pos", "lang_emb"]  # not modified


def test_lerobot_task_strings_are_the_episodes_tasks(tmp_path, tiny):
    """A LeRobotDataset folder (written in LeRobot's layout) carries its per-episode task strings into the batch."""
    pytest.importorskip("pyarrow")
    pytest.importorskip("av")
    from lerobot_layout import episodes_data, write_v30

    eps = episodes_data([6, 4, 7, 5, 3])
    root = str(tmp_path / "v30")
    write_v30(root, eps)
    cfg = compose("bc", [f"train.data={root}", "observation.modalities.obs.low_dim=[state,environment_state]",
                         "experiment.rollout.enabled=false", "task.conditioning=onehot", "train.batch_size=16",
                         "algo.actor_layer_dims=[16]"])
    data = build_data(with_data(cfg))
    assert data.task_vocab.names == ["task 0", "task 1"]  # episode e does "task {e % 2}"
    b = data.train_sampler.sample()
    assert torch.equal(b[K.TASK_ID][:, 0], b[K.EPISODE][:, 0] % 2)


@pytest.mark.parametrize("recipe", ["bc_transformer", "bc_rnn_gmm"])
def test_context_and_recurrent_acting_paths_carry_the_task(recipe, tiny):
    """The transformer's observation context and the RNN's step-wise acting see the task embedding: with a FiLM
    that depends on the task, the same observations give different actions for different tasks."""
    from modmimic.algo import algo_factory

    cfg = compose(recipe, ["task.conditioning=onehot", *tiny(recipe)])
    algo = algo_factory(cfg.algo_name, cfg, {"pos": (2,), "goal_pos": (2,), "vel": (2,)}, 2, task_dim=2)
    torch.manual_seed(0)
    with torch.no_grad():
        algo.nets["policy"].encoder.film.proj.weight.normal_()
    policy = RolloutPolicy(algo, task_vocab=TaskVocab("onehot", ["a", "b"], ["a", "b"], torch.eye(2)))
    ob = {k: np.full((2, 2), 0.3, np.float32) for k in ("pos", "goal_pos", "vel")}
    torch.manual_seed(1)
    policy.start_episode(2)
    for _ in range(3):
        a = policy(ob, batched_ob=True, tasks=["a", "b"])
    assert a.shape == (2, 2) and not np.allclose(a[0], a[1], atol=1e-5)


@pytest.mark.parametrize("recipe,fuse", [("diffusion_policy", "film"), ("flow_policy", "concat"), ("act", "film"),
                                         ("act", "concat")])
def test_chunking_policies_take_the_task(three, tiny, tmp_path, recipe, fuse):
    """Diffusion Policy, the flow policy and ACT train on co-training batches that carry each row's task (their
    window / chunk batch functions keep it) and act with it from a checkpoint: the same observation and noise give
    another chunk for another task, the same chunk for the same task."""
    cfg = compose(recipe, [task_list(three[:2], ["reach-v3", "push-v3"]), "task.conditioning=onehot",
                           f"task.fuse={fuse}", f"train.output_dir={tmp_path}", "train.num_epochs=1",
                           "experiment.epoch_every_n_steps=3", "experiment.logging.log_tb=false", *tiny(recipe)])
    out = train(cfg, rollout_fn=None, progress=False)
    policy, _ = policy_from_checkpoint(ckpt_path=os.path.join(out["run_dir"], "models", "last.pth"))
    assert policy.multi_task and policy.policy.task_dim == 2
    with torch.no_grad():  # a task FiLM / token that certainly matters (three steps barely move it); Diffusion
        torch.manual_seed(0)  # Policy and the flow policy act with the EMA copy of the network
        for name, p in policy.policy.nets.named_parameters():
            if "film" in name or "task_proj" in name:
                p.normal_()
    ob = {k: np.full((2, 2), 0.3, np.float32) for k in ("pos", "goal_pos", "vel")}

    def act(tasks):
        policy.start_episode(2)
        torch.manual_seed(1)
        return policy(ob, batched_ob=True, tasks=tasks)

    reach, push = act(["reach-v3", "reach-v3"]), act(["push-v3", "push-v3"])
    assert reach.shape == (2, 2) and not np.allclose(reach, push, atol=1e-4)
    assert np.array_equal(act(["reach-v3", "push-v3"]), np.stack([reach[0], push[1]]))


def test_evaluate_takes_the_task_and_reports_it(tmp_path, tiny):
    """``modmimic.eval``'s path: a multi-task checkpoint in an environment that does not say its task needs task=
    (a clear error without it); with it, every episode gets that task and the summary has it per task. A single-task
    checkpoint refuses task=."""
    from modmimic.data.synthetic import make_reach_dataset
    from modmimic.eval import evaluate
    from modmimic.rollout import RolloutError

    paths = []
    for i in range(2):
        paths.append(str(tmp_path / f"r{i}.hdf5"))
        make_reach_dataset(paths[-1], n_demos=6, seed=i, max_len=10)
    common = [f"train.output_dir={tmp_path / 'runs'}", "train.num_epochs=1", "experiment.epoch_every_n_steps=3",
              "experiment.logging.log_tb=false", *tiny("bc")]
    run = train(compose("bc", [task_list(paths, ["near", "far"]), "task.conditioning=onehot", *common]),
                rollout_fn=None, progress=False)["run_dir"]
    ckpt = os.path.join(run, "models", "last.pth")
    with pytest.raises(RolloutError, match="does not say which task it plays"):
        evaluate(ckpt, episodes=2)
    s = evaluate(ckpt, episodes=3, horizon=5, task="far")
    assert list(s["Tasks"]) == ["far"] and s["Tasks"]["far"]["Num_Episodes"] == 3
    assert [e["task"] for e in s["episodes"]] == ["far"] * 3
    with pytest.raises(ConfigError, match="is not one of the policy's 2 tasks: near, far"):
        evaluate(ckpt, episodes=1, task="elsewhere")
    single = train(compose("bc", [f"train.data={paths[0]}", "experiment.name=single", *common]),
                   rollout_fn=None, progress=False)["run_dir"]
    with pytest.raises(ConfigError, match="not multi-task"):
        evaluate(os.path.join(single, "models", "last.pth"), episodes=1, task="far")


def test_resume_needs_the_same_tasks(three, tiny, tmp_path):
    from modmimic.policy import CheckpointError
    from modmimic.resume import resume_config

    common = ["task.conditioning=onehot", f"train.output_dir={tmp_path}", "train.num_epochs=2",
              "train.stop_after_epoch=1", "experiment.epoch_every_n_steps=2", "experiment.logging.log_tb=false",
              *tiny("bc")]
    part = train(compose("bc", [task_list(three[:2], ["reach-v3", "push-v3"]), *common]), rollout_fn=None,
                 progress=False)
    renamed = task_list(three[:2], ["push-v3", "reach-v3"])
    with pytest.raises(CheckpointError, match=r"trained on tasks \['reach-v3', 'push-v3'\], the data now gives "
                                              r"\['push-v3', 'reach-v3'\]"):
        train(resume_config(part["run_dir"], [renamed, "train.stop_after_epoch=null"]), rollout_fn=None,
              progress=False)
    done = train(resume_config(part["run_dir"], ["train.stop_after_epoch=null"]), rollout_fn=None, progress=False)
    assert done["epoch"] == 2
