"""A real multi-node SLURM cluster on one machine: each slurmd in a network namespace of its own.

    root namespace                          namespace <tag>-n1         namespace <tag>-n2
    munged (socket in the cluster folder)   slurmd -N <tag>-node1      slurmd -N <tag>-node2
    slurmctld (UTS name <tag>-ctl)          hostname <tag>-node1       hostname <tag>-node2
    bridge  10.77.X.1/24  ---- veth ----    10.77.X.11/24  ---- veth --  10.77.X.12/24

Every node has its own hostname (a UTS namespace), its own address and loopback, so whatever a
job does across nodes (srun's task launch and I/O, MASTER_ADDR, torchrun's c10d rendezvous,
gloo's connections) goes through the bridge, as between real hosts; the bridge has no route out.
The names resolve through /etc/hosts lines the cluster adds at `up()` and removes at `down()`
(each tagged with the cluster's id). munged is shared: its socket is a file, which the
namespaces see (a network namespace separates network sockets, not the file system), as every
node of a real cluster sees the same key.

`down()` undoes everything `up()` did, also after a failed `up()`: it stops the daemons by PID,
kills what is left in the namespaces (job steps of a failed test), deletes namespaces and
bridge, and removes its /etc/hosts lines. `up()` first clears what an earlier cluster left behind
when its process died without a `down()` (its owner PID, recorded in the names' tag line, is gone).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from typing import Dict, List, Optional, Sequence, Tuple

from slurm_cluster import (ClusterError, LocalCluster, _alive, _free_ports, _sbin, _signal, _terminate,
                           missing_binaries)

HOSTS = "/etc/hosts"
MARK = "# swax-netns-cluster"  # every line this module adds to /etc/hosts ends with MARK <tag> <pid>
SUBNETS = [ipaddress.ip_network(f"10.77.{i}.0/24") for i in range(256)]


def netns_skip_reason() -> str:
    """Why a namespace cluster cannot run here ('' if it can)."""
    missing = missing_binaries()
    if missing:
        return (f"SLURM not installed (missing: {', '.join(missing)}): "
                f"apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        return "a multi-node cluster from network namespaces needs root"
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (apt-get install -y iproute2 util-linux)"
    probe = f"swaxprobe{os.getpid()}"
    p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if p.returncode != 0:
        return f"network namespaces unavailable: ip netns add: {p.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and p.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
    return p


def _used_networks() -> List[ipaddress.IPv4Network]:
    out = _ip("-o", "-4", "addr", "show").stdout
    return [ipaddress.ip_interface(m).network for m in re.findall(r"inet (\S+)", out)]


def _hosts_lines() -> List[str]:
    with open(HOSTS) as f:
        return f.read().splitlines(keepends=True)


def _write_hosts(lines: Sequence[str]) -> None:
    """In place (not a rename: /etc/hosts is often a bind mount)."""
    with open(HOSTS, "r+") as f:
        f.seek(0)
        f.write("".join(lines))
        f.truncate()


class NetnsCluster(LocalCluster):
    """`nodes` slurmd daemons, one per network + UTS namespace; `cpus` CPUs advertised per node
    (linuxproc tracking and no task plugin: the ranks of all nodes share the machine's cores)."""

    def __init__(self, root: str, nodes: int = 2, cpus: int = 4,
                 partitions: Sequence[Tuple[str, str]] = (("debug", "INFINITE"),),
                 slurmd_timeout: int = 10):
        super().__init__(root, cpus=cpus, gpus=0, partitions=partitions)
        # names: interface names have at most 15 characters, so the tag is short
        self.tag = "sx" + secrets.token_hex(2)
        self.owner = os.getpid()
        self.nodes = [f"{self.tag}-node{i + 1}" for i in range(nodes)]
        self.ctl = f"{self.tag}-ctl"
        self.bridge = f"{self.tag}br"
        self.netns = {n: f"{self.tag}-n{i + 1}" for i, n in enumerate(self.nodes)}
        self.slurmd_timeout = slurmd_timeout
        self.net: Optional[ipaddress.IPv4Network] = None
        self.addr: Dict[str, str] = {}
        self.node = self.nodes[0]

    # --- the network ----------------------------------------------------------------------------

    def _pick_subnet(self) -> ipaddress.IPv4Network:
        used = _used_networks()
        for net in SUBNETS:
            if not any(net.overlaps(u) for u in used):
                return net
        raise ClusterError("no free 10.77.X.0/24 subnet for the cluster's bridge")

    def _network_up(self) -> None:
        self.net = self._pick_subnet()
        hosts = list(self.net.hosts())
        self.addr = {self.ctl: str(hosts[0])}
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{hosts[0]}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, node in enumerate(self.nodes):
            ns, addr = self.netns[node], str(hosts[10 + i])
            self.addr[node] = addr
            outer, inner = f"{self.tag}v{i + 1}", f"{self.tag}p{i + 1}"
            _ip("netns", "add", ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        self._add_hosts()

    def _add_hosts(self) -> None:
        lines = _hosts_lines()
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines += [f"{addr}\t{name}\t{MARK} {self.tag} {self.owner}\n" for name, addr in self.addr.items()]
        _write_hosts(lines)

    def ns_exec(self, node: str, *cmd: str) -> List[str]:
        """`cmd` run on `node`: in its network namespace and a UTS namespace named like the node.
        (nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup mounts slurmd reads.)"""
        return ["nsenter", f"--net=/run/netns/{self.netns[node]}", "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', node, *cmd]

    def ns_pids(self, node: str) -> List[int]:
        p = _ip("netns", "pids", self.netns[node], check=False)
        return [int(x) for x in p.stdout.split()] if p.returncode == 0 else []

    # --- SLURM ----------------------------------------------------------------------------------

    def _write_config(self) -> None:
        for sub in ("etc", "state", "spool", "log"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        hw = self.run(_sbin("slurmd"), "-C").stdout.splitlines()[0]
        mem = re.search(r"RealMemory=\d+", hw).group(0)
        ctld_port, slurmd_port = _free_ports(2)  # the nodes' ports are in their own namespaces
        node_lines = ["SlurmdParameters=config_overrides"]  # more CPUs than the machine has
        for node in self.nodes:
            os.makedirs(os.path.join(self.root, "spool", node), exist_ok=True)
            node_lines.append(f"NodeName={node} NodeAddr={self.addr[node]} NodeHostname={node} "
                              f"CPUs={self.cpus} {mem} State=UNKNOWN")
        # SlurmdTimeout: a node whose slurmd is gone is DOWN after this many seconds (300 by
        # default), so a test of a failed node does not wait minutes for the controller to see it.
        lines = self.config_lines(f"SlurmctldHost={self.ctl}({self.addr[self.ctl]})",
                                  [f"SlurmdPort={slurmd_port}", f"SlurmdTimeout={self.slurmd_timeout}"],
                                  ctld_port, node_lines, slurmd_files="slurmd-%n")
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def slurmd_pidfile(self, node: str) -> str:
        return os.path.join(self.root, f"slurmd-{node}.pid")

    def start_slurmd(self, node: str) -> int:
        """Start (or restart, after `kill_node`) the slurmd of `node`; its PID."""
        pidfile = self.slurmd_pidfile(node)
        if os.path.exists(pidfile):
            os.remove(pidfile)
        self.pidfiles[f"slurmd:{node}"] = pidfile
        self.run(*self.ns_exec(node, _sbin("slurmd"), "-N", node))
        pid = self._read_pid(f"slurmd:{node}", timeout=10)
        self._pids[f"slurmd:{node}"] = pid
        return pid

    def up(self, timeout: float = 30) -> None:
        os.makedirs(self.root, exist_ok=True)
        clear_orphans()
        self._network_up()
        self._write_config()
        self._start_munged()
        # slurmctld checks that its host name is SlurmctldHost's: a UTS namespace gives it one
        self.run("unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.ctl, _sbin("slurmctld"))
        self._pids["slurmctld"] = self._read_pid("slurmctld", timeout=10)
        for node in self.nodes:
            self.start_slurmd(node)
        self.wait_idle(timeout)

    def wait_idle(self, timeout: float = 30) -> None:
        self.wait_for(lambda: self.node_states() == {n: "idle" for n in self.nodes}, timeout,
                      "every node to be idle")

    def node_states(self) -> Dict[str, str]:
        p = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False)
        return dict(line.split()[:2] for line in p.stdout.splitlines() if line.strip())

    def kill_node(self, node: str) -> List[int]:
        """The node fails: its slurmd and every process in its namespace (job steps, ranks) get
        SIGKILL at once. Returns the PIDs killed."""
        pids = self.ns_pids(node)
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._pids.pop(f"slurmd:{node}", None)
        if os.path.exists(self.slurmd_pidfile(node)):  # stale now: its PID may be reused
            os.remove(self.slurmd_pidfile(node))
        return pids

    def down(self, timeout: float = 15) -> None:
        """Daemons by PID (TERM, then KILL), leftovers in the namespaces (KILL), then the network
        and the /etc/hosts lines; each step runs even if an earlier one failed."""
        errors = []
        for step in (lambda: self._stop_daemons(timeout), self._kill_namespaces, self._network_down,
                     lambda: remove_hosts_lines(self.tag)):
            try:
                step()
            except Exception as e:  # noqa: BLE001 - teardown goes on; reported at the end
                errors.append(f"{type(e).__name__}: {e}")
        if errors:
            raise ClusterError("teardown: " + "; ".join(errors))

    def _stop_daemons(self, timeout: float) -> None:
        """slurmds and slurmctld together, then munged (TERM, KILL after `timeout`); a daemon
        started by a failed up() is known by its PID file only."""
        for node in self.nodes:
            self.pidfiles.setdefault(f"slurmd:{node}", self.slurmd_pidfile(node))
        for name, path in self.pidfiles.items():
            if name not in self._pids and name != "slurmd" and os.path.exists(path):
                try:
                    self._pids[name] = int(open(path).read().strip())
                except ValueError:
                    pass
        first = [p for k, p in self._pids.items() if k != "munged"]
        for pids in (first, [self._pids["munged"]] if "munged" in self._pids else []):
            _terminate(pids, timeout)
        self._pids.clear()

    def _kill_namespaces(self) -> None:
        for node in self.nodes:
            if os.path.exists(f"/run/netns/{self.netns[node]}"):
                self.kill_node(node)

    def _network_down(self) -> None:
        for node in self.nodes:
            if os.path.exists(f"/run/netns/{self.netns[node]}"):
                _ip("netns", "del", self.netns[node])  # takes its veth pair along
        if _ip("link", "show", self.bridge, check=False).returncode == 0:
            _ip("link", "del", self.bridge)
        # the kernel destroys a deleted namespace (and its veth pair) asynchronously
        outer = [f"{self.tag}v{i + 1}" for i in range(len(self.nodes))]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(_ip("link", "show", o, check=False).returncode != 0 for o in outer):
                return
            time.sleep(0.1)
        raise ClusterError(f"veth links still present 10 s after their namespaces were deleted: {outer}")

    def logs(self, tail: int = 40) -> str:
        out = [super().logs(tail)]
        for node in self.nodes:
            path = os.path.join(self.root, "log", f"slurmd-{node}.log")
            if os.path.exists(path):
                lines = open(path, errors="replace").read().splitlines()[-tail:]
                out.append(f"--- slurmd-{node}.log\n" + "\n".join(lines))
        return "\n".join(out)


def remove_hosts_lines(tag: str) -> None:
    lines = _hosts_lines()
    kept = [l for l in lines if not _is_ours(l, tag)]
    if kept != lines:
        _write_hosts(kept)


def _is_ours(line: str, tag: Optional[str] = None) -> bool:
    fields = line.split(MARK, 1)
    if len(fields) != 2:
        return False
    return tag is None or fields[1].split()[:1] == [tag]


def clear_orphans() -> None:
    """What a cluster whose process died without teardown left behind: /etc/hosts lines, bridge,
    namespaces (and their processes) of tags whose owner PID no longer runs."""
    for line in _hosts_lines():
        if not _is_ours(line):
            continue
        tag, pid = (line.split(MARK, 1)[1].split() + ["", ""])[:2]
        if not re.fullmatch(r"sx[0-9a-f]{4}", tag) or (pid.isdigit() and _alive(int(pid))):
            continue
        for ns in _ip("netns", "list", check=False).stdout.split("\n"):
            name = ns.split()[0] if ns.strip() else ""
            if name.startswith(f"{tag}-n"):
                for p in _ip("netns", "pids", name, check=False).stdout.split():
                    _signal(int(p), signal.SIGKILL)
                _ip("netns", "del", name, check=False)
        _ip("link", "del", f"{tag}br", check=False)
        remove_hosts_lines(tag)
