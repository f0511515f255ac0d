"""Fault campaign: ≥ 100 random SIGKILLs across the resumes of ONE capture, then a bit-for-bit comparison.

    python benchmarks/fault_campaign.py                 # 100 landed kills (10–15 min on 2 cores)
    python benchmarks/fault_campaign.py --kills 10 --json /tmp/fc.json

What it does:

1. builds a tiny random-weight Llama checkpoint (d=64, 3 blocks, vocab 128, char-level tokenizer;
   nothing is downloaded) and ~240 prompts as JSONL in a work folder;
2. runs one uninterrupted ``spinal capture`` (the reference store) and times it;
3. starts the same capture again and again into a second store, each child in its own process
   group, and SIGKILLs the whole group after a delay drawn uniformly from [0, 1.2 × the wall time
   that start needs], i.e. the reference's start-up time (import, model load, self-check, store
   creation) plus its unit-writing time scaled by the share of units not yet done; so kills land
   during import, model load, store creation and unit writes, and keep landing once most units
   are done (``--fixed-delay``: always [0, 1.2 × reference wall time]);
   the first start has no flag, every start once the store folder exists uses ``--resume``;
   if ``--resume`` exits 2 saying "no store" / "not a SPINAL store" (a kill during creation,
   with a SPINAL that does not yet resume those) the next start uses ``--overwrite``;
4. after ``--kills`` landed kills, runs one last ``--resume`` without a kill (must exit 0);
5. compares every array of the two stores (values, shape, dtype, attributes) and the root
   ``spinal.identity`` attributes: "identical: yes/no".

Counted: kills attempted (children started with a kill scheduled), kills landed (the child was
still running: it died of SIGKILL), kills mid-write (new ``*.partial`` files — zarr LocalStore's
``<name>.<uuid>.partial`` before its rename — in the store right after the kill), creation-kills
(``--resume`` refused, fell back to ``--overwrite``), starts whose units-done count increased, and
the starts needed until the store was complete.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import save_tiny_llama  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FALLBACK_MESSAGES = ("not a spinal store", "no store")
_CHILD_PGID: int | None = None  # the process group of the child running now
UNIT_TOKENS = 64
BATCH_SIZE = 2


# -- the prompts (the model is common.save_tiny_llama, the tests' tiny Llama) --------------------

def write_prompts(path: Path, n: int) -> Path:
    rows = [{"id": f"q{i}", "prompt": f"Question number {i}: what is {i} times {i % 7}? Think about it."}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- children -----------------------------------------------------------------------------------

def capture_cmd(model: Path, prompts: Path, out: Path, flag: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "spinal.cli.app", "capture", str(model), "--prompts", str(prompts), "--out", str(out),
           "--unit-tokens", str(UNIT_TOKENS), "--batch-size", str(BATCH_SIZE), "--no-progress"]
    return cmd + ([flag] if flag else [])


CHILD_THREADS = 1  # set from --threads


def child_env() -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1")
    if CHILD_THREADS > 0:  # the reference and every resume run with the same thread count
        env.update(OMP_NUM_THREADS=str(CHILD_THREADS), MKL_NUM_THREADS=str(CHILD_THREADS))
    return env


def run_child(cmd: list[str], stderr_path: Path, delay: float | None, timeout: float) -> dict:
    """Start ``cmd`` in its own process group; SIGKILL the group after ``delay`` s (None: no kill)."""
    t0 = time.perf_counter()
    with open(stderr_path, "wb") as err:
        p = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=err, start_new_session=True)
        global _CHILD_PGID
        pgid = _CHILD_PGID = p.pid  # start_new_session: the child leads its own group
        killed = False
        try:
            p.wait(timeout=timeout if delay is None else delay)
        except subprocess.TimeoutExpired:
            killed = True
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        else:
            # the child exited by itself: still clear anything it left in its group
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _CHILD_PGID = None
    rc = p.returncode
    stderr = stderr_path.read_text(errors="replace")
    return {"rc": rc, "killed": killed, "landed": killed and rc == -signal.SIGKILL,
            "seconds": time.perf_counter() - t0, "stderr": stderr,
            "timed_out": delay is None and killed}


# -- looking at a store from outside ------------------------------------------------------------

def partial_files(store: Path) -> set[str]:
    if not store.exists():
        return set()
    return {str(p.relative_to(store)) for p in store.rglob("*.partial")}


def store_state(store: Path) -> tuple[str, int, int]:
    """(state, units done, units) with state absent | creating | units | complete."""
    if not store.exists():
        return "absent", 0, 0
    try:
        doc = json.loads((store / "zarr.json").read_text())
        meta = (doc.get("attributes") or {}).get("spinal") or {}
    except (OSError, ValueError):
        return "creating", 0, 0
    n_units = meta.get("n_units")
    if not isinstance(n_units, int) or meta.get("state") == "creating":
        return "creating", 0, 0
    done = units_done(store, n_units)
    if done is None:
        return "creating", 0, n_units
    return ("complete" if meta.get("complete") else "units"), done, n_units


def units_done(store: Path, n_units: int) -> int | None:
    import numpy as np
    import zarr

    try:
        arr = zarr.open_array(store / "units" / "done", mode="r")
    except Exception:
        return None
    try:
        return int(np.asarray(arr[:]).astype(bool).sum())
    except Exception:  # a torn chunk: count the readable ones
        n = 0
        for i in range(n_units):
            try:
                n += bool(arr[i])
            except Exception:
                pass
        return n


def compare_stores(ref: Path, other: Path) -> dict:
    """Every array (values, shape, dtype, attributes) and the root spinal.identity of two stores."""
    import numpy as np
    import zarr

    problems: list[str] = []
    a_g, b_g = zarr.open_group(ref, mode="r"), zarr.open_group(other, mode="r")

    def arrays(g) -> dict:
        return {path: node for path, node in g.members(max_depth=None) if isinstance(node, zarr.Array)}

    a_arr, b_arr = arrays(a_g), arrays(b_g)
    for name in sorted(set(a_arr) ^ set(b_arr)):
        problems.append(f"{name}: only in {'reference' if name in a_arr else 'resumed'} store")
    n_equal = 0
    for name in sorted(set(a_arr) & set(b_arr)):
        a, b = a_arr[name], b_arr[name]
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{name}: shape/dtype {a.shape} {a.dtype} vs {b.shape} {b.dtype}")
            continue
        try:
            va, vb = a[...], b[...]
        except Exception as e:
            problems.append(f"{name}: read failed: {type(e).__name__}: {e}")
            continue
        if not np.array_equal(np.asarray(va), np.asarray(vb)):
            diff = int(np.sum(np.asarray(va) != np.asarray(vb)))
            problems.append(f"{name}: values differ ({diff} elements)")
            continue
        if dict(a.attrs) != dict(b.attrs):
            problems.append(f"{name}: attributes differ: {dict(a.attrs)} vs {dict(b.attrs)}")
            continue
        n_equal += 1
    a_meta, b_meta = dict(a_g.attrs).get("spinal", {}), dict(b_g.attrs).get("spinal", {})
    if a_meta.get("identity") != b_meta.get("identity"):
        problems.append(f"spinal.identity differs: {a_meta.get('identity')} vs {b_meta.get('identity')}")
    for label, meta in (("reference", a_meta), ("resumed", b_meta)):
        if not meta.get("complete"):
            problems.append(f"{label} store is not marked complete")
    return {"identical": not problems, "arrays_compared": len(set(a_arr) & set(b_arr)), "arrays_equal": n_equal,
            "problems": problems}


# -- the campaign -------------------------------------------------------------------------------

def wants_fallback(res: dict) -> bool:
    low = res["stderr"].lower()
    return res["rc"] == 2 and any(m in low for m in FALLBACK_MESSAGES)


def tail(text: str, n: int = 600) -> str:
    text = text.strip()
    return text if len(text) <= n else "…" + text[-n:]


def unit_seconds(stderr: str) -> float | None:
    """The unit-writing time the CLI reports: 'wrote N unit(s) … : T tokens, S s, R tok/s'."""
    m = re.search(r"tokens, ([0-9.]+) s", stderr)
    return float(m.group(1)) if m else None


def campaign(args) -> dict:
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="spinal-fault-"))
    work.mkdir(parents=True, exist_ok=True)
    model, prompts = work / "model", work / "prompts.jsonl"
    ref, store = work / "reference.zarr", work / "campaign.zarr"
    for p in (ref, store):
        if p.exists():
            shutil.rmtree(p)
    errlog = work / "child.stderr"
    t_start = time.perf_counter()
    print(f"work folder {work}", flush=True)
    if not (model / "config.json").exists():
        save_tiny_llama(model)
    write_prompts(prompts, args.prompts)

    # 1. the reference: one uninterrupted run, timed
    r = run_child(capture_cmd(model, prompts, ref, None), errlog, None, timeout=args.child_timeout)
    if r["rc"] != 0:
        raise SystemExit(f"reference capture failed (rc {r['rc']}):\n{tail(r['stderr'], 3000)}")
    ref_wall = r["seconds"]
    units_s = min(unit_seconds(r["stderr"]) or 0.0, ref_wall)
    fixed_s = ref_wall - units_s  # interpreter start, imports, model load, self-check, store creation
    _, _, n_units = store_state(ref)

    def max_delay(done: int) -> float:
        """The kill window of one start: delay-factor × the wall time this start needs if not killed."""
        if args.fixed_delay or not n_units:
            return args.delay_factor * ref_wall
        return args.delay_factor * (fixed_s + units_s * (1.0 - done / n_units))

    print(f"reference: {ref_wall:.1f} s wall ({fixed_s:.1f} s start-up + {units_s:.1f} s writing {n_units} units); "
          f"kill delays ~ U(0, {max_delay(0):.1f} s)"
          + ("" if args.fixed_delay else " for a fresh start, shrinking with the units left"), flush=True)

    rng = random.Random(args.seed)
    stats = Counter()
    phases = Counter()  # store state right after each landed kill
    refusals: list[dict] = []  # --resume refusals that fell back to --overwrite
    failures: list[dict] = []  # any other exit that was not 0 and not our SIGKILL
    starts: list[dict] = []
    rounds: list[dict] = []  # --restart-when-complete: one entry per capture finished and compared
    flag_next: str | None = None
    complete_at: int | None = None  # start number (within the current capture) that completed the store
    round_first_start = 1
    consecutive_failures = 0
    max_starts = args.kills * 5 + 50

    def choose_flag() -> str | None:
        nonlocal flag_next
        if flag_next:
            f, flag_next = flag_next, None
            return f
        return "--resume" if store.exists() else None

    def one_start(delay: float | None) -> tuple[dict, dict]:
        flag = choose_flag()
        before_state, before_done, _ = store_state(store)
        before_partial = partial_files(store)
        res = run_child(capture_cmd(model, prompts, store, flag), errlog, delay, timeout=args.child_timeout)
        after_state, after_done, _ = store_state(store)
        new_partial = partial_files(store) - before_partial
        rec = {"n": len(starts) + 1, "flag": flag, "delay": None if delay is None else round(delay, 3),
               "rc": res["rc"], "landed": res["landed"], "seconds": round(res["seconds"], 2),
               "before": f"{before_state}:{before_done}", "after": f"{after_state}:{after_done}",
               "new_partial": sorted(new_partial)[:5]}
        starts.append(rec)
        if after_done > before_done:
            stats["progress_starts"] += 1
        if args.verbose:
            what = "KILLED" if res["landed"] else f"rc {res['rc']}"
            d = "-" if delay is None else f"{delay:5.1f}s"
            print(f"  start {rec['n']:>4} {flag or '(none)':<11} delay {d} {what:<7} "
                  f"{rec['before']:>14} -> {rec['after']:<14} partial +{len(new_partial)}", flush=True)
        return rec, res

    def classify_refusal(rec: dict, res: dict) -> bool:
        """True if this was a --resume refusal we fall back from (the next start uses --overwrite)."""
        nonlocal flag_next
        if rec["flag"] == "--resume" and wants_fallback(res):
            stats["creation_kills"] += 1
            flag_next = "--overwrite"
            refusals.append({"n": rec["n"], "store": rec["before"], "stderr": tail(res["stderr"], 300)})
            return True
        return False

    while stats["landed"] < args.kills:
        if len(starts) >= max_starts:
            print(f"giving up: {len(starts)} starts without {args.kills} landed kills", flush=True)
            break
        done_now = store_state(store)[1]
        rec, res = one_start(rng.uniform(0.0, max_delay(done_now)))
        stats["attempted"] += 1
        after_state = rec["after"].split(":")[0]
        if res["landed"]:
            stats["landed"] += 1
            phases[after_state] += 1
            if rec["new_partial"]:
                stats["mid_write"] += 1
            if rec["before"].startswith("complete"):
                stats["landed_after_complete"] += 1
            consecutive_failures = 0
        elif res["rc"] == 0:
            stats["completed"] += 1
            consecutive_failures = 0
        elif classify_refusal(rec, res):
            consecutive_failures = 0
        else:
            failures.append({"n": rec["n"], "flag": rec["flag"], "rc": res["rc"], "store": rec["before"],
                             "stderr": tail(res["stderr"], 1500)})
            print(f"  start {rec['n']} ({rec['flag'] or 'no flag'}) failed rc {res['rc']} on a "
                  f"'{rec['before']}' store:\n    {tail(res['stderr'], 400)}", flush=True)
            consecutive_failures += 1
            if consecutive_failures >= 5:
                print("giving up: 5 failures in a row", flush=True)
                break
        if complete_at is None and after_state == "complete":
            complete_at = rec["n"] - round_first_start + 1
        if res["landed"] and stats["landed"] % 10 == 0:
            d = store_state(store)
            print(f"[{stats['landed']:>4}/{args.kills} kills landed] starts {len(starts)}, mid-write "
                  f"{stats['mid_write']}, creation-kills {stats['creation_kills']}, store {d[0]} "
                  f"{d[1]}/{n_units} units, rounds {len(rounds)}, {time.perf_counter() - t_start:.0f} s", flush=True)
        if args.restart_when_complete and after_state == "complete" and stats["landed"] < args.kills:
            cmp = compare_stores(ref, store)
            rounds.append({"starts": rec["n"] - round_first_start + 1, "identical": cmp["identical"],
                           "problems": cmp["problems"][:10]})
            print(f"  round {len(rounds)} complete after {rounds[-1]['starts']} starts: identical "
                  f"{'yes' if cmp['identical'] else 'NO'}; starting a new capture", flush=True)
            shutil.rmtree(store)
            round_first_start, complete_at, flag_next = rec["n"] + 1, None, None

    # 4. one last resume, no kill (a --resume refused after a creation-kill gets one --overwrite)
    final = None
    for _ in range(3):
        rec, res = one_start(None)
        if complete_at is None and rec["after"].startswith("complete"):
            complete_at = rec["n"] - round_first_start + 1
        final = {"flag": rec["flag"], "rc": res["rc"], "seconds": rec["seconds"], "stderr": tail(res["stderr"], 600)}
        if res["rc"] == 0:
            break
        if classify_refusal(rec, res):
            continue
        failures.append({"n": rec["n"], "flag": rec["flag"], "rc": res["rc"], "store": rec["before"],
                         "stderr": tail(res["stderr"], 1500)})
        break

    if final and final["rc"] == 0:
        cmp = compare_stores(ref, store)
    else:
        cmp = {"identical": False, "arrays_compared": 0, "arrays_equal": 0,
               "problems": [f"final resume did not finish: {final}"]}
    rounds.append({"starts": len(starts) - round_first_start + 1, "identical": cmp["identical"],
                   "problems": cmp["problems"][:10]})
    leftovers = sorted(partial_files(store))
    result = {
        "kills_requested": args.kills,
        "kills_attempted": stats["attempted"],
        "kills_landed": stats["landed"],
        "kills_mid_write": stats["mid_write"],
        "kills_landed_on_complete_store": stats["landed_after_complete"],
        "kill_phase_after": dict(phases),
        "creation_kills_overwrite_fallbacks": stats["creation_kills"],
        "runs_finished_before_kill": stats["completed"],
        "starts_total": len(starts),
        "starts_with_units_progress": stats["progress_starts"],
        "resumes_needed_to_complete": complete_at,
        "failures_other": len(failures),
        "final_resume": final,
        "identical": all(r["identical"] for r in rounds),
        "rounds": rounds,
        "comparison": cmp,
        "partial_files_left_in_final_store": len(leftovers),
        "reference_wall_s": round(ref_wall, 2),
        "reference_unit_s": round(units_s, 2),
        "max_delay_s": round(max_delay(0), 2),
        "delay_mode": "fixed" if args.fixed_delay else "per-start",
        "units": n_units,
        "prompts": args.prompts,
        "seed": args.seed,
        "campaign_wall_s": round(time.perf_counter() - t_start, 1),
        "refusals": refusals[:20],
        "failures": failures[:20],
        "starts": starts,
        "workdir": str(work),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "child_threads": args.threads,
    }
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def print_table(r: dict) -> None:
    rows = [
        ("kills attempted", r["kills_attempted"]),
        ("kills landed", r["kills_landed"]),
        ("kills mid-write (*.partial)", r["kills_mid_write"]),
        ("kills landed on a complete store", r["kills_landed_on_complete_store"]),
        ("store state after kills", ", ".join(f"{k} {v}" for k, v in sorted(r["kill_phase_after"].items()))),
        ("creation-kills (--overwrite fallback)", r["creation_kills_overwrite_fallbacks"]),
        ("runs that finished before their kill", r["runs_finished_before_kill"]),
        ("starts in all (incl. final)", r["starts_total"]),
        ("starts whose units done increased", r["starts_with_units_progress"]),
        ("starts needed to complete the store", r["resumes_needed_to_complete"]),
        ("other failures", r["failures_other"]),
        ("final resume rc", (r["final_resume"] or {}).get("rc")),
        ("captures compared (rounds)", len(r["rounds"])),
        ("arrays compared / equal (last)", f"{r['comparison']['arrays_compared']} / {r['comparison']['arrays_equal']}"),
        ("reference wall / max kill delay", f"{r['reference_wall_s']} s / {r['max_delay_s']} s ({r['delay_mode']})"),
        ("campaign wall", f"{r['campaign_wall_s']} s"),
        ("identical", "yes" if r["identical"] else "no"),
    ]
    w = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")
    for i, rnd in enumerate(r["rounds"], 1):
        for p in rnd["problems"]:
            print(f"  MISMATCH (capture {i}) {p}")
    print(f"\nidentical: {'yes' if r['identical'] else 'no'}")


def _on_signal(signum, frame):
    if _CHILD_PGID is not None:
        try:
            os.killpg(_CHILD_PGID, signal.SIGKILL)
        except ProcessLookupError:
            pass
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=100, help="landed SIGKILLs before the final resume (default 100)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    ap.add_argument("--workdir", default=None, help="work folder (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--json", default=str(HERE / "results" / "fault-campaign.json"), help="results JSON path")
    ap.add_argument("--prompts", type=int, default=240, help="number of prompts (default 240)")
    ap.add_argument("--delay-factor", type=float, default=1.2,
                    help="max kill delay as a multiple of the uninterrupted run's wall time (default 1.2)")
    ap.add_argument("--fixed-delay", action="store_true",
                    help="draw every delay from U(0, factor × the reference wall time); default: factor × the "
                         "wall time the start needs (start-up + the units still to write), so kills keep landing "
                         "once most units are done")
    ap.add_argument("--restart-when-complete", action="store_true",
                    help="when the store completes before --kills kills landed, compare it, delete it and start "
                         "a new capture (more kills during creation and unit writes; default: keep resuming "
                         "the one complete store)")
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP/MKL threads of each child (default 1: on a busy 2-core machine torch's default "
                         "threads oversubscribe and the unit phase runs ~8× slower); 0 = inherit the environment")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per start")
    ap.add_argument("--child-timeout", type=float, default=600.0, help="limit for one uninterrupted child, s")
    args = ap.parse_args(argv)
    global CHILD_THREADS
    CHILD_THREADS = args.threads
    result = campaign(args)
    print_table(result)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"results written to {path}")
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
