"""Dataset jobs (lmsolvers.adapters.jobs): invert-dataset → reconstruct → verify on the
digits DDPM, 1 vs 2 gloo ranks bitwise, kill -9 and resume bitwise, corrupted shards,
bad inputs, no overwrite, environment mismatches."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("diffusers")

from lmsolvers.adapters import DiffusionSampler  # noqa: E402
from lmsolvers.adapters.jobs import (  # noqa: E402
    EnvironmentMismatchError,
    JobConfig,
    JobError,
    invert_dataset,
    reconstruct,
    sample_dataset,
    verify,
)
from lmsolvers.adapters.shards import read_jsonl, read_shard, sha256_file  # noqa: E402

from benchmarks.digits_data import load_digits_split  # noqa: E402
from lmsolvers.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "models" / "digits_ddpm")
STEPS, BATCH, N = 6, 4, 16


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_digits_split("test")[0]


@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DModel

    return UNet2DModel.from_pretrained(MODEL)


@pytest.fixture(scope="module")
def sched_cfg() -> dict:
    return json.loads((Path(MODEL) / "scheduler_config.json").read_text())


@pytest.fixture(scope="module")
def data_npy(tmp_path_factory, digits) -> Path:
    p = tmp_path_factory.mktemp("data") / "digits16.npy"
    np.save(p, digits[:N].numpy())
    return p


def _cfg(out, data, **kw) -> JobConfig:
    base = dict(model=MODEL, steps=STEPS, batch_size=BATCH, progress=False, roundtrip=True)
    base.update(kw)
    return JobConfig(out=str(out), data=str(data), **base)


@pytest.fixture(scope="module")
def ref(tmp_path_factory, data_npy) -> Path:
    """The uninterrupted one-process reference job."""
    out = tmp_path_factory.mktemp("ref") / "job"
    s = invert_dataset(_cfg(out, data_npy))
    assert (s.total, s.computed, s.skipped, s.failed) == (N, N, 0, 0)
    return out


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file()}


def test_roundtrip_invert_reconstruct_verify(ref, digits, unet, sched_cfg, tmp_path):
    recs = read_jsonl(ref / "manifest.jsonl")
    assert [r["id"] for r in recs] == [f"{i:06d}" for i in range(N)]
    # the shards hold what the library computes for the same batch, bit for bit
    sampler = DiffusionSampler(unet, sched_cfg, STEPS, disable_progress=True)
    latent = sampler.invert(digits[4:8])
    tensors, meta = read_shard(ref / recs[4]["shard"], recs[4]["shard_sha256"])
    assert torch.equal(tensors["states"], torch.stack(latent.states, dim=1))
    r = recs[5]
    assert r["batch"] == 1 and r["offset"] == 1 and r["status"] == "ok"
    assert r["batch_ids"] == [f"{i:06d}" for i in range(4, 8)]
    assert r["method_key"] == latent.method_key and r["grid"] == sampler.grid.fingerprint()
    assert r["nodes"] == list(latent.nodes) and r["env"]["threads"] == 1
    assert dict(map(tuple, r["context"])) == sampler.context
    assert r["state_dtype"] == "torch.float64" and r["model"]["config_hash"] == \
        sampler.context["model_config"]
    assert json.loads(meta["ids"]) == r["batch_ids"]
    # reconstruct: x0 within float64 round-off of the data, and equal to the library's
    rec_dir = tmp_path / "recon"
    s = reconstruct(ref, rec_dir, progress=False)
    assert (s.computed, s.failed) == (N, 0)
    x0 = torch.cat([read_shard(p)[0]["x0"] for p in sorted((rec_dir / "shards").glob(
        "*.safetensors"))])
    assert torch.equal(x0[4:8], sampler.sample(latent))
    assert float((x0 - digits[:N].double()).abs().max()) < 1e-9
    # verify: every sample ok, errors measured and equal to the recorded round trips
    summary, rows = verify(ref, report=tmp_path / "report.jsonl", progress=False)
    assert summary.ok and summary.total == N
    assert [row["status"] for row in rows] == ["ok"] * N
    assert summary.max_error == max(rr["roundtrip_error"] for rr in recs) < 1e-9
    assert read_jsonl(tmp_path / "report.jsonl") == rows


def test_two_gloo_ranks_give_bitwise_the_same_files(ref, data_npy, tmp_path):
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", "2", "-m", "lmsolvers", "invert-dataset", "--model", MODEL,
           "--data", str(data_npy), "--out", str(out), "--steps", str(STEPS), "--batch-size",
           str(BATCH), "--roundtrip", "--no-progress"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| ranks × threads" in r.stdout and "2 × 1" in r.stdout
    assert _files(out) == _files(ref)  # shards, parts, manifest and job.json, bitwise


def test_kill_and_resume_gives_the_same_bytes(tmp_path):
    # a closed-form ε entry point (tests/jobs_entry.py): the subprocess starts fast, and
    # 60 one-sample shards leave time to kill it mid-job
    n = 60
    args = ["invert-dataset", "--eps", "tests.jobs_entry:gaussian", "--data",
            "tests.jobs_entry:gaussian_data", "--steps", "10", "--batch-size", "1",
            "--no-progress"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "lmsolvers", *args, "--out", str(killed)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not list((killed / "shards").glob("*.jsonl")):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in (killed / "shards").glob("*.jsonl")}
    assert 1 <= len(done) < n and not (killed / "manifest.jsonl").exists()
    cwd = os.getcwd()
    os.chdir(ROOT)  # the entry points resolve from the working directory, as on the CLI
    try:
        s = main([*args, "--out", str(killed)])
        assert s == 0
        recs = read_jsonl(killed / "manifest.jsonl")
        assert len(recs) == n and {r["status"] for r in recs} == {"ok"}
        for name, stamp in done.items():  # finished shards were not recomputed
            p = killed / "shards" / name
            assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp
        whole = tmp_path / "whole"
        s = invert_dataset(JobConfig(out=str(whole), eps="tests.jobs_entry:gaussian",
                                     data="tests.jobs_entry:gaussian_data", steps=10,
                                     batch_size=1, progress=False))
        assert (s.computed, s.failed) == (n, 0)
    finally:
        os.chdir(cwd)
    assert _files(killed) == _files(whole)  # no stale temporary either
    # the resumed run reported what it skipped
    summary, rows = verify(killed, progress=False)
    assert summary.ok and summary.max_error < 1e-12


def test_verify_detects_altered_truncated_missing_and_foreign_shards(ref, tmp_path, data_npy):
    job = tmp_path / "job"
    shutil.copytree(ref, job)
    s0, s1, s2, s3 = sorted((job / "shards").glob("*.safetensors"))
    raw = bytearray(s1.read_bytes())
    raw[-3] ^= 0x01  # one bit of one latent value
    s1.write_bytes(bytes(raw))
    s2.write_bytes(s2.read_bytes()[:-100])
    s3.unlink()
    (job / "shards" / "shard-000099.safetensors").write_bytes(s0.read_bytes())
    summary, rows = verify(job, progress=False)
    status = {r["id"]: r["status"] for r in rows if r["id"] is not None}
    assert [status[f"{i:06d}"] for i in range(N)] == (
        ["ok"] * 4 + ["hash-mismatch"] * 8 + ["missing-shard"] * 4)
    assert summary.problems == {"hash-mismatch": 8, "missing-shard": 4, "orphan-shard": 1}
    assert not summary.ok
    msg = next(r["message"] for r in rows if r["status"] == "hash-mismatch")
    assert str(s1) in msg and "altered or truncated" in msg
    # a latent shard of another grid (other steps) under the right ids and a matching hash:
    # the manifest/shard identity check names the file and the difference
    other = tmp_path / "other"
    invert_dataset(_cfg(other, data_npy, steps=STEPS - 1, roundtrip=False))
    foreign = sorted((other / "shards").glob("*.safetensors"))[0]
    shutil.copy(foreign, s0)
    recs = read_jsonl(job / "manifest.jsonl")
    for r in recs:
        if r["batch"] == 0:
            r["shard_sha256"] = sha256_file(s0)
    (job / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    summary, rows = verify(job, progress=False)
    bad = [r for r in rows if r["batch"] == 0]
    assert {r["status"] for r in bad} == {"identity-mismatch"}
    assert str(s0) in bad[0]["message"] and "another method or grid" in bad[0]["message"]
    # a shard of another batch of the same job: ids disagree
    shutil.copy(ref / "shards" / s1.name, s0)
    for r in recs:
        if r["batch"] == 0:
            r["shard_sha256"] = sha256_file(s0)
    (job / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    _, rows = verify(job, progress=False, recompute=False)
    bad = [r for r in rows if r["batch"] == 0]
    assert {r["status"] for r in bad} == {"shard-mismatch"}
    assert "manifest/shard disagreement" in bad[0]["message"]


def _png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path)


def test_bad_images_are_reported_and_the_job_goes_on(digits, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    u8 = ((digits[:6, 0].numpy() + 1.0) * 127.5).round().astype(np.uint8)
    for i in range(6):
        _png(folder / f"d{i}.png", u8[i])
    (folder / "d2.png").write_bytes(b"not a png at all")
    _png(folder / "d4.png", np.zeros((8, 8, 3), np.uint8))  # RGB for a 1-channel model
    _png(folder / "e_big.png", np.zeros((9, 9), np.uint8))  # wrong size
    (folder / "notes.txt").write_text("ignored: not an image")
    out = tmp_path / "job"
    s = invert_dataset(_cfg(out, folder))
    assert (s.total, s.failed) == (7, 3) and not s.ok
    recs = {r["id"]: r for r in read_jsonl(out / "manifest.jsonl")}
    assert sorted(recs) == ["d0.png", "d1.png", "d2.png", "d3.png", "d4.png", "d5.png",
                            "e_big.png"]
    assert recs["d2.png"]["status"] == "failed" and str(folder / "d2.png") in \
        recs["d2.png"]["error"] and "unreadable image" in recs["d2.png"]["error"]
    assert "channels" in recs["d4.png"]["error"] or "(3, 8, 8)" in recs["d4.png"]["error"]
    assert str(folder / "e_big.png") in recs["e_big.png"]["error"]
    assert "(1, 9, 9)" in recs["e_big.png"]["error"]
    # the good images of a batch form the batch; pixels map to x/127.5 - 1
    from lmsolvers.adapters.jobs.inputs import Dataset

    x, _ = Dataset(str(folder)).load(0)
    assert torch.equal(x, torch.from_numpy(u8[0]).float()[None] / 127.5 - 1.0)
    assert recs["d3.png"]["batch_ids"] == ["d0.png", "d1.png", "d3.png"]
    assert recs["d5.png"]["batch_ids"] == ["d5.png"]
    assert all(recs[k]["status"] == "ok" for k in ("d0.png", "d1.png", "d3.png", "d5.png"))
    summary, rows = verify(out, progress=False)
    assert summary.failed == 3 and summary.problems == {}
    assert {r["id"] for r in rows if r["status"] == "ok"} == {"d0.png", "d1.png", "d3.png",
                                                              "d5.png"}
    assert summary.max_error < 1e-9


def test_never_overwrites_without_the_flag(ref, data_npy, tmp_path):
    job = tmp_path / "job"
    shutil.copytree(ref, job)
    before = _files(job)
    with pytest.raises(JobError, match="holds results of another job.*steps.*--overwrite"):
        invert_dataset(_cfg(job, data_npy, steps=STEPS + 1))
    s = invert_dataset(_cfg(job, data_npy))  # the same job: everything is already there
    assert (s.skipped, s.computed) == (N, 0)
    assert _files(job) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("precious")
    with pytest.raises(JobError, match="not empty and holds no job.json"):
        invert_dataset(_cfg(other, data_npy))
    (tmp_path / "report.jsonl").write_text("old")
    with pytest.raises(JobError, match="never overwritten"):
        verify(job, report=tmp_path / "report.jsonl", recompute=False, progress=False)
    # resuming in another environment would mix bits of two set-ups in one data set
    header = json.loads((job / "job.json").read_text())
    header["env"]["torch"] = "0.0-other"
    (job / "job.json").write_text(json.dumps(header))
    with pytest.raises(JobError, match="torch: '0.0-other' recorded.*--allow-env-mismatch"):
        invert_dataset(_cfg(job, data_npy))
    small = tmp_path / "small.npy"
    np.save(small, np.load(data_npy)[:4])
    s = invert_dataset(_cfg(job, small, overwrite=True, roundtrip=False))
    assert (s.total, s.computed) == (4, 4)
    assert sorted(p.name for p in (job / "shards").glob("*.safetensors")) == [
        "shard-000000.safetensors"]


def test_thread_count_mismatch_is_detected(ref, tmp_path):
    with pytest.raises(EnvironmentMismatchError, match="threads: 1 recorded, 2 now"):
        reconstruct(ref, tmp_path / "r", threads=2, progress=False)
    summary, rows = verify(ref, threads=2, progress=False)
    assert summary.problems == {"env-mismatch": N}
    assert "threads: 1 recorded, 2 now" in rows[0]["message"]
    torch.set_num_threads(1)
    # told to go on anyway, it warns (here: a job recorded with deterministic algorithms)
    job = tmp_path / "job"
    shutil.copytree(ref, job)
    header = json.loads((job / "job.json").read_text())
    header["env"]["deterministic"] = True
    (job / "job.json").write_text(json.dumps(header))
    with pytest.raises(EnvironmentMismatchError, match="deterministic: True recorded"):
        reconstruct(job, tmp_path / "r1", progress=False)
    with pytest.warns(RuntimeWarning, match="deterministic: True recorded, False now"):
        s = reconstruct(job, tmp_path / "r2", allow_env_mismatch=True, progress=False)
    assert (s.computed, s.failed) == (N, 0)


def test_bitexact_job_round_trips_bitwise(data_npy, tmp_path):
    out = tmp_path / "bx"
    s = invert_dataset(_cfg(out, data_npy, bitexact=True, batch_size=8))
    assert s.bitwise == N and s.failed == 0
    rec = read_jsonl(out / "manifest.jsonl")[0]
    tensors, _ = read_shard(out / rec["shard"])
    assert list(tensors) == ["fixed"] and tensors["fixed"].dtype == torch.int64
    summary, rows = verify(out, progress=False)
    assert summary.ok and summary.bitwise == N and all(r["bitwise"] for r in rows)


def test_sample_dataset_matches_the_sampler(unet, sched_cfg, tmp_path):
    from lmsolvers.adapters.jobs.verbs import _sample_seed

    out = tmp_path / "samples"
    s = sample_dataset(JobConfig(out=str(out), model=MODEL, steps=STEPS, batch_size=3,
                                 num_samples=5, seed=7, progress=False, images=True))
    assert (s.computed, s.failed) == (5, 0)
    recs = read_jsonl(out / "manifest.jsonl")
    noise = torch.stack([torch.randn((1, 8, 8), generator=torch.Generator().manual_seed(
        _sample_seed(7, i))) for i in range(3)])
    sampler = DiffusionSampler(unet, sched_cfg, STEPS, disable_progress=True)
    x0 = read_shard(out / recs[0]["shard"], recs[0]["shard_sha256"])[0]["x0"]
    assert torch.equal(x0, sampler.sample(noise.double()))
    assert len(list((out / "images").glob("*.png"))) == 5


def test_cli_errors_name_the_file(tmp_path, data_npy, capsys):
    bad = tmp_path / "model"
    bad.mkdir()
    (bad / "config.json").write_text('{"_class_name": "UNet2DModel", "in_channels": 1}')
    (bad / "scheduler_config.json").write_text("{}")
    code = main(["invert-dataset", "--model", str(bad), "--data", str(data_npy), "--out",
                 str(tmp_path / "o"), "--steps", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"model directory {bad} does not load" in err


def test_per_sample_prompts_with_guidance_on_a_conditional_model(tmp_path):
    """A text-conditioned UNet (tiny, offline): prompts come as precomputed embeddings,
    one per sample from a CSV; the batch's ε is guided with each row's own embedding."""
    from lmsolvers.adapters.tiny import (
        SD_SCHEDULER_CONFIG,
        tiny_conditional_unet,
        tiny_prompt_embeds,
    )
    from safetensors.torch import save_file

    model = tmp_path / "cond"
    unet = tiny_conditional_unet()
    unet.save_pretrained(model)
    (model / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDIMScheduler", **SD_SCHEDULER_CONFIG}))
    embeds = {"cat": tiny_prompt_embeds(1)[0], "dog": tiny_prompt_embeds(2)[0],
              "negative": tiny_prompt_embeds(3)[0]}
    save_file(embeds, tmp_path / "embeds.safetensors")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, 8, 8, generator=g)
    np.save(tmp_path / "lat.npy", x.numpy())
    names = ["cat", "dog", "dog", "cat", "dog"]
    (tmp_path / "prompts.csv").write_text("id,prompt\n" + "".join(
        f"{i:06d},{n}\n" for i, n in enumerate(names)))
    out = tmp_path / "job"
    cfg = JobConfig(out=str(out), model=str(model), data=str(tmp_path / "lat.npy"),
                    method="obelm", steps=4, guidance=3.0, batch_size=3, progress=False,
                    prompt_embeds=str(tmp_path / "embeds.safetensors"),
                    prompts=str(tmp_path / "prompts.csv"), roundtrip=True)
    s = invert_dataset(cfg)
    assert (s.computed, s.failed) == (5, 0) and s.max_error < 1e-9
    recs = read_jsonl(out / "manifest.jsonl")
    assert [r["prompt"] for r in recs] == names and recs[0]["guidance"] == 3.0
    # batch 0 equals the library's inversion with the stacked per-row embeddings
    sampler = DiffusionSampler(unet, {"_class_name": "DDIMScheduler", **SD_SCHEDULER_CONFIG},
                               4, "obelm", 3.0, torch.stack([embeds[n] for n in names[:3]]),
                               embeds["negative"][None], disable_progress=True)
    latent = sampler.invert(x[:3])
    states = read_shard(out / recs[0]["shard"])[0]["states"]
    assert torch.equal(states, torch.stack(latent.states, dim=1))
    summary, _ = verify(out, progress=False)
    assert summary.ok and summary.max_error < 1e-9
    # an embedding changed after the inversion: reported, not a silently different result
    embeds["dog"] = embeds["dog"] + 1e-3
    save_file(embeds, tmp_path / "embeds.safetensors")
    summary, rows = verify(out, progress=False)
    assert summary.problems == {"prompt-changed": 5}
    assert "embedding of prompt 'dog' (sample '000001') changed" in rows[0]["message"]
    with pytest.raises(JobError, match="takes no prompt"):
        invert_dataset(_cfg(tmp_path / "x", tmp_path / "lat.npy", prompt="cat",
                            prompt_embeds=str(tmp_path / "embeds.safetensors")))


@given(dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64,
                              torch.int64]),
       shape=st.lists(st.integers(0, 4), min_size=1, max_size=4),
       seed=st.integers(0, 2**31 - 1),
       meta=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=20),
                            max_size=4))
def test_shards_store_any_tensor_bitwise_and_deterministically(tmp_path_factory, dtype, shape,
                                                                seed, meta):
    """A shard returns every bit it was given (NaN payloads, −0, subnormals included), and
    the same tensors and metadata give the same bytes (what resume and 1-vs-2-rank equality
    rest on)."""
    from lmsolvers.adapters.shards import shard_bytes, write_shard

    g = torch.Generator().manual_seed(seed)
    n = int(np.prod(shape))
    bits = torch.randint(-2**62, 2**62, (n,), generator=g, dtype=torch.int64)
    if dtype == torch.int64:
        t = bits.reshape(shape)
    else:
        width = {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
        t = bits.to(width).view(dtype).reshape(shape) if width != torch.int64 else \
            bits.view(dtype).reshape(shape)
    path = tmp_path_factory.mktemp("shard") / "s.safetensors"
    sha = write_shard(path, {"states": t}, meta)
    back, got = read_shard(path, sha)
    assert back["states"].dtype == dtype and back["states"].shape == t.shape
    width = {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
    assert torch.equal(back["states"].view(width), t.view(width))
    assert got == meta
    assert shard_bytes({"states": t.clone()}, dict(reversed(list(meta.items())))) == \
        path.read_bytes()


# ------------------------------------------------- nothing lost, nothing mixed (issue 24)
def test_a_job_directory_is_never_the_output_of_another_command(ref, data_npy, tmp_path,
                                                                capsys):
    job = tmp_path / "job"
    shutil.copytree(ref, job)
    before = _files(job)
    # reconstruct onto the job it reads (or into its shards), --overwrite included
    for out in (job, job / "shards"):
        with pytest.raises(JobError, match="job being read"):
            reconstruct(job, out, overwrite=True, progress=False)
    code = main(["reconstruct", str(job), "--out", str(job), "--overwrite", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "never the output of another command" in err
    assert _files(job) == before
    # another command's job directory is never replaced, --overwrite included
    rec = tmp_path / "rec"
    reconstruct(job, rec, progress=False)
    with pytest.raises(JobError, match="directory of a reconstruct job"):
        invert_dataset(_cfg(rec, data_npy, overwrite=True))
    other = tmp_path / "other"
    shutil.copytree(ref, other)
    with pytest.raises(JobError, match="directory of a invert-dataset job|invert-dataset job"):
        reconstruct(job, other, overwrite=True, progress=False)
    assert _files(other) == before
    # a report never replaces a job's own files
    for name in ("manifest.jsonl", "job.json", "shards/shard-000000.jsonl", "shards/new.jsonl"):
        with pytest.raises(JobError, match="never replaced by a report"):
            verify(job, report=job / name, overwrite=True, recompute=False, progress=False)
    code = main(["verify", str(job), "--report", str(job / "manifest.jsonl"), "--overwrite",
                 "--no-recompute", "--no-progress"])
    assert code == 2 and "never replaced by a report" in capsys.readouterr().err
    assert _files(job) == before
    summary, _ = verify(job, recompute=False, progress=False)
    assert summary.ok


def test_a_damaged_job_record_is_a_one_line_error(ref, tmp_path, capsys):
    job = tmp_path / "job"
    shutil.copytree(ref, job)
    report = tmp_path / "report.jsonl"
    verify(job, report=report, recompute=False, progress=False)
    shutil.copy(report, job / "manifest.jsonl")  # what `verify --report J/manifest.jsonl` did
    code = main(["verify", str(job), "--no-recompute", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "manifest.jsonl, record 1: lacks" in err and "rebuilds it from the parts" in err
    # rerunning the inversion rebuilds the manifest from the parts, bitwise
    s = invert_dataset(JobConfig(**{**json.loads((job / "job.json").read_text())["config"],
                                    "out": str(job), "progress": False, "roundtrip": True}))
    assert (s.skipped, s.computed) == (N, 0) and _files(job) == _files(ref)
    header = json.loads((job / "job.json").read_text())
    del header["grid"]
    (job / "job.json").write_text(json.dumps(header))
    code = main(["verify", str(job), "--no-recompute", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "lacks 'grid'" in err


def test_resume_recomputes_batches_whose_files_are_not_their_own(ref, data_npy, tmp_path):
    job = tmp_path / "job"
    shutil.copytree(ref, job)
    (job / "manifest.jsonl").unlink()  # killed before the merge
    parts = sorted((job / "shards").glob("*.jsonl"))
    shutil.copy(parts[1], parts[2])  # batch 1's part over batch 2's
    shard = sorted((job / "shards").glob("*.safetensors"))[3]
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0x01  # batch 3's shard altered after it was written
    shard.write_bytes(bytes(raw))
    with pytest.warns(RuntimeWarning, match="is not what this job wrote") as caught:
        s = invert_dataset(_cfg(job, data_npy))
    said = " ".join(str(w.message) for w in caught)
    assert "batch 2 " in said and "batch 3 " in said and "batch 1 " not in said
    assert (s.skipped, s.computed, s.failed) == (8, 8, 0)
    assert _files(job) == _files(ref)  # 16 distinct samples, bitwise the uninterrupted job


def test_resume_refuses_data_that_changed(digits, tmp_path):
    data = tmp_path / "data.npy"
    np.save(data, digits[:N].numpy())
    job = tmp_path / "job"
    invert_dataset(_cfg(job, data, roundtrip=False))
    (job / "manifest.jsonl").unlink()  # killed after three of four batches
    (job / "shards" / "shard-000003.jsonl").unlink()
    x = np.load(data)
    x[1] = -x[1]  # a sample of a finished batch changes
    np.save(data, x)
    with pytest.raises(JobError, match=r"data changed since this job started: .*\[1\]"):
        invert_dataset(_cfg(job, data, roundtrip=False))
    x[1] = -x[1]
    x[13] = -x[13]  # only a sample of the unfinished batch changes: the resume is consistent
    np.save(data, x)
    s = invert_dataset(_cfg(job, data, roundtrip=False))
    assert (s.skipped, s.computed) == (12, 4)
    fresh = tmp_path / "fresh"
    invert_dataset(_cfg(fresh, data, roundtrip=False))
    assert _files(job) == _files(fresh)


def test_data_outside_the_models_range_fails_per_sample(digits, tmp_path):
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, ((digits[:4] + 1.0) * 127.5).numpy())  # 8-bit scale, not [-1, 1]
    s = invert_dataset(_cfg(tmp_path / "job", pixels, roundtrip=False))
    assert (s.failed, s.computed) == (4, 4)
    rec = read_jsonl(tmp_path / "job" / "manifest.jsonl")[0]
    assert "outside the model's data range [-1, 1]" in rec["error"] and "x/127.5" in rec["error"]
    code = main(["invert-dataset", "--model", MODEL, "--data", str(pixels), "--out",
                 str(tmp_path / "any"), "--steps", "2", "--data-range", "any", "--no-progress"])
    assert code == 0


def test_resume_checks_the_parts_of_failed_batches_too(digits, tmp_path):
    """A batch whose samples all failed has no shard: its part alone says it is done, so a
    part copied from another such batch is caught by its ids."""
    x = digits[:N].numpy().copy()
    x[8:] = np.nan  # batches 2 and 3 fail entirely
    data = tmp_path / "data.npy"
    np.save(data, x)
    job = tmp_path / "job"
    invert_dataset(_cfg(job, data, roundtrip=False))
    whole = _files(job)
    (job / "manifest.jsonl").unlink()
    shutil.copy(job / "shards" / "shard-000002.jsonl", job / "shards" / "shard-000003.jsonl")
    with pytest.warns(RuntimeWarning, match="batch 3 is not what this job wrote"):
        s = invert_dataset(_cfg(job, data, roundtrip=False))
    assert (s.skipped, s.computed, s.failed) == (12, 4, 8)
    assert _files(job) == whole
