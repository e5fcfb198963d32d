"""``zray microbenchmark``: run the workloads of ``bench_workloads`` for zray, and
for Ray too with ``--compare ray``, each in a clean child process; print a table.

Child processes:

* zray: ``python -m zray._private.microbenchmark --target zray --json``
* ray:  ``<ray python> -c <loader> .../bench_workloads.py --target ray --json``;
  the workload file is loaded from its path, so the Ray environment needs
  neither zray nor its dependencies.

Each child prints its progress on stderr (lines starting ``[bench] ``, which
are passed on) and one ``ZRAY_BENCH_RESULT {json}`` line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from zray._private import bench_workloads as bw

RAY_PYTHON_ENV = "ZRAY_BENCH_RAY_PYTHON"

_LOADER = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('zray_bench_workloads', sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "sys.exit(mod.main(sys.argv[2:]))\n"
)

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --------------------------------------------------------------------------- pure logic


def lower_is_better(unit: str) -> bool:
    return unit in bw.LOWER_IS_BETTER_UNITS


def speed_ratio(zray_value: Optional[float], ray_value: Optional[float],
                unit: str) -> Optional[float]:
    """How many times faster zray is than Ray (>1: zray is better).

    Rates compare as zray/ray; times and memory (lower is better) as ray/zray.
    """
    if zray_value is None or ray_value is None or zray_value <= 0 or ray_value <= 0:
        return None
    if lower_is_better(unit):
        return ray_value / zray_value
    return zray_value / ray_value


def compare_rows(zray_results: Sequence[Dict[str, Any]],
                 ray_results: Optional[Sequence[Dict[str, Any]]] = None
                 ) -> List[Dict[str, Any]]:
    """Join the two sides' records by name, in zray's order (then Ray-only ones)."""
    ray_by_name = {r["name"]: r for r in (ray_results or [])}
    rows = []
    seen = set()
    for z in zray_results:
        seen.add(z["name"])
        r = ray_by_name.get(z["name"])
        rows.append(_row(z["name"], z.get("unit") or (r or {}).get("unit", ""), z, r))
    for r in ray_results or []:
        if r["name"] not in seen:
            rows.append(_row(r["name"], r.get("unit", ""), None, r))
    return rows


def _row(name: str, unit: str, z: Optional[Dict[str, Any]], r: Optional[Dict[str, Any]]
         ) -> Dict[str, Any]:
    zv = z.get("value") if z else None
    rv = r.get("value") if r else None
    return {"name": name, "unit": unit, "zray": zv, "ray": rv,
            "zray_error": (z or {}).get("error"), "ray_error": (r or {}).get("error"),
            "ratio": speed_ratio(zv, rv, unit), "lower_is_better": lower_is_better(unit)}


def format_value(value: Optional[float], error: Optional[str] = None) -> str:
    if value is None:
        return "error" if error else "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_ratio(ratio: Optional[float]) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def machine_line(machine: Dict[str, Any], versions: Dict[str, str]) -> str:
    """``machine: 2 CPUs (model), 23 GiB RAM, Linux ..., Python 3.11.7; zray 0.1.0, ray 2.60.0``."""
    parts = [f"{machine.get('cpus')} CPUs ({machine.get('cpu_model')})"]
    if machine.get("mem_gib"):
        parts.append(f"{machine['mem_gib']:g} GiB RAM")
    if machine.get("system"):
        parts.append(machine["system"])
    parts.append(f"Python {machine.get('python')}")
    line = "machine: " + ", ".join(parts)
    if versions:
        line += "; " + ", ".join(f"{k} {v}" for k, v in versions.items())
    return line


def format_table(rows: Sequence[Dict[str, Any]], *, compare: bool = True,
                 header: Sequence[str] = ()) -> str:
    """The text table: workload, zray, unit[, ray, zray vs ray]."""
    columns = ["workload", "zray", "unit"] + (["ray", "x faster"] if compare else [])
    body = []
    for row in rows:
        line = [row["name"], format_value(row["zray"], row.get("zray_error")), row["unit"]]
        if compare:
            line += [format_value(row["ray"], row.get("ray_error")), format_ratio(row["ratio"])]
        body.append(line)
    widths = [max(len(str(c)) for c in col) for col in zip(columns, *body)]
    right = {1, 3, 4}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = list(header) + [fmt(columns), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
    if compare:
        out.append("")
        out.append("x faster = zray/ray for rates, ray/zray for times and memory "
                   "(s, us/task, B/task): >1 means zray is faster (or leaner).")
    errors = [(row["name"], side, row[f"{side}_error"]) for row in rows
              for side in ("zray", "ray") if row.get(f"{side}_error")]
    for name, side, error in errors:
        out.append(f"error: {side} / {name}: {error}")
    return "\n".join(out)


def parse_child_output(stdout: str) -> Dict[str, Any]:
    """The result document from a benchmark child's stdout (its last marker line)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(bw.RESULT_MARKER):
            doc = json.loads(line[len(bw.RESULT_MARKER):])
            if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
                raise ValueError("benchmark result has no 'results' list")
            return doc
    raise ValueError("benchmark process printed no result line")


