"""uniklab demo: the runbook end to end for Redis, printed step by step.

bake → run (1 vCPU) → ps → ip → redis-cli ping/set/get → logs → destroy → nothing left.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import click

from uniklab.cli import common
from uniklab.errors import UniklabError


def _step(title: str) -> None:
    common.out.print(f"\n[bold]# {title}[/bold]")


def _redis_cli(port: int, *words: str) -> str:
    """The runbook checks with redis-cli; use it when installed, redis-py otherwise."""
    if shutil.which("redis-cli"):
        argv = ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *words]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return proc.stdout.strip() or proc.stderr.strip()
    import redis

    r = redis.Redis("127.0.0.1", port, socket_timeout=5)
    return str(r.execute_command(*words))  # type: ignore[no-untyped-call]


@click.command()
@click.option("--memory", default="128M", show_default=True)
@click.option("--keep", is_flag=True, help="Leave the instance running at the end.")
@click.pass_context
def demo(ctx: click.Context, memory: str, keep: bool) -> None:
    """Run the runbook for Redis: bake, run, probe with redis-cli, list, destroy."""
    from uniklab.lab import RunOptions, tail

    lab = common.lab(ctx)
    name = "uniklab-demo-redis"
    _step("uniklab bake redis")
    res = lab.bake("redis")
    m = res.manifest
    common.out.print(
        f"{m.ref} {m.short_digest} ({'cached' if res.cached else 'baked'} in "
        f"{res.seconds:.2f}s) {common.image_parts(m)}"
    )
    _step(f"uniklab run redis --name {name} --memory {memory} --vcpus 1 --wait")
    start = time.monotonic()
    view = lab.run("redis", RunOptions(name=name, memory=memory, vcpus=1, wait=True))
    try:
        common.out.print(f"ready in {time.monotonic() - start:.1f}s at {view.address}")
        _step("uniklab ps")
        common.out.print(
            f"{'Name':<24} {'ID':>4} {'Mem':>5} {'VCPUs':>5}  {'State':<8} {'Time(s)':>8}  Address"
        )
        for v in lab.ps():
            cpu = v.inspection.cpu_seconds if v.inspection else None
            common.out.print(
                f"{v.name:<24} {v.row.id:>4} {v.row.memory_mb:>5} {v.row.vcpus:>5}"
                f"  {v.state:<8} {cpu or 0:>8.1f}  {v.address}"
            )
        info = lab.ip(name)
        _step(f"uniklab ip {name}")
        common.out.print(f"{info.host} ({info.source}), guest {info.guest_address}")
        port = info.ports[0][0]
        _step(f"redis-cli -h 127.0.0.1 -p {port}")
        for words in (("ping",), ("set", "foo", "bar"), ("get", "foo")):
            common.out.print(f"127.0.0.1:{port}> {' '.join(words)}\n{_redis_cli(port, *words)}")
        r = lab.check(name)
        _step(f"uniklab check {name}")
        common.out.print(f"ok, {r.detail} ({r.latency_ms:.1f} ms)")
        _step(f"uniklab logs {name} | tail -5")
        common.out.print(tail(lab.logs(name), 5), markup=False)
    finally:
        if not keep:
            _step(f"uniklab destroy {name}")
            lab.destroy(name)
            left = [v.name for v in lab.ps() if v.name == name]
            if left:
                raise UniklabError(f"{name} still listed after destroy")
            common.out.print(f"destroyed {name}; nothing left")
