"""The memory rules of bignmf.plan: pure arithmetic, no Dask, no Zarr, no machine asked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bignmf import plan
from bignmf.plan import (
    Plan,
    auto_column_chunks,
    blocks_per_task,
    cache_budget,
    choose_column_chunks,
    choose_scheduler,
    choose_w_storage,
    column_bounds,
    fused_task_bytes,
    make_plan,
    process_memory,
    task_memory,
    worker_memory,
)
from tests.conftest import imported_modules

KiB, MiB, GiB = 2**10, 2**20, 2**30
PLAN_PY = Path(plan.__file__)


# --------------------------------------------------------------------------- the module


def test_importing_the_module_imports_no_dask_nor_zarr():
    # The package's __init__ imports the engine (and so Dask): the module is loaded from its
    # file, alone, to see what *it* imports.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('plan_alone', {str(PLAN_PY)!r})\n"
        "module = sys.modules['plan_alone'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert module.make_plan(100, 10, 50, 2, 8, 4, 1, ram=2**30).n_blocks == 4\n"
        "heavy = ('dask', 'distributed', 'zarr', 'scipy', 'bignmf')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_module_imports_only_the_standard_library_and_numpy():
    allowed = set(sys.stdlib_module_names) | {"numpy", "__future__"}
    for name in imported_modules(PLAN_PY):
        assert name.split(".")[0] in allowed, name


@pytest.mark.parametrize(
    ("n_blocks", "n_tasks", "expected"),
    [(40, 20, 2), (41, 20, 3), (1, 8, 1), (7, 1, 7), (5, 0, 5), (3, 10, 1)],
)
def test_blocks_per_task(n_blocks, n_tasks, expected):
    assert blocks_per_task(n_blocks, n_tasks) == expected


@pytest.mark.parametrize(
    ("workers", "ram", "threads", "expected"),
    [
        ([(8 * GiB, 4), (6 * GiB, 2)], None, 1, 2 * GiB),  # the smallest share, not limit
        ([(6 * GiB, 4), (8 * GiB, 4)], None, 1, 1536 * MiB),
        ([(10, 3)], None, 1, 3),  # whole bytes per thread
        ([(64 * MiB, 1)], None, 1, 64 * MiB),  # a tiny worker
        (None, 32 * GiB, 16, 2 * GiB),  # local: RAM per thread
        ([], 32 * GiB, 1, 32 * GiB),  # a client with no workers: RAM
        (None, 32 * GiB, 0, 32 * GiB),
    ],
)
def test_task_memory(workers, ram, threads, expected):
    assert task_memory(workers, ram, threads) == expected


@pytest.mark.parametrize(
    ("workers", "expected"),
    [([(8 * GiB, 4), (6 * GiB, 2)], 6 * GiB), ([(64 * MiB, 1)], 64 * MiB), (None, 32 * GiB)],
)
def test_process_memory(workers, expected):
    assert process_memory(workers, 32 * GiB) == expected


def test_workers_without_a_limit_count_as_ram():
    listed = worker_memory([(6 * GiB, 4), (None, 2), (0, None), (GiB, 0)], ram=16 * GiB)
    assert listed == [(6 * GiB, 4), (16 * GiB, 2), (16 * GiB, 1), (GiB, 1)]
    with pytest.raises(ValueError, match="RAM is needed"):
        worker_memory([(None, 2)], ram=None)
    with pytest.raises(ValueError, match="RAM is needed"):
        task_memory(None, None)
    with pytest.raises(ValueError, match="RAM is needed"):
        process_memory([], None)


# --------------------------------------------------------------------------- column ranges


@pytest.mark.parametrize(
    ("blocks", "factor"),  # (⌈log2 b⌉ + 5) values of n × k
    [(0, 5), (1, 5), (2, 6), (3, 7), (4, 7), (5, 8), (8, 8), (9, 9), (1024, 15)],
)
def test_fused_task_bytes(blocks, factor):
    assert fused_task_bytes(1000, 20, 4, blocks) == factor * 1000 * 20 * 4


NEED = fused_task_bytes(10**6, 20, 4, 2)  # 480 MB


@pytest.mark.parametrize(
    ("n", "k", "memory", "expected"),
    [
        (10**6, 20, 4 * NEED, 1),  # exactly fits a quarter
        (10**6, 20, 4 * NEED - 1, 2),  # a byte over: at least two ranges
        (10**6, 20, 4 * NEED - 4, 2),
        (10**6, 20, 2 * NEED, 2),
        (10**6, 20, NEED, 4),
        (10**6, 20, NEED // 10, 40),
        (10**6, 2000, 4 * NEED, 100),  # k large forces ranges
        (1000, 20, 1, 1000),  # a tiny worker: one column per range, never more ranges than n
        (1, 5, 1, 1),
    ],
)
def test_fewest_column_ranges(n, k, memory, expected):
    assert choose_column_chunks(n, k, 4, 2, memory) == expected


@pytest.mark.parametrize(
    ("n", "ranges", "bounds"),
    [(10, 1, (0, 10)), (10, 3, (0, 3, 7, 10)), (5, 5, (0, 1, 2, 3, 4, 5)), (7, 2, (0, 4, 7))],
)
def test_column_bounds(n, ranges, bounds):
    assert column_bounds(n, ranges) == bounds


@pytest.mark.parametrize("bad", [0, 6, -1])
def test_column_bounds_refuse_bad_counts(bad):
    with pytest.raises(ValueError, match="column_chunks must be between 1 and n = 5"):
        column_bounds(5, bad)


@pytest.mark.parametrize(
    ("beta_loss", "init", "k", "memory", "expected"),
    [
        (1.0, None, 20, 1, 1),  # only the Frobenius loss is cut, however little memory
        (0.0, "random", 20, 1, 1),
        (2.0, "random", 20, 4 * NEED, 1),
        (2.0, "random", 20, NEED, 4),
        # NNDSVD's sketches, n × (k + 10) in float64, are cut too: 3× H's float32 here
        (2.0, "nndsvda", 20, 4 * NEED, 3),
        (2.0, "nndsvd", 20, NEED, 12),
        (2.0, None, 20, NEED, 12),  # the default init is NNDSVDA when k <= min(m, n)
        (2.0, None, 300, 400 * NEED, 1),  # k > m: the default is random, no sketch
        (2.0, "custom", 20, NEED, 4),
    ],
)
def test_automatic_column_ranges(beta_loss, init, k, memory, expected):
    got = auto_column_chunks(200, 10**6, k, 4, 2, memory, beta_loss, init)
    assert got == expected


# --------------------------------------------------------------------------- W and the cache

W_NEED = 1000 * 10 * 8 * 3  # three copies of 1000 × 10 float64


@pytest.mark.parametrize(
    ("requested", "distributed", "memory", "expected"),
    [
        ("auto", False, 4 * W_NEED, "memory"),  # exactly a quarter of RAM
        ("auto", False, 4 * (W_NEED - 1), "zarr"),  # a byte over the quarter
        ("auto", False, 10 * GiB, "memory"),
        ("auto", False, 1, "zarr"),  # a tiny machine
        ("memory", False, 1, "memory"),  # a request wins
        ("zarr", False, 10 * GiB, "zarr"),
        ("auto", True, 10 * GiB, "zarr"),  # distributed: always on disk
        ("zarr", True, None, "zarr"),
        ("memory", False, None, "memory"),  # no RAM asked where the rule does not need it
    ],
)
def test_w_storage(requested, distributed, memory, expected):
    storage, why = choose_w_storage(1000, 10, 8, memory, requested, distributed)
    assert storage == expected
    assert why


@pytest.mark.parametrize(
    ("requested", "distributed", "message"),
    [
        ("disk", False, "w_storage must be one of 'auto', 'memory', 'zarr', not 'disk'"),
        ("memory", True, "cannot be used on a distributed scheduler"),
        ("auto", False, "needs this machine's RAM"),
    ],
)
def test_w_storage_refuses(requested, distributed, message):
    with pytest.raises(ValueError, match=message):
        choose_w_storage(1000, 10, 8, None, requested, distributed)


def test_w_storage_rule_behind_the_old_function(monkeypatch):
    from bignmf.store import factors

    monkeypatch.setattr(factors, "machine_memory_bytes", lambda: 4 * W_NEED)
    assert factors.choose_storage(1000, 10, "float64") == "memory"
    monkeypatch.setattr(factors, "machine_memory_bytes", lambda: 4 * W_NEED - 4)
    assert factors.choose_storage(1000, 10, "float64") == "zarr"
    assert factors.choose_storage(1000, 10, "float64", "auto", distributed=True) == "zarr"


@pytest.mark.parametrize(
    ("budget", "memory", "expected"),
    [
        (None, 6 * GiB, None),
        ("auto", 6 * GiB, 1536 * MiB),  # a quarter of the smallest worker
        ("auto", 4001, 1000),  # whole bytes, rounded down
        ("auto", 64 * MiB, 16 * MiB),
        (4 * GiB, None, 4 * GiB),  # bytes given: no memory asked
        (0, None, 0),
    ],
)
def test_cache_budget(budget, memory, expected):
    assert cache_budget(budget, memory) == expected


def test_cache_auto_needs_the_memory():
    with pytest.raises(ValueError, match="memory of one process"):
        cache_budget("auto", None)


# --------------------------------------------------------------------------- the plan


def _local(**overrides) -> Plan:
    options = {"ram": 32 * GiB, "threads": 16, **overrides}
    return make_plan(163840, 50000, 10**8, 64, 4, 40, 2, **options)


def test_a_local_plan():
    p = _local(cache_a="auto")
    assert p.shape == (163840, 50000)
    assert p.nnz == 10**8
    assert p.k == 64
    assert p.itemsize == 4
    assert (p.n_blocks, p.rows_per_block, p.blocks_per_task) == (40, 4096, 2)
    assert p.task_memory == 2 * GiB
    assert p.column_ranges is None
    assert p.column_chunks == 1
    assert p.h_task_bytes == fused_task_bytes(50000, 64, 4, 2)
    assert p.w_storage == "memory"
    assert p.w_bytes == 163840 * 64 * 4 * 3
    assert p.cache_budget == 8 * GiB  # a quarter of RAM
    assert p.workers is None
    assert p.worker_limits is None
    assert not p.distributed
    assert p.ram == 32 * GiB
    assert p.threads == 16


def test_a_distributed_plan():
    workers = [(6 * GiB, 4), (None, 8)]
    p = make_plan(163840, 50000, 10**8, 64, 4, 40, 2, workers=workers, ram=64 * GiB, cache_a="auto")
    assert p.distributed
    assert p.workers == ((6 * GiB, 4), (64 * GiB, 8))
    assert p.worker_limits == (6 * GiB, 64 * GiB)
    assert p.task_memory == 1536 * MiB
    assert p.w_storage == "zarr"
    assert p.cache_budget == 1536 * MiB  # a quarter of the smallest worker
    assert p.threads == 1


def test_requests_win():
    p = _local(column_chunks=3, w_storage="zarr", cache_a=4 * GiB)
    assert p.column_ranges == ((0, 16667), (16667, 33333), (33333, 50000))
    assert p.column_chunks == 3
    assert p.columns_why == "requested"
    assert p.w_storage == "zarr"
    assert p.w_storage_why == "requested"
    assert p.cache_budget == 4 * GiB
    one = _local(column_chunks=1)
    assert one.column_ranges is None


def test_the_rules_in_the_engines_order():
    # wide and deep: H cut into ranges, W kept in memory, with the numbers the rules give
    m, n, k = 200, 2 * 10**6, 200
    p = make_plan(m, n, 10**7, k, 4, 10, 1, ram=32 * GiB, threads=16, init="random")
    memory = task_memory(None, 32 * GiB, 16)
    chunks = auto_column_chunks(m, n, k, 4, 1, memory, 2.0, "random")
    assert chunks > 1
    assert p.column_chunks == chunks
    assert p.column_ranges[0][0] == 0
    assert p.column_ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(p.column_ranges, p.column_ranges[1:], strict=False))
    assert p.w_storage == choose_w_storage(m, k, 4, 32 * GiB)[0] == "memory"
    assert p.cache_budget is None
    # the β-divergence keeps one pass; a too-big W goes to disk
    kl = make_plan(m, n, 10**7, k, 4, 10, 1, ram=32 * GiB, threads=16, beta_loss=1.0)
    assert kl.column_ranges is None
    assert "all of H" in kl.columns_why
    tall = make_plan(10**9, 100, 10**10, 64, 8, 10**4, 1, ram=32 * GiB, threads=16)
    assert tall.w_storage == "zarr"


def test_row_offsets_give_the_tallest_block():
    p = make_plan(100, 10, 500, 2, 8, [0, 30, 80, 100], 1, ram=GiB)
    assert (p.n_blocks, p.rows_per_block) == (3, 50)
    assert make_plan(100, 10, 500, 2, 8, 3, 1, ram=GiB).rows_per_block == 34


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"column_chunks": 0}, "column_chunks must be between 1 and n = 50000"),
        ({"column_chunks": 50001}, "column_chunks must be between 1 and n = 50000"),
        ({"w_storage": "memory", "workers": [(GiB, 1)]}, "distributed scheduler"),
        ({"w_storage": "tape"}, "w_storage must be"),
        ({"ram": None}, "RAM is needed"),
    ],
)
def test_make_plan_refuses(options, message):
    with pytest.raises(ValueError, match=message):
        _local(**options)


def test_make_plan_refuses_bad_row_blocks():
    with pytest.raises(ValueError, match="row offsets must run from 0 to m = 100"):
        make_plan(100, 10, 500, 2, 8, [0, 30, 90], 1, ram=GiB)
    with pytest.raises(ValueError, match="blocks must be at least 1"):
        make_plan(100, 10, 500, 2, 8, 0, 1, ram=GiB)


def test_the_plan_is_frozen():
    p = _local()
    with pytest.raises(AttributeError):
        p.w_storage = "zarr"


def test_describe_names_the_numbers():
    p = make_plan(
        163840, 50000, 10**8, 64, 4, 40, 2, workers=[(6 * GiB, 4), (8 * GiB, 4)], cache_a="auto"
    )
    lines = p.describe()
    text = "\n".join(lines)
    assert lines[1] == "row blocks: 40 of 4096 rows, 2 per task"
    assert "memory per task: 1.5 GiB" in text
    assert "limits 6 GiB, 8 GiB" in text
    assert "W: Zarr on disk (a distributed scheduler" in text
    assert "columns: one pass (H's share 73.2 MiB" in text
    assert "a quarter of 1.5 GiB per task" in text
    assert "cache of A: 1.5 GiB per process (auto: a quarter of 6 GiB" in text


def test_describe_local_lines():
    lines = _local().describe()
    assert lines[0] == "matrix: 163840 x 50000, 100000000 nonzeros, k = 64, 4-byte values"
    assert lines[2] == "memory per task: 2 GiB (32 GiB of RAM / 16 threads)"
    assert (
        lines[3] == "W: in memory (120 MiB for 3 copies; limit 8 GiB, a quarter of 32 GiB of RAM)"
    )
    assert lines[-1] == "cache of A: off (not requested)"
    cut = _local(column_chunks=4, cache_a=GiB).describe()
    assert "columns: 4 ranges of about 12500 (requested)" in cut
    assert cut[-1].startswith("cache of A: 1 GiB per process (requested; A decoded: 763.6 MiB")
    uneven = make_plan(100, 10, 500, 2, 8, [0, 30, 80, 100], 1, ram=GiB).describe()
    assert uneven[1] == "row blocks: 3 of at most 50 rows, 1 per task"


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 B"), (512, "512 B"), (1536, "1.5 KiB"), (32 * MiB, "32 MiB"), (1.5 * GiB, "1.5 GiB")],
)
def test_format_bytes(count, text):
    assert plan.format_bytes(count) == text


def test_missing_entries_count_every_column_gram_and_keep_one_pass():
    from bignmf.plan import observed_task_bytes

    # 2 blocks per task: depth 2, so 4 partial sums and merge copies of n × k(k+1)/2 float64
    assert observed_task_bytes(1000, 20, 4, 2) == fused_task_bytes(1000, 20, 4, 2) + (
        4 * 1000 * 210 * 8
    )
    p = _local(missing="zeros")
    assert p.column_ranges is None
    assert p.h_task_bytes == observed_task_bytes(50000, 64, 4, 2)
    assert p.columns_why.startswith("missing entries: H's share with every column's gram")
    assert "3.2 GiB; EXCEEDS 512 MiB, a quarter of 2 GiB per task" in p.columns_why  # n·k²
    k20 = make_plan(163840, 50000, 10**8, 20, 4, 40, 2, ram=32 * GiB, threads=16, missing="zeros")
    assert "within 512 MiB" in k20.columns_why
    with pytest.raises(ValueError, match="column_chunks > 1 cannot be used with missing"):
        _local(missing="zeros", column_chunks=2)


def test_choose_scheduler_keeps_a_fit_in_core_in_this_process():
    # the tf-idf corpus of issue 15: 744k x 37k, 4.8M nonzeros, k = 30, float32
    name, why = choose_scheduler(744_000, 37_000, 4_800_000, 30, 4, 24 * GiB)
    need = 4_800_000 * 8 + 744_001 * 4 + 3 * 744_000 * 30 * 4
    assert name == "threads"
    within = "within 6 GiB, a quarter of this machine's 24 GiB: in core"
    assert why == f"A decoded and W take {plan.format_bytes(need)}, {within}"
    # the same matrix on a machine of 1 GiB: a cluster whose memory limits bound it
    name, why = choose_scheduler(744_000, 37_000, 4_800_000, 30, 4, GiB)
    assert name == "local"
    assert why.endswith("more than 256 MiB, a quarter of this machine's 1 GiB")
    # the boundary: exactly a quarter is still in core
    need = 100 * 12 + 11 * 4 + 3 * 10 * 2 * 8
    assert choose_scheduler(10, 5, 100, 2, 8, 4 * need)[0] == "threads"
    assert choose_scheduler(10, 5, 100, 2, 8, 4 * need - 1)[0] == "local"