# --------------------------------------------------------------------------- processes


def detect_ray_python(explicit: Optional[str] = None) -> Tuple[Optional[str], str]:
    """(python that can ``import ray, numpy``, Ray version) or (None, why not)."""
    python = explicit or os.environ.get(RAY_PYTHON_ENV) or sys.executable
    where = ("--ray-python" if explicit else RAY_PYTHON_ENV if os.environ.get(RAY_PYTHON_ENV)
             else "this interpreter")
    try:
        proc = subprocess.run([python, "-c", "import ray, numpy; print(ray.__version__)"],
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot run {python} ({where}): {exc}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["exit status %d" % proc.returncode])[-1]
        return None, (f"Ray is not importable by {python} ({where}): {last}; point "
                      f"--ray-python or ${RAY_PYTHON_ENV} at a Python that has ray and numpy")
    return python, proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "?"


def child_command(target: str, mode: str, num_cpus: int,
                  python: Optional[str] = None) -> List[str]:
    args = ["--target", target, "--json", "--num-cpus", str(num_cpus)]
    if mode != "full":
        args.append(f"--{mode}")
    if target == "zray":
        return [python or sys.executable, "-m", "zray._private.microbenchmark"] + args
    return [python or sys.executable, "-c", _LOADER, os.path.abspath(bw.__file__)] + args


