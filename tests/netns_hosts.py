"""Several hosts on this machine for Open MPI: network + UTS namespaces.

Each host is a network namespace with its own hostname (a UTS namespace),
joined by veth pairs to a bridge in a private "hub" namespace, addresses in
a private /24 with no route out: traffic never leaves the simulated network.
``mpiexec`` runs in the hub with an ssh agent that enters a host's
namespaces, so PRRTE starts one daemon per host as it would over ssh. Facts
this rests on: ../shared/notes/simulated-hosts.md. Needs root and iproute2;
:meth:`SimulatedHosts.start` raises ``HostsUnavailable`` where it cannot.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

NET = "10.213.77"


class HostsUnavailable(RuntimeError):
    pass


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


class SimulatedHosts:
    def __init__(self, names: tuple[str, ...], workdir: Path, prefix: str = "mpipst"):
        self.names, self.workdir, self.prefix = names, Path(workdir), prefix
        self.hub = f"{prefix}-hub"
        self.agent = self.workdir / "agent.sh"
        self.hostfile = self.workdir / "hostfile"

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def uts(self, host: str) -> Path:
        return self.workdir / f"uts-{host}"

    def _must(self, *args: str) -> None:
        done = _ip(*args)
        if done.returncode != 0:
            raise HostsUnavailable(f"ip {' '.join(args)}: {done.stderr.strip()}")

    def start(self, slots: int) -> None:
        if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nsenter") is None:
            raise HostsUnavailable("simulated hosts need root, iproute2 and nsenter")
        self.stop()  # leftovers of an earlier run
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._must("netns", "add", self.hub)
        self._must("-n", self.hub, "link", "set", "lo", "up")
        self._must("-n", self.hub, "link", "add", "br0", "type", "bridge")
        self._must("-n", self.hub, "addr", "add", f"{NET}.254/24", "dev", "br0")
        self._must("-n", self.hub, "link", "set", "br0", "up")
        for i, host in enumerate(self.names, start=1):
            ns = self.ns(host)
            self._must("netns", "add", ns)
            self._must("-n", ns, "link", "set", "lo", "up")
            # made inside the host's namespace, its peer straight in the hub's:
            # nothing is created in this machine's own network namespace
            self._must("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name",
                       f"p-{host}", "netns", self.hub)
            self._must("-n", ns, "addr", "add", f"{NET}.{i}/24", "dev", "eth0")
            self._must("-n", ns, "link", "set", "eth0", "up")
            self._must("-n", self.hub, "link", "set", f"p-{host}", "master", "br0")
            self._must("-n", self.hub, "link", "set", f"p-{host}", "up")
            self.uts(host).touch()
            made = subprocess.run(["unshare", f"--uts={self.uts(host)}", "hostname", host],
                                  capture_output=True, text=True, timeout=30)
            if made.returncode != 0:
                raise HostsUnavailable(f"unshare --uts: {made.stderr.strip()}")
        cases = "".join(f"  {h}|{NET}.{i}) host={h} ;;\n"
                        for i, h in enumerate(self.names, start=1))
        # PRRTE calls its launcher like ssh: agent [-options] HOST command...
        self.agent.write_text(
            "#!/bin/sh\n"
            "while [ $# -gt 0 ]; do case $1 in -*) shift ;; *) break ;; esac; done\n"
            'target=$1; shift\n'
            'case $target in\n' + cases
            + '  *) echo "agent: unknown host $target" >&2; exit 255 ;;\n'
            "esac\n"
            f'exec nsenter --net=/run/netns/{self.prefix}-$host --uts={self.workdir}/uts-$host'
            ' -- /bin/sh -c "$*"\n')
        self.agent.chmod(0o755)
        self.hostfile.write_text("".join(f"{h} slots={slots}\n" for h in self.names))
        hosts = "".join(f"{NET}.{i} {h}\n" for i, h in enumerate(self.names, start=1))
        (self.workdir / "hosts").write_text(hosts)

    def launcher_args(self) -> list[str]:
        """mpiexec's arguments for these hosts: ranks dealt one per host in turn."""
        return ["--hostfile", str(self.hostfile), "--map-by", "node", "--prtemca",
                "plm_ssh_agent", str(self.agent), "--mca", "btl_tcp_if_include",
                f"{NET}.0/24", "--mca", "oob_tcp_if_include", f"{NET}.0/24"]

    def in_hub(self, *cmd: str) -> list[str]:
        """``cmd`` run in the hub namespace, where mpiexec reaches every host."""
        return ["ip", "netns", "exec", self.hub, *cmd]

    def mpiexec(self, n: int, *args: str) -> list[str]:
        """The command that runs ``args`` on ``n`` ranks across the hosts."""
        exe = shutil.which("mpiexec") or "mpiexec"
        return self.in_hub(exe, "-n", str(n), *self.launcher_args(), *args)

    def pids(self, host: str) -> list[int]:
        out = _ip("netns", "pids", self.ns(host))
        return [int(p) for p in out.stdout.split()] if out.returncode == 0 else []

    def kill_host(self, host: str) -> list[int]:
        """SIGKILL every process of ``host`` (its ranks and its daemon)."""
        pids = self.pids(host)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def stop(self) -> None:
        for host in (*self.names, "hub"):
            ns = self.hub if host == "hub" else self.ns(host)
            for pid in _ip("netns", "pids", ns).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", ns)
            if host != "hub" and self.uts(host).exists():
                subprocess.run(["umount", str(self.uts(host))], capture_output=True, timeout=30)
                self.uts(host).unlink(missing_ok=True)
