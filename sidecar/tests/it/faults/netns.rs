//! The plumbing: a [`Lab`] of Linux network namespaces joined by a bridge, with nftables
//! drop rules that cut a node off ([`Lab::cut`]) or split the nodes into groups
//! ([`Lab::split`]), and ways to act from inside a namespace ([`Lab::command`] for a child
//! process, [`in_namespace`] for a closure on a thread of this process).
//!
//! A lab of `n` namespaces, numbered `k` (see [`Lab::new`]), made by the test process with
//! id `pid`, is named with the prefix `omg<pid>k<k>`:
//!
//! ```text
//!   <prefix>-n0            <prefix>-n1      ...   <prefix>-n{n-1}
//!   eth0 10.88.k.1/24      eth0 10.88.k.2/24      eth0 10.88.k.n/24
//!     │ veth                 │ veth                  │ veth
//!   ──v0─────────────────────v1──────── br0 ─────────v{n-1}──  <prefix>-hub
//! ```
//!
//! `lo` is up in every namespace. The addresses exist only inside these namespaces: nothing
//! in the root namespace's network is created or changed, and nothing outside the lab can
//! reach them. Rules are nftables tables of family `inet` in a node's own namespace:
//! `omg_cut` (drop everything in and out of `eth0`) and `omg_split` (drop traffic to and
//! from the other group's addresses). ARP is not filtered (it is not in the `inet`
//! family), so a healed path works again at once.
//!
//! `Drop` kills every process still inside the lab's namespaces (only the lab's own
//! children can be there) and deletes the namespaces. Namespaces left behind by a test
//! process that died without dropping its lab are swept by the next [`Lab::new`].

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Lab numbers `k` (the third octet of the addresses) that may be in use at once.
const MAX_LABS: u16 = 250;
/// How long a new lab's links may take to carry traffic ([`Lab::wait_connected`]).
const LAB_READY: Duration = Duration::from_secs(10);
/// nftables table of [`Lab::cut`].
const CUT_TABLE: &str = "omg_cut";
/// nftables table of [`Lab::split`].
const SPLIT_TABLE: &str = "omg_split";

/// Why a lab could not be built.
#[derive(Debug)]
pub(crate) enum LabError {
    /// The machine cannot host one (not root, `ip` or `nft` missing, namespaces not
    /// permitted): the suite is skipped with this reason.
    Unavailable(String),
    /// Anything else: a real failure.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for LabError {
    fn from(e: anyhow::Error) -> Self {
        LabError::Failed(e)
    }
}

/// Network namespaces for `n` nodes on one bridge; see the module docs.
pub(crate) struct Lab {
    prefix: String,
    k: u8,
    n: usize,
    /// Namespaces created so far, hub first: what `Drop` removes.
    created: Vec<String>,
    /// (node, table) pairs installed: what [`Lab::heal_all`] removes.
    rules: BTreeSet<(usize, &'static str)>,
    /// Holds the lock on lab number `k` while the lab exists.
    _slot: File,
}

/// Where `program` is: on `PATH`, else in `/usr/sbin` or `/sbin` (where Debian installs
/// `ip` and `nft`, and which a root environment's `PATH` may lack); the bare name if in
/// none of them.
fn tool(program: &str) -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .map_or_else(|| program.to_owned(), |p| p.to_string_lossy().into_owned())
}

/// Runs `program args` (with `stdin` fed in, if any); an error names the command and
/// shows its stderr. Returns stdout.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let line = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(tool(program))
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{}`", line()))?;
    if let Some(text) = stdin {
        child.stdin.take().expect("piped").write_all(text.as_bytes()).with_context(|| format!("`{}`", line()))?;
    }
    let out = child.wait_with_output().with_context(|| format!("`{}`", line()))?;
    if !out.status.success() {
        bail!("`{}` failed ({}): {}", line(), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip args`.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    run("ip", args, None)
}

/// Kills every process inside namespace `ns` and deletes it. Best effort (for `Drop` and
/// the sweep): failures are printed, not returned.
fn destroy_namespace(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: kill(2) has no memory preconditions; the pid is a process inside a
            // namespace this suite created, which only its own children can enter.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Err(e) = ip(&["netns", "delete", ns]) {
        eprintln!("fault suite: could not delete network namespace {ns}: {e:#}");
    }
}