def _child_env() -> Dict[str, str]:
    env = dict(os.environ)
    parts = [_REPO_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_child(cmd: List[str], timeout: float, echo: bool = True) -> Dict[str, Any]:
    """Run one benchmark child in its own session; pass on its progress; parse its result.

    Whatever the child leaves in its process group is ended when it exits."""
    other: List[str] = []

    def pump(stream: Any) -> None:
        for line in stream:
            if line.startswith(bw.PROGRESS_MARKER):
                if echo:
                    print("  " + line[len(bw.PROGRESS_MARKER):].rstrip(),
                          file=sys.stderr, flush=True)
            else:
                other.append(line.rstrip())
                del other[:-40]

    timed_out = False
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, env=_child_env(),
                                cwd=_REPO_ROOT, start_new_session=True)
        reader = threading.Thread(target=pump, args=(proc.stderr,), daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _end_group(proc)
            reader.join(timeout=5)
        out.seek(0)
        stdout = out.read()
    try:
        return parse_child_output(stdout)
    except ValueError as exc:
        why = f"timed out after {timeout:.0f} s" if timed_out else f"exit status {proc.returncode}"
        tail = "\n".join(other[-10:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({why}): {exc}\n{tail}") from None


def _group_members(pgid: int) -> List[int]:
    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _end_group(proc: subprocess.Popen) -> None:
    """End the child (if it still runs) and whatever it left in its process group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    left = _group_members(proc.pid)
    if left:
        _say(f"note: the benchmark child left {len(left)} process(es) behind "
             f"(pids {', '.join(map(str, left[:10]))}); ending them")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(1.0)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- command


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(quick: bool = False, compare: Optional[str] = None, as_json: bool = False,
        ray_python: Optional[str] = None, num_cpus: int = 2,
        echo=print) -> int:
    """What ``zray microbenchmark`` does; returns the exit status."""
    mode = "quick" if quick else "full"
    timeout = 600.0 if quick else 1800.0
    machine = bw.describe_machine()
    docs: Dict[str, Any] = {"zray": None, "ray": None}
    note = None
    ray_cmd = None
    if compare == "ray":
        found, detail = detect_ray_python(ray_python)
        if found is None:
            note = f"note: --compare ray skipped: {detail}. Showing zray's figures only."
        else:
            ray_cmd = child_command("ray", mode, num_cpus, found)
            _say(f"Ray {detail} found at {found}")
    status = 0
    _say(f"zray microbenchmark ({mode}, num_cpus={num_cpus}): zray ...")
    try:
        docs["zray"] = run_child(child_command("zray", mode, num_cpus), timeout)
    except RuntimeError as exc:
        _say(f"zray benchmark failed: {exc}")
        status = 1
    if ray_cmd is not None:
        _say("... ray ...")
        try:
            docs["ray"] = run_child(ray_cmd, timeout)
        except RuntimeError as exc:
            note = f"note: the Ray benchmark failed: {exc}"
    if docs["zray"] is None and docs["ray"] is None:
        if note:
            echo(note)
        return status or 1
    rows = compare_rows(docs["zray"]["results"] if docs["zray"] else [],
                        docs["ray"]["results"] if docs["ray"] else None)
    versions = {side: docs[side]["version"] for side in ("zray", "ray") if docs[side]}
    if as_json:
        if note:
            _say(note)
        echo(json.dumps({"mode": mode, "num_cpus": num_cpus, "machine": machine,
                         "versions": versions, "note": note, "rows": rows,
                         "zray": docs["zray"], "ray": docs["ray"]}, indent=2))
        return status
    header = [machine_line(machine, versions)]
    ray_machine = (docs["ray"] or {}).get("machine", {})
    if ray_machine.get("python") and ray_machine["python"] != machine["python"]:
        header.append(f"(Ray ran on Python {ray_machine['python']})")
    header.append(f"mode: {mode}, num_cpus={num_cpus}")
    header.append("")
    if note:
        echo(note)
    echo(format_table(rows, compare=docs["ray"] is not None, header=header))
    return status


def run_nodes(nodes: int, quick: bool = False, as_json: bool = False, echo=print) -> int:
    """``zray microbenchmark --nodes N``: N node agents on this machine, SPREAD tasks."""
    import zray
    from zray._private import bench_cluster

    _say(f"zray microbenchmark: {nodes} nodes on this machine ...")
    result = bench_cluster.run_nodes(zray, nodes, tasks=2000 if quick else 10_000)
    if as_json:
        echo(json.dumps(result, indent=2))
        return 0
    echo(f"{nodes} node agents on this machine, one CPU each: {result['tasks']:,} SPREAD "
         f"tasks in {result['seconds']:.2f} s, {result['tasks_per_s']:,.0f} tasks/s; "
         f"the head used {100 * result['head_cpu_share']:.0f}% of a CPU; tasks per node: "
         f"{', '.join(map(str, result['per_node']))}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``--target X``: benchmark X in this process (what the children run);
    otherwise the whole comparison, as ``zray microbenchmark``."""
    parser = argparse.ArgumentParser(prog="python -m zray._private.microbenchmark")
    parser.add_argument("--target", choices=["zray", "ray"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--compare", choices=["ray"])
    parser.add_argument("--ray-python")
    args, _ = parser.parse_known_args(argv)
    if args.target:
        return bw.main(argv)
    return run(args.quick, args.compare, args.json, args.ray_python, args.num_cpus)


if __name__ == "__main__":
    sys.exit(main())
