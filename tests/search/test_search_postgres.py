"""The multi-machine path on a real PostgreSQL server (started by the test, see _pg.py): commands started at the
same instant on a fresh database, ten times over; a worker killed mid-trial; worker processes sharing a study."""

from __future__ import annotations

import os

import optuna
import pytest
import search_toys as toys
from _pg import find_bin, postgres_server
from concurrency import check_round, run_rounds
from search_toys import STEPS, closed_form, starts

from lrkit.search import parse_lrs, sweep

pytestmark = pytest.mark.skipif(not (find_bin("initdb") and find_bin("pg_ctl")),
                                reason="PostgreSQL server binaries (initdb, pg_ctl) are not installed")
ROUNDS = 10


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("psycopg2")
    with postgres_server() as url:
        yield url


def fresh_database(url: str, name: str) -> str:
    import psycopg2

    base, _ = url.rsplit("/", 1)
    host, port = base.split("@")[1].split(":")
    conn = psycopg2.connect(host=host, port=int(port), user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return f"{base}/{name}"


def load(url: str, name: str):
    return optuna.load_study(study_name=name, storage=url.replace("postgresql:", "postgresql+psycopg2:"))


def test_three_commands_started_at_the_same_instant_on_a_fresh_database(server, tmp_path, log, capsys):
    points = [(lr, s) for lr in parse_lrs("1e-3:0.3:4") for s in (0, 1)]
    urls = [f"{server.rsplit('/', 1)[0]}/round{r}" for r in range(ROUNDS)]
    commands = [[["sweep", "search_toys:train_slow", "--lrs", "1e-3:0.3:4", "--seeds", "0,1", "--storage", url,
                  "--quiet", "--no-plot", "--no-doctor", "-o", f"out{r}-{i}.json"] for r, url in enumerate(urls)]
                for i in range(3)]
    spares, trainers, seen = [], [], [0]

    def check(r, results):
        begun = starts(log)
        counts = check_round(load(urls[r], "sweep:search_toys.train_slow"), results, points, begun[seen[0]:],
                             [str(tmp_path / f"out{r}-{i}.json") for i in range(3)])
        seen[0] = len(begun)
        assert counts["trials"] == 8
        spares.append(counts["spares"])
        trainers.append(counts["processes"])

    # each round: a new database, with no tables yet: the three commands create them together
    run_rounds(commands, str(tmp_path), log, before_round=lambda r: fresh_database(server, f"round{r}"),
               after_round=check)
    with capsys.disabled():  # the evidence, in the test log
        print(f"\n{ROUNDS} rounds x 3 commands: every command exited 0, 8/8 points trained once each; commands "
              f"that trained per round: {trainers}; spare trials (closed untrained when the queue ran dry) per "
              f"round: {spares}")


def test_a_worker_killed_mid_trial_has_its_trial_redone_by_another(server, log):
    url = fresh_database(server, "killed")
    lrs = [0.01, 0.02, 0.04, 0.08]
    result = sweep(toys.train_dies_once, lrs, storage=url, study_name="kill", n_workers=3, heartbeat_interval=1,
                   progress=False)
    assert [t.state for t in result.trials] == ["complete"] * 4
    assert [t.score for t in result.trials] == pytest.approx([closed_form(lr, STEPS) for lr in lrs], rel=1e-12)
    at_002 = sorted((t for t in load(url, "kill").trials if t.params.get("lr") == 0.02), key=lambda t: t.number)
    assert [t.state.name for t in at_002] == ["FAIL", "COMPLETE"]
    assert at_002[1].system_attrs["failed_trial"] == at_002[0].number  # Optuna's retry of the stale trial
    begun = starts(log)
    assert [s[0] for s in begun].count("0.02") == 2
    killed, redone = [s[2] for s in begun if s[0] == "0.02"]
    assert killed != redone  # another worker process redid it


def test_worker_processes_share_a_study_and_a_rerun_runs_nothing(server, log):
    url = fresh_database(server, "shared")
    lrs = parse_lrs("1e-3:0.3:4")
    result = sweep(toys.train_rendezvous, lrs, storage=url, study_name="pg", n_workers=2, progress=False)
    again = sweep(toys.train_rendezvous, lrs, storage=url, study_name="pg", progress=False)
    begun = starts(log)
    assert sorted(float(s[0]) for s in begun) == lrs and len({s[2] for s in begun}) == 2
    assert str(os.getpid()) not in {s[2] for s in begun}
    trials = [t for t in load(url, "pg").trials if not t.user_attrs.get("lrkit_spare")]  # spares: never trained
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert [t.score for t in again.trials] == [t.score for t in result.trials]
    assert [t.score for t in result.trials] == pytest.approx([closed_form(lr, STEPS) for lr in lrs], rel=1e-12)
