"""Prepared datasets (array_record via TFDS, no TensorFlow) and the batch loader."""

import json
import os
import sys

import jax
import numpy as np
import pytest

from sediff_jax.data import builder
from sediff_jax.data.canonical import CanonicalConfig
from sediff_jax.data.loader import BatchLoader, LoaderState
from sediff_jax.data.prepare import PrepareConfig, prepare
from sediff_jax.data.wfdb_reader import RecordError
from sediff_jax.parallel import host_local_to_global, make_mesh
from tests.data.test_datasets import write_mimic_fixture

SMALL = CanonicalConfig(fs=100.0, duration_s=10.0)


@pytest.fixture(scope="module")
def synthetic_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    report = prepare(PrepareConfig(dataset="synthetic", out_dir=str(out), canonical=SMALL, num_synthetic=60))
    return report


def test_synthetic_dataset_build(synthetic_dataset):
    report = synthetic_dataset
    assert report.written == {"train": 48, "validation": 6, "test": 6} and report.skipped == {}
    assert sorted(os.listdir(report.path)) == sorted([
        "dataset_info.json", "features.json", "metadata.json", "prepare_report.json",
        "synthetic-train.array_record-00000-of-00001", "synthetic-validation.array_record-00000-of-00001",
        "synthetic-test.array_record-00000-of-00001"])
    assert "tensorflow" not in sys.modules
    source = builder.open_split(report.path, "train")
    example = source[0]
    assert example["ecg"].shape == (1000, 12) and example["ecg"].dtype == np.float32
    assert example["record_id"] == b"synthetic/train/000000" and example["text"].endswith(b".")
    assert 30 < example["hr_bpm"] < 170 and example["sex"] in (0, 1)
    with open(os.path.join(report.path, "prepare_report.json")) as f:
        assert json.load(f)["read"] == 60
    with pytest.raises(FileExistsError, match="exists"):
        prepare(PrepareConfig(dataset="synthetic", out_dir=os.path.dirname(os.path.dirname(os.path.dirname(
            report.path))), canonical=SMALL, num_synthetic=60))


def test_prepared_ptbxl_matches_direct_reading(data_dir, tmp_path):
    report = prepare(PrepareConfig(dataset="ptbxl", source_dir=str(data_dir / "ptb-xl"), out_dir=str(tmp_path),
                                   canonical=SMALL))
    assert report.read == 500 and report.written == {"train": 353, "validation": 81, "test": 66}
    source = builder.open_split(report.path, "test")
    ids = [source[i]["record_id"].decode() for i in range(len(source))]
    assert len(set(ids)) == 66 and ids == sorted(ids)  # every example carries its record id, in source order
    from sediff_jax.data.canonical import canonicalize
    from sediff_jax.data.ptbxl import read_ptbxl
    from sediff_jax.data.wfdb_reader import read_record

    entry = next(e for e in read_ptbxl(str(data_dir / "ptb-xl"), 100) if e.record_id == ids[0])
    direct = canonicalize(read_record(entry.path, expected_fs=100), SMALL)
    np.testing.assert_array_equal(source[0]["ecg"], direct.ecg)
    np.testing.assert_array_equal(source[0]["r_peaks"], direct.r_peaks)
    assert source[0]["text"].decode() == entry.text


def _corrupt_one_mimic_record(root):
    paths = sorted(root.glob("files/*/*/*/*.dat"))
    with open(paths[3], "r+b") as f:
        f.truncate(1000)
    return paths[3]


def test_corrupted_record_is_skipped_and_counted(tmp_path):
    root = write_mimic_fixture(tmp_path / "mimic")
    bad = _corrupt_one_mimic_record(root)
    report = prepare(PrepareConfig(dataset="mimic", source_dir=str(root), out_dir=str(tmp_path / "out"),
                                   canonical=SMALL))
    assert report.read == 8 and report.total_written == 7 and report.skipped == {"truncated": 1}
    (record_id, reason, message), = report.skipped_records
    assert reason == "truncated" and str(bad) in message


def test_strict_build_fails_and_leaves_nothing(tmp_path):
    root = write_mimic_fixture(tmp_path / "mimic")
    bad = _corrupt_one_mimic_record(root)
    out = tmp_path / "out"
    with pytest.raises(RecordError, match=str(bad)):
        prepare(PrepareConfig(dataset="mimic", source_dir=str(root), out_dir=str(out), canonical=SMALL, strict=True))
    assert not out.exists()  # nothing half-written
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(RecordError):
        prepare(PrepareConfig(dataset="mimic", source_dir=str(root), out_dir=str(out), canonical=SMALL, strict=True))
    assert sorted(os.listdir(out)) == ["keep.txt"]