/// Deletes namespaces of earlier labs whose test process no longer exists.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("omg").and_then(|rest| rest.split_once('k')).map(|(pid, _)| pid) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            destroy_namespace(&name);
        }
    }
}

/// Takes the first free lab number: an exclusive lock on a file per number, held for the
/// lab's lifetime (and released by the kernel if the process dies).
fn take_slot() -> anyhow::Result<(u8, File)> {
    for k in 1..=MAX_LABS {
        let path = std::env::temp_dir().join(format!("openmatch-gossip-faults-lab{k}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if file.try_lock().is_ok() {
            return Ok((k as u8, file));
        }
    }
    bail!("all {MAX_LABS} lab numbers are in use")
}

/// Whether `program --flag` runs and succeeds: `Err` with the reason if not.
fn tool_present(program: &str, flag: &str, package: &str) -> Result<(), String> {
    match run(program, &[flag], None) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("`{program}` ({package}) is not usable: {e:#}")),
    }
}

impl Lab {
    /// Builds a lab of `n` node namespaces, or says why it cannot
    /// ([`LabError::Unavailable`] when not root, `ip` or `nft` is missing, or the kernel
    /// refuses to create a namespace).
    pub(crate) fn new(n: usize) -> Result<Lab, LabError> {
        assert!((1..=250).contains(&n), "a lab has 1 to 250 nodes");
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(LabError::Unavailable(format!("not root (effective uid {euid})")));
        }
        tool_present("ip", "-V", "iproute2").map_err(LabError::Unavailable)?;
        tool_present("nft", "--version", "nftables").map_err(LabError::Unavailable)?;
        sweep_stale();
        let (k, slot) = take_slot()?;
        let mut lab = Lab {
            prefix: format!("omg{}k{k}", std::process::id()),
            k,
            n,
            created: Vec::new(),
            rules: BTreeSet::new(),
            _slot: slot,
        };
        let hub = lab.hub();
        if let Err(e) = ip(&["netns", "add", &hub]) {
            return Err(LabError::Unavailable(format!("cannot create a network namespace: {e:#}")));
        }
        lab.created.push(hub.clone());
        lab.build(&hub)?;
        lab.wait_connected()?;
        Ok(lab)
    }

    /// Waits until every node's link carries traffic: a veth that was just set up can
    /// drop the first packets for a moment (carrier, bridge port state), which a test
    /// would misread as a cut. Probes a ring (node `i` to node `i + 1`), so every port of
    /// the bridge is crossed; fails after [`LAB_READY`].
    fn wait_connected(&self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + LAB_READY;
        for i in (0..self.n).filter(|_| self.n > 1) {
            let target = SocketAddr::from((self.addr((i + 1) % self.n), 9));
            let ns = self.ns(i);
            loop {
                let probe = {
                    let ns = ns.clone();
                    std::thread::spawn(move || {
                        enter(&ns).map(|()| {
                            !matches!(
                                TcpStream::connect_timeout(&target, Duration::from_millis(200)),
                                Err(e) if e.kind() != std::io::ErrorKind::ConnectionRefused
                            )
                        })
                    })
                };
                if probe.join().map_err(|_| anyhow::anyhow!("the probe thread panicked"))?? {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    bail!("{ns} cannot reach {target} {LAB_READY:?} after the lab was built");
                }
            }
        }
        Ok(())
    }

    /// Creates the bridge, the node namespaces and their veth pairs (the hub exists).
    fn build(&mut self, hub: &str) -> anyhow::Result<()> {
        ip(&["-n", hub, "link", "set", "lo", "up"])?;
        ip(&["-n", hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", hub, "link", "set", "br0", "up"])?;
        for i in 0..self.n {
            let ns = self.ns(i);
            ip(&["netns", "add", &ns])?;
            self.created.push(ns.clone());
            let hub_end = format!("v{i}");
            ip(&["-n", hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["-n", hub, "link", "set", &hub_end, "master", "br0"])?;
            ip(&["-n", hub, "link", "set", &hub_end, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.addr(i)), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// Name of the hub namespace (the bridge).
    fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// Number of node namespaces.
    pub(crate) fn nodes(&self) -> usize {
        self.n
    }

    /// Name of node `i`'s namespace.
    pub(crate) fn ns(&self, i: usize) -> String {
        assert!(i < self.n, "node {i} of a lab of {}", self.n);
        format!("{}-n{i}", self.prefix)
    }

    /// Node `i`'s address: `10.88.k.(i + 1)`.
    pub(crate) fn addr(&self, i: usize) -> Ipv4Addr {
        assert!(i < self.n, "node {i} of a lab of {}", self.n);
        Ipv4Addr::new(10, 88, self.k, i as u8 + 1)
    }

    /// A command that runs `program` inside node `i`'s namespace (`ip netns exec`, which
    /// execs it: the child's pid is the program's). Arguments are added by the caller.
    pub(crate) fn command(&self, i: usize, program: &std::path::Path) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(tool("ip"));
        cmd.args(["netns", "exec", &self.ns(i)]).arg(program);
        die_with_parent(&mut cmd);
        cmd
    }

    /// Loads an nftables ruleset into node `i`'s namespace.
    fn nft(&self, i: usize, script: &str) -> anyhow::Result<()> {
        run("ip", &["netns", "exec", &self.ns(i), &tool("nft"), "-f", "-"], Some(script)).map(drop)
    }

    /// Deletes table `table` from node `i`'s namespace, if this lab installed it.
    fn drop_table(&mut self, i: usize, table: &'static str) -> anyhow::Result<()> {
        if self.rules.remove(&(i, table)) {
            self.delete_table(i, table)?;
        }
        Ok(())
    }

    /// Runs `nft delete table inet <table>` in node `i`'s namespace.
    fn delete_table(&self, i: usize, table: &str) -> anyhow::Result<()> {
        run("ip", &["netns", "exec", &self.ns(i), &tool("nft"), "delete", "table", "inet", table], None).map(drop)
    }

    /// Isolates node `i` from every other node: drops everything in and out of its veth.
    pub(crate) fn cut(&mut self, i: usize) -> anyhow::Result<()> {
        let script = format!(
            "table inet {CUT_TABLE} {{\n\
             \tchain input {{ type filter hook input priority filter; policy accept; iifname \"eth0\" drop; }}\n\
             \tchain output {{ type filter hook output priority filter; policy accept; oifname \"eth0\" drop; }}\n\
             }}\n"
        );
        self.drop_table(i, CUT_TABLE)?;
        self.nft(i, &script)?;
        self.rules.insert((i, CUT_TABLE));
        Ok(())
    }

    /// Undoes [`Lab::cut`] of node `i`.
    pub(crate) fn heal(&mut self, i: usize) -> anyhow::Result<()> {
        self.drop_table(i, CUT_TABLE)
    }

    /// Drops all traffic between the nodes of `a` and those of `b` (both directions, by
    /// peer address, on every node of both groups); traffic within a group flows.
    pub(crate) fn split(&mut self, a: &[usize], b: &[usize]) -> anyhow::Result<()> {
        if let Some(i) = a.iter().find(|i| b.contains(i)) {
            bail!("node {i} is in both groups of a split");
        }
        for (mine, theirs) in [(a, b), (b, a)] {
            let set = theirs.iter().map(|&j| self.addr(j).to_string()).collect::<Vec<_>>().join(", ");
            let script = format!(
                "table inet {SPLIT_TABLE} {{\n\
                 \tchain input {{ type filter hook input priority filter; policy accept; ip saddr {{ {set} }} drop; }}\n\
                 \tchain output {{ type filter hook output priority filter; policy accept; ip daddr {{ {set} }} drop; }}\n\
                 }}\n"
            );
            for &i in mine {
                self.drop_table(i, SPLIT_TABLE)?;
                self.nft(i, &script)?;
                self.rules.insert((i, SPLIT_TABLE));
            }
        }
        Ok(())
    }

    /// Removes every rule this lab installed ([`Lab::cut`]s and [`Lab::split`]s).
    pub(crate) fn heal_all(&mut self) -> anyhow::Result<()> {
        for (i, table) in std::mem::take(&mut self.rules) {
            self.delete_table(i, table)?;
        }
        Ok(())
    }

    /// Whether a TCP connection from node `from` to `port` of node `to` gets an answer
    /// within `timeout` (an accept or a refusal: both prove the path works); `false` if it
    /// times out, as under drop rules.
    pub(crate) async fn reachable(&self, from: usize, to: usize, port: u16, timeout: Duration) -> anyhow::Result<bool> {
        let target = SocketAddr::from((self.addr(to), port));
        in_namespace(&self.ns(from), move || match TcpStream::connect_timeout(&target, timeout) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(true),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::HostUnreachable) => {
                Ok(false)
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!("probing {target}"))),
        })
        .await?
    }

    /// `GET path` (HTTP/1.1, `Connection: close`) to `addr` from inside node `i`'s
    /// namespace; returns the body of a 200 answer.
    pub(crate) async fn http_get(&self, i: usize, addr: SocketAddr, path: &str) -> anyhow::Result<String> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let answer = in_namespace(&self.ns(i), move || -> anyhow::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(request.as_bytes())?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })
        .await?
        .with_context(|| format!("GET http://{addr}{path} in {}", self.ns(i)))?;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        if !head.starts_with("HTTP/1.1 200") {
            bail!("GET http://{addr}{path}: {}", head.lines().next().unwrap_or(""));
        }
        Ok(body.to_owned())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Nodes first, hub last: deleting a namespace also removes the veth ends in it.
        for ns in self.created.iter().rev() {
            destroy_namespace(ns);
        }
    }
}

