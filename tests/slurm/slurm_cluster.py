"""A real one-node SLURM cluster for tests: munged + slurmctld + slurmd from Debian's packages.

Everything lives in one temporary directory: the munge key and socket, slurm.conf (found by every
command through SLURM_CONF), state, spool, logs and PID files. Nothing under /etc or /run is touched,
so a system munged or another test cluster on the same machine does not collide with this one.
The daemons run as root with settings that work in a container: linuxproc process
tracking and no task plugin (cgroup tracking fails in containers), short credential expiry and
fast scheduler ticks (a requeued job starts within seconds). Teardown stops exactly the PIDs the
daemons wrote.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from typing import Dict, List, Sequence, Tuple

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "sinfo", "scancel")


class ClusterError(RuntimeError):
    pass


def missing_binaries() -> List[str]:
    return [b for b in DAEMONS if shutil.which(b) is None
            and not os.path.exists(os.path.join("/usr/sbin", b))]


def _free_ports(n: int) -> List[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _sbin(name: str) -> str:
    return shutil.which(name) or os.path.join("/usr/sbin", name)


class LocalCluster:
    """`up()` starts the daemons and waits for the node to be idle; `down()` stops them by PID."""

    def __init__(self, root: str, cpus: int = 4, gpus: int = 2,
                 partitions: Sequence[Tuple[str, str]] = (("debug", "INFINITE"),)):
        """`partitions`: (name, MaxTime) pairs over the one node; the first is the default."""
        self.root = root
        self.cpus, self.gpus, self.partitions = cpus, gpus, partitions
        self.conf = os.path.join(root, "etc", "slurm.conf")
        self.munge_socket = os.path.join(root, "munge", "munge.sock")
        self.pidfiles = {name: os.path.join(root, f"{name}.pid")
                         for name in ("munged", "slurmctld", "slurmd")}
        self.node = None
        self._pids: Dict[str, int] = {}

    # environment every client command (and the jobs, which inherit it) needs
    @property
    def env(self) -> Dict[str, str]:
        env = dict(os.environ)
        env["SLURM_CONF"] = self.conf
        return env

    def run(self, *cmd: str, timeout: float = 30, check: bool = True, **kw) -> subprocess.CompletedProcess:
        p = subprocess.run(list(cmd), env=kw.pop("env", self.env), capture_output=True, text=True,
                           timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()}")
        return p

    def _node_name(self) -> str:
        host = socket.gethostname().split(".")[0]
        try:
            socket.gethostbyname(host)
            return host
        except OSError:  # a hostname that does not resolve: slurmd can still be localhost
            return "localhost"

    def _write_config(self) -> None:
        for sub in ("etc", "state", "spool", "log", "fakegpu"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        self.node = self._node_name()
        hw = self.run(_sbin("slurmd"), "-C").stdout.splitlines()[0]
        mem = re.search(r"RealMemory=\d+", hw).group(0)
        ctld_port, slurmd_port = _free_ports(2)
        # gres/gpu needs one character device per GPU; /dev/null's numbers make a harmless one.
        for i in range(self.gpus):
            dev = os.path.join(self.root, "fakegpu", f"nvidia{i}")
            if not os.path.exists(dev):
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))
        node = f"NodeName={self.node} CPUs={self.cpus} {mem}"
        extra = ["SlurmdParameters=config_overrides"]  # advertise more CPUs than the machine has
        if self.gpus:
            node += f" Gres=gpu:{self.gpus}"
            extra.append("GresTypes=gpu")
            with open(os.path.join(self.root, "etc", "gres.conf"), "w") as f:
                f.write(f"NodeName={self.node} Name=gpu "
                        f"File={self.root}/fakegpu/nvidia[0-{self.gpus - 1}]\n")
        lines = self.config_lines(f"SlurmctldHost={self.node}", [f"SlurmdPort={slurmd_port}"],
                                  ctld_port, extra + [node + " State=UNKNOWN"])
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def config_lines(self, ctld_host: str, daemon_lines: Sequence[str], ctld_port: int,
                     node_lines: Sequence[str], slurmd_files: str = "slurmd") -> List[str]:
        """slurm.conf: the settings every test cluster shares, around its controller, daemon and
        node lines, then the partitions over all nodes (the first is the default).
        `slurmd_files`: the stem of slurmd's PID and log file (`slurmd-%n` for one per node)."""
        r = self.root
        lines = [
            "ClusterName=swaxci",
            ctld_host,
            f"SlurmctldPort={ctld_port}",
            *daemon_lines,
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket},cred_expire=5",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool" + ("/%n" if "%n" in slurmd_files else ""),
            f"SlurmctldPidFile={self.pidfiles['slurmctld']}",
            f"SlurmdPidFile={r}/{slurmd_files}.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/{slurmd_files}.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={r}/log/jobcomp.log",
            "SwitchType=switch/none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "JobRequeue=1",
            "KillWait=5",
            "MinJobAge=3600",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_interval=2",
            *node_lines,
        ]
        for i, (part, max_time) in enumerate(self.partitions):
            default = "YES" if i == 0 else "NO"
            lines.append(f"PartitionName={part} Nodes=ALL Default={default} MaxTime={max_time} State=UP")
        return lines

    def _start_munged(self) -> None:
        d = os.path.join(self.root, "munge")
        os.makedirs(d, exist_ok=True)
        # munged insists that every directory above its socket is searchable by all users
        for path in (self.root, d):
            os.chmod(path, 0o755)
        key = os.path.join(d, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        self.run(_sbin("munged"), f"--socket={self.munge_socket}", f"--key-file={key}",
                 f"--pid-file={self.pidfiles['munged']}", f"--log-file={d}/munged.log",
                 f"--seed-file={d}/munged.seed")
        self._pids["munged"] = self._read_pid("munged", timeout=10)

    def _read_pid(self, name: str, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(self.pidfiles[name]) as f:
                    text = f.read().strip()
                if text:
                    return int(text)
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        raise ClusterError(f"{name} wrote no PID file within {timeout} s\n{self.logs()}")

    def up(self, timeout: float = 30) -> None:
        os.makedirs(self.root, exist_ok=True)
        self._write_config()
        self._start_munged()
        self.run(_sbin("slurmctld"))
        self._pids["slurmctld"] = self._read_pid("slurmctld", timeout=10)
        slurmd = [_sbin("slurmd")] + (["-N", "localhost"] if self.node == "localhost" else [])
        self.run(*slurmd)
        self._pids["slurmd"] = self._read_pid("slurmd", timeout=10)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            p = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
            if p.returncode == 0 and set(p.stdout.split()) == {"idle"}:  # a line per partition
                return
            time.sleep(0.2)
        raise ClusterError(f"the node did not become idle within {timeout} s\n{self.logs()}")

    def down(self, timeout: float = 15) -> None:
        """TERM slurmd and slurmctld together, then munged; KILL what is left after `timeout`."""
        for group in (("slurmd", "slurmctld"), ("munged",)):
            pids = []
            for name in group:
                pid = self._pids.get(name)
                if pid is None and os.path.exists(self.pidfiles[name]):
                    try:
                        pid = int(open(self.pidfiles[name]).read().strip())
                    except ValueError:
                        pid = None
                if pid:
                    pids.append(pid)
            _terminate(pids, timeout)
        self._pids.clear()

    def logs(self, tail: int = 40) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = os.path.join(self.root, "log", name)
            if os.path.exists(path):
                lines = open(path, errors="replace").read().splitlines()[-tail:]
                out.append(f"--- {name}\n" + "\n".join(lines))
        return "\n".join(out)

    # --- jobs -----------------------------------------------------------------------------------

    def job(self, jobid: str) -> Dict[str, str]:
        """`scontrol show job -o` as a dict (one entry per KEY=VALUE)."""
        text = self.run("scontrol", "show", "job", "-o", str(jobid)).stdout
        return dict(re.findall(r"(\w+)=(\S*)", text.splitlines()[0]))

    def jobs(self, jobid: str) -> List[Dict[str, str]]:
        """Every record of a job (one per array task)."""
        text = self.run("scontrol", "show", "job", "-o", str(jobid)).stdout
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in text.splitlines() if line.strip()]

    def in_queue(self, jobid: str) -> bool:
        p = self.run("squeue", "-h", "-j", str(jobid), "-o", "%T", check=False)
        return p.returncode == 0 and bool(p.stdout.strip())

    def wait(self, jobid: str, timeout: float) -> List[Dict[str, str]]:
        """Wait until the job (every task of an array) left the queue; cancel it on timeout."""
        deadline = time.monotonic() + timeout
        while self.in_queue(jobid):
            if time.monotonic() > deadline:
                info = self.run("squeue", "-j", str(jobid), check=False).stdout
                self.run("scancel", str(jobid), check=False)
                raise ClusterError(f"job {jobid} still queued after {timeout} s:\n{info}\n{self.logs()}")
            time.sleep(0.2)
        return self.jobs(jobid)

    def wait_for(self, predicate, timeout: float, what: str, poll: float = 0.2):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(poll)
        raise ClusterError(f"timed out after {timeout} s waiting for {what}\n{self.logs()}")


def _terminate(pids: Sequence[int], timeout: float) -> None:
    """TERM every pid, wait up to `timeout` for them to end, KILL those still alive."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