def test_parallel_workers_give_the_same_dataset(tmp_path):
    root = write_mimic_fixture(tmp_path / "mimic")
    paths = []
    for workers in (1, 2):
        report = prepare(PrepareConfig(dataset="mimic", source_dir=str(root), out_dir=str(tmp_path / f"w{workers}"),
                                       canonical=SMALL, num_workers=workers))
        paths.append(report.path)
    for split in ("train",):
        a, b = builder.open_split(paths[0], split), builder.open_split(paths[1], split)
        assert len(a) == len(b)
        for i in range(len(a)):
            np.testing.assert_array_equal(a[i]["ecg"], b[i]["ecg"])
            assert a[i]["record_id"] == b[i]["record_id"]


# --- loader -----------------------------------------------------------------------------------------------
def test_batches_have_fixed_shapes(synthetic_dataset):
    source = builder.open_split(synthetic_dataset.path, "train")
    loader = BatchLoader(source, 16, seed=0, process_index=0, process_count=1)
    batch = next(loader)
    assert batch["ecg"].shape == (16, 1000, 12) and batch["r_peaks"].shape == (16, 51)
    assert batch["mask"].all() and batch["text"].dtype == object and isinstance(batch["text"][0], str)
    for k in range(16):
        n = batch["num_r_peaks"][k]
        assert (batch["r_peaks"][k, :n] >= 0).all() and (batch["r_peaks"][k, n:] == -1).all()
    assert loader.batches_per_epoch == 3


def test_restarted_loader_continues_exactly(synthetic_dataset):
    source = builder.open_split(synthetic_dataset.path, "train")
    reference = BatchLoader(source, 8, seed=3, process_index=0, process_count=1, prefetch=3)
    expected = [next(reference)["record_id"] for _ in range(14)]  # crosses two epoch boundaries (6 per epoch)
    first = BatchLoader(source, 8, seed=3, process_index=0, process_count=1, prefetch=3)
    for _ in range(5):
        next(first)
    saved = first.state().to_json()
    first.close()
    resumed = BatchLoader(source, 8, seed=3, process_index=0, process_count=1, state=LoaderState.from_json(saved))
    for k in range(5, 14):
        np.testing.assert_array_equal(next(resumed)["record_id"], expected[k])
    # Epochs are reshuffled, and the order follows the seed.
    assert expected[0].tolist() != expected[6].tolist()
    with pytest.raises(ValueError, match="seed"):
        BatchLoader(source, 8, seed=4, process_index=0, process_count=1, state=LoaderState.from_json(saved))


def test_two_hosts_read_disjoint_shards_covering_the_split(synthetic_dataset):
    source = builder.open_split(synthetic_dataset.path, "train")  # 48 examples
    for drop_remainder, global_batch in ((True, 16), (False, 10)):
        seen = []
        steps = []
        for process in range(2):
            loader = BatchLoader(source, global_batch, seed=7, process_index=process, process_count=2,
                                 drop_remainder=drop_remainder, num_epochs=1)
            batches = list(loader)
            steps.append(len(batches))
            seen.append([i for b in batches for i, m in zip(b["index"], b["mask"]) if m])
        assert steps[0] == steps[1]
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == list(range(48))


def test_global_batch_does_not_depend_on_the_number_of_hosts(synthetic_dataset):
    source = builder.open_split(synthetic_dataset.path, "train")
    for drop_remainder, global_batch in ((True, 16), (False, 20)):
        single = list(BatchLoader(source, global_batch, seed=5, process_index=0, process_count=1,
                                  drop_remainder=drop_remainder, num_epochs=2))
        hosts = [list(BatchLoader(source, global_batch, seed=5, process_index=p, process_count=4,
                                  drop_remainder=drop_remainder, num_epochs=2)) for p in range(4)]
        assert all(len(h) == len(single) for h in hosts)
        for k, whole in enumerate(single):
            joined = np.concatenate([h[k]["index"] for h in hosts])
            np.testing.assert_array_equal(joined, whole["index"])
            real = whole["mask"]  # padding slots hold filler
            np.testing.assert_array_equal(np.concatenate([h[k]["mask"] for h in hosts]), real)
            np.testing.assert_array_equal(np.concatenate([h[k]["ecg"] for h in hosts])[real], whole["ecg"][real])