/// Makes the child of `cmd` get SIGKILL when the thread that spawned it exits, so that no
/// process of a test outlives it, even when the test process itself is killed.
pub(crate) fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Moves the calling thread into network namespace `ns` (sockets it creates from now on
/// live there). Only this thread changes namespace; the rest of the process stays put.
pub(crate) fn enter(ns: &str) -> anyhow::Result<()> {
    let path = format!("{NETNS_DIR}/{ns}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns(2) on a valid open namespace file descriptor; it affects only the
    // calling thread's network namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns into {ns}"));
    }
    Ok(())
}

/// Runs `f` on a new thread inside namespace `ns` and returns its result, without blocking
/// the async runtime.
pub(crate) async fn in_namespace<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let ns = ns.to_owned();
    std::thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || {
            let _ = tx.send(enter(&ns).map(|()| f()));
        })
        .context("spawning a thread")?;
    rx.await.context("the namespace thread died")?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Probe timeout: a dropped path costs this much per probe.
    const PROBE: Duration = Duration::from_millis(500);

    async fn paths(lab: &Lab) -> Vec<(usize, usize, bool)> {
        let mut out = Vec::new();
        for from in 0..lab.nodes() {
            for to in (0..lab.nodes()).filter(|&to| to != from) {
                out.push((from, to, lab.reachable(from, to, 9, PROBE).await.unwrap()));
            }
        }
        out
    }

    fn all_but(n: usize, dead: impl Fn(usize, usize) -> bool) -> Vec<(usize, usize, bool)> {
        (0..n)
            .flat_map(|f| (0..n).filter(move |&t| t != f).map(move |t| (f, t)))
            .map(|(f, t)| (f, t, !dead(f, t)))
            .collect()
    }

    /// Cut, heal, split and heal-all block exactly the paths they should, and dropping the
    /// lab removes its namespaces.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cut_split_and_heal_block_exactly_the_chosen_paths() {
        let Some(mut lab) = crate::faults::lab_or_skip(4) else { return };
        assert_eq!(lab.addr(3).octets()[..2], [10, 88]);
        assert_eq!(paths(&lab).await, all_but(4, |_, _| false), "a fresh lab is fully connected");
        lab.cut(1).unwrap();
        assert_eq!(paths(&lab).await, all_but(4, |f, t| f == 1 || t == 1), "node 1 cut off");
        lab.heal(1).unwrap();
        assert_eq!(paths(&lab).await, all_but(4, |_, _| false), "node 1 healed");
        lab.split(&[0, 1], &[2, 3]).unwrap();
        assert_eq!(paths(&lab).await, all_but(4, |f, t| (f < 2) != (t < 2)), "split 01 | 23");
        lab.cut(3).unwrap();
        lab.heal_all().unwrap();
        assert_eq!(paths(&lab).await, all_but(4, |_, _| false), "all healed");
        assert!(lab.split(&[0, 1], &[1, 2]).is_err(), "a node in both groups");
        let names: Vec<String> = (0..4).map(|i| lab.ns(i)).chain([lab.hub()]).collect();
        drop(lab);
        let left = ip(&["netns", "list"]).unwrap();
        for ns in names {
            assert!(
                !left.lines().any(|l| l.split_whitespace().next() == Some(ns.as_str())),
                "{ns} left behind: {left}"
            );
        }
    }
}