def _assert_same_batches(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key in w:
            np.testing.assert_array_equal(g[key], w[key], err_msg=key)


def test_grain_workers_give_the_same_batches_resume_exactly_and_shard_hosts(synthetic_dataset):
    """grain worker processes assemble exactly the threaded loader's batches: the same order across epochs, the
    same next batch after a restore from a saved position, and the same per-host shards of each global batch."""
    source = builder.open_split(synthetic_dataset.path, "train")  # 48 examples, 6 batches of 8 per epoch
    threads = BatchLoader(source, 8, seed=3, process_index=0, process_count=1, num_epochs=2, prefetch=2)
    expected = list(threads)
    grained = BatchLoader(source, 8, seed=3, process_index=0, process_count=1, num_epochs=2, workers=2)
    got = [next(grained) for _ in range(7)]  # into the second epoch
    saved = grained.state()
    grained.close()
    assert (saved.epoch, saved.batch) == (1, 1)
    resumed = BatchLoader(source, 8, seed=3, process_index=0, process_count=1, num_epochs=2, workers=2,
                          state=LoaderState.from_json(saved.to_json()))
    got += list(resumed)
    _assert_same_batches(got, expected)
    for process in range(2):  # two hosts: each reads its half of every global batch
        host = list(BatchLoader(source, 8, seed=3, process_index=process, process_count=2, num_epochs=1, workers=1))
        for k, whole in enumerate(expected[:6]):
            np.testing.assert_array_equal(host[k]["index"], whole["index"][4 * process : 4 * process + 4])
    with pytest.raises(ValueError, match="workers=-1"):
        BatchLoader(source, 8, process_index=0, process_count=1, workers=-1)


def test_eval_loader_pads_the_last_batch(synthetic_dataset):
    source = builder.open_split(synthetic_dataset.path, "validation")  # 6 examples
    batches = list(BatchLoader(source, 4, shuffle=False, drop_remainder=False, num_epochs=1, process_index=0,
                               process_count=1))
    assert [b["mask"].sum() for b in batches] == [4, 2]
    assert batches[1]["index"].tolist() == [4, 5, -1, -1]


def test_host_batch_becomes_a_global_sharded_array(synthetic_dataset):
    source = builder.open_split(synthetic_dataset.path, "train")
    batch = next(BatchLoader(source, 16, seed=0, process_index=0, process_count=1))
    mesh = make_mesh()
    global_batch = host_local_to_global(batch, mesh)
    assert isinstance(global_batch["ecg"], jax.Array) and global_batch["ecg"].shape == (16, 1000, 12)
    assert len(global_batch["ecg"].sharding.device_set) == len(jax.devices()) == 8
    np.testing.assert_array_equal(np.asarray(global_batch["ecg"]), batch["ecg"])
    assert global_batch["text"] is not None and global_batch["text"].dtype == object


def test_bad_loader_arguments(synthetic_dataset):
    source = builder.open_split(synthetic_dataset.path, "train")
    with pytest.raises(ValueError, match="multiple of the 2 processes"):
        BatchLoader(source, 15, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="no full batch"):
        BatchLoader(source, 64, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="no split 'dev'"):
        builder.open_split(synthetic_dataset.path, "dev")
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        builder.open_split("/nonexistent", "train")


def test_mis_scaled_records_stay_out_and_a_killed_builds_leftovers_go(tmp_path):
    """A header whose gain scales the record to +-1e6 mV is skipped (reason 'amplitude'); the folder a killed
    TFDS build left beside the version is removed by the next build."""
    root = write_mimic_fixture(tmp_path / "mimic")
    header = sorted(root.glob("files/*/*/*/*.hea"))[2]
    lines = header.read_text().splitlines()
    lines[1:] = [" ".join("0.001(0)/mV" if i == 2 else f for i, f in enumerate(line.split()))
                 if line and not line.startswith("#") else line for line in lines[1:]]  # gain 1000 -> 0.001
    header.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    stale = out / "mimic" / builder.config_name(SMALL) / f"incomplete.ABC123_{builder.VERSION}"
    stale.mkdir(parents=True)
    (stale / "half.array_record").write_bytes(b"x")
    report = prepare(PrepareConfig(dataset="mimic", source_dir=str(root), out_dir=str(out), canonical=SMALL))
    assert report.skipped == {"amplitude": 1} and report.total_written == 7, report.skipped_records
    assert "reaches" in report.skipped_records[0][2] and not stale.exists()


_LOADER_OWNER = """
import sys, time
from sediff_jax.data import builder
from sediff_jax.data.loader import BatchLoader
loader = BatchLoader(builder.open_split(sys.argv[1], "train"), 8, seed=3, process_index=0, process_count=1,
                     workers=2)
next(loader)
print("ready", flush=True)
time.sleep(120)
"""


def _descendants(pid: int) -> set[int]:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, set()).add(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the worker processes")
def test_grain_workers_exit_when_their_trainer_is_killed(synthetic_dataset, repo_root):
    """After a SIGKILL of the process that owns the loader (nothing runs its cleanup), its grain workers exit
    within seconds instead of living on with their memory."""
    import signal
    import subprocess
    import time

    owner = subprocess.Popen([sys.executable, "-c", _LOADER_OWNER, synthetic_dataset.path], cwd=repo_root,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        assert owner.stdout.readline().strip() == "ready"
        workers = _descendants(owner.pid)
        assert workers, "the loader started no worker processes"
    finally:
        owner.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{w}") and _running(w) for w in workers):
        time.sleep(0.2)
    left = [w for w in workers if os.path.exists(f"/proc/{w}") and _running(w)]
    owner.wait()  # (reaped only now: the workers must not wait for the zombie to go)
    assert not left, f"worker processes {left} outlived the killed trainer"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False
