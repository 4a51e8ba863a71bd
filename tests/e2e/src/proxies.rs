//! Real proxy servers from Debian packages, started on free loopback ports for one test.
//!
//! Each daemon runs in the foreground with a config file in its own temp dir, and a
//! [`ProxyProcess`] kills it (and every process it forked) when dropped. Tests prove a
//! request went through the proxy by asking the kernel who owns the socket the
//! simulator saw as its peer ([`ProxyProcess::owns_peer`]): on one loopback address,
//! ports are the only thing that tells the proxy from the host.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a daemon may take to start accepting.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running proxy (or, for the SSH tunnel, `sshd` plus the `ssh -D` client).
pub struct ProxyProcess {
    name: &'static str,
    children: Vec<Child>,
    port: u16,
    dir: tempfile::TempDir,
    logs: Vec<PathBuf>,
}

/// A free port on 127.0.0.1 (free when asked; the daemon binds it right after).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// True when `program` is on the PATH or at that path.
fn installed(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).exists()))
        .unwrap_or(false)
}

fn require(program: &str, package: &str) -> Result<()> {
    if installed(program) {
        Ok(())
    } else {
        bail!("{program} is not installed: install the Debian package {package} (tests/run-all does)")
    }
}

impl ProxyProcess {
    /// `microsocks` (SOCKS5), with user and password if given.
    pub fn microsocks(auth: Option<(&str, &str)>) -> Result<Self> {
        Self::microsocks_on(free_port()?, auth)
    }

    /// `microsocks` listening on `port` (a test that needs the address before the
    /// proxy runs).
    pub fn microsocks_on(port: u16, auth: Option<(&str, &str)>) -> Result<Self> {
        require("microsocks", "microsocks")?;
        let mut proxy = Self::empty_on("microsocks", port)?;
        let log = proxy.dir.path().join("microsocks.log");
        let mut command = Command::new("microsocks");
        command.args(["-i", "127.0.0.1", "-p", &proxy.port.to_string()]);
        if let Some((user, password)) = auth {
            command.args(["-u", user, "-P", password]);
        }
        proxy.spawn(command, &log)?;
        proxy.wait_until_accepting(proxy.port)?;
        Ok(proxy)
    }

    /// `danted` (Dante): SOCKS4 and SOCKS5 without authentication for loopback clients.
    pub fn dante() -> Result<Self> {
        require("danted", "dante-server")?;
        let mut proxy = Self::empty("dante")?;
        let dir = proxy.dir.path().to_owned();
        let log = dir.join("danted.log");
        let config = format!(
            "logoutput: {log}\ninternal: 127.0.0.1 port = {port}\nexternal: 127.0.0.1\n\
             clientmethod: none\nsocksmethod: none\nuser.privileged: root\nuser.unprivileged: nobody\n\
             client pass {{\n  from: 127.0.0.1/32 to: 0.0.0.0/0\n}}\n\
             socks pass {{\n  from: 127.0.0.1/32 to: 0.0.0.0/0\n  protocol: tcp\n  log: connect\n}}\n",
            log = log.display(),
            port = proxy.port
        );
        std::fs::write(dir.join("danted.conf"), config)?;
        let mut command = Command::new("danted");
        command.arg("-f").arg(dir.join("danted.conf")).arg("-p").arg(dir.join("danted.pid"));
        proxy.spawn(command, &dir.join("danted.out"))?;
        proxy.logs.push(log);
        proxy.wait_until_accepting(proxy.port)?;
        Ok(proxy)
    }

    /// `tinyproxy` (HTTP): CONNECT allowed to `connect_ports`, Basic auth if given.
    pub fn tinyproxy(connect_ports: &[u16], auth: Option<(&str, &str)>) -> Result<Self> {
        require("tinyproxy", "tinyproxy")?;
        let mut proxy = Self::empty("tinyproxy")?;
        let dir = proxy.dir.path().to_owned();
        let log = dir.join("tinyproxy.log");
        let mut config = format!(
            "Port {}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\nMaxClients 64\nLogLevel Info\nLogFile \"{}\"\n",
            proxy.port,
            log.display()
        );
        for port in connect_ports {
            config.push_str(&format!("ConnectPort {port}\n"));
        }
        if let Some((user, password)) = auth {
            config.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        std::fs::write(dir.join("tinyproxy.conf"), config)?;
        let mut command = Command::new("tinyproxy");
        command.arg("-d").arg("-c").arg(dir.join("tinyproxy.conf"));
        proxy.spawn(command, &dir.join("tinyproxy.out"))?;
        proxy.logs.push(log);
        proxy.wait_until_accepting(proxy.port)?;
        Ok(proxy)
    }

    /// An `ssh -D` SOCKS tunnel through a local `sshd`, as the seed's example sets up
    /// to a jump host. The SOCKS port is the `ssh` client's; connections to the target
    /// leave from `sshd`.
    pub fn ssh_tunnel() -> Result<Self> {
        require("/usr/sbin/sshd", "openssh-server")?;
        require("ssh", "openssh-client")?;
        require("ssh-keygen", "openssh-client")?;
        let mut proxy = Self::empty("ssh -D")?;
        let dir = proxy.dir.path().to_owned();
        for key in ["host_key", "client_key"] {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key))
                .stdin(Stdio::null())
                .status()
                .context("ssh-keygen")?;
            if !status.success() {
                bail!("ssh-keygen failed for {key}");
            }
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys"))?;
        // sshd refuses to start without its privilege-separation directory.
        std::fs::create_dir_all("/run/sshd").context("cannot create /run/sshd (run the tests as root)")?;
        // The SOCKS port was only reserved, not bound: the next free port may be it again.
        let sshd_port = loop {
            let port = free_port()?;
            if port != proxy.port {
                break port;
            }
        };
        let config = format!(
            "HostKey {dir}/host_key\nAuthorizedKeysFile {dir}/authorized_keys\nListenAddress 127.0.0.1\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nAllowTcpForwarding yes\nPidFile none\nLogLevel VERBOSE\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config)?;
        let mut sshd = Command::new("/usr/sbin/sshd");
        sshd.args(["-D", "-e", "-f"]).arg(dir.join("sshd_config")).args(["-p", &sshd_port.to_string()]);
        let sshd_log = dir.join("sshd.log");
        proxy.spawn(sshd, &sshd_log)?;
        proxy.wait_until_accepting(sshd_port)?;
        // The account this process runs as (root on CI): its key is the authorized one.
        let user = Command::new("id")
            .arg("-un")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "root".to_owned());
        let mut ssh = Command::new("ssh");
        ssh.args(["-F", "/dev/null", "-N", "-D"])
            .arg(format!("127.0.0.1:{}", proxy.port))
            .args(["-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", "-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-i"])
            .arg(dir.join("client_key"))
            .args(["-p", &sshd_port.to_string()])
            .arg(format!("{user}@127.0.0.1"));
        proxy.spawn(ssh, &dir.join("ssh.log"))?;
        proxy.wait_until_accepting(proxy.port)?;
        Ok(proxy)
    }

    fn empty(name: &'static str) -> Result<Self> {
        Self::empty_on(name, free_port()?)
    }

    fn empty_on(name: &'static str, port: u16) -> Result<Self> {
        Ok(Self { name, children: Vec::new(), port, dir: tempfile::tempdir()?, logs: Vec::new() })
    }

    fn spawn(&mut self, mut command: Command, log: &Path) -> Result<()> {
        let out = std::fs::File::create(log)?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Its own process group, so nothing it forks can outlive the test unseen.
            .process_group(0);
        let child = command.spawn().with_context(|| format!("cannot start {:?}", command.get_program()))?;
        self.children.push(child);
        self.logs.push(log.to_owned());
        Ok(())
    }

    fn wait_until_accepting(&mut self, port: u16) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return Ok(());
            }
            for child in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    bail!("{} exited ({status}) before accepting on {addr}:\n{}", self.name, self.log());
                }
            }
            if Instant::now() > deadline {
                bail!("{} did not accept on {addr} within {START_TIMEOUT:?}:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `SCHEME://[user:password@]127.0.0.1:PORT`.
    pub fn url(&self, scheme: &str, auth: Option<(&str, &str)>) -> String {
        match auth {
            Some((user, password)) => format!("{scheme}://{user}:{password}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// Everything the daemon wrote to its logs so far.
    pub fn log(&self) -> String {
        self.logs
            .iter()
            .map(|path| format!("--- {}\n{}", path.display(), std::fs::read_to_string(path).unwrap_or_default()))
            .collect()
    }

    /// The processes started for this proxy and all their descendants.
    fn process_tree(&self) -> BTreeSet<u32> {
        let roots: BTreeSet<u32> = self.children.iter().map(Child::id).collect();
        let mut tree = roots.clone();
        let Ok(entries) = std::fs::read_dir("/proc") else { return tree };
        let parents: Vec<(u32, u32)> = entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| Some((pid, parent_of(pid)?)))
            .collect();
        // Parents before children is not guaranteed: repeat until nothing is added.
        loop {
            let before = tree.len();
            for (pid, parent) in &parents {
                if tree.contains(parent) {
                    tree.insert(*pid);
                }
            }
            if tree.len() == before {
                return tree;
            }
        }
    }

    /// Who holds the client end of the TCP connection from `peer` to `server` (as the
    /// server saw it): this proxy (or a process it forked), another process, or nobody
    /// any more.
    pub fn peer_owner(&self, peer: SocketAddr, server: SocketAddr) -> Result<PeerOwner> {
        let Some(inode) = socket_inode(peer, server)? else { return Ok(PeerOwner::Closed) };
        let wanted = format!("socket:[{inode}]");
        for pid in self.process_tree() {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
            for fd in fds.flatten() {
                if std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str()) {
                    return Ok(PeerOwner::Proxy);
                }
            }
        }
        Ok(PeerOwner::Other)
    }
}

/// See [`ProxyProcess::peer_owner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerOwner {
    Proxy,
    Other,
    /// The connection is closed (a finished token request, say): it proves nothing.
    Closed,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        // The daemons fork (dante keeps a pool, sshd one child per session): end the
        // whole tree we started, by pid, then reap our direct children.
        let pids: Vec<String> = self.process_tree().iter().map(u32::to_string).collect();
        if !pids.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&pids).stderr(Stdio::null()).status();
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The parent pid from `/proc/PID/stat` (the field after the parenthesised name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// The inode of the open IPv4 TCP socket from `local` to `remote`, from /proc/net/tcp.
///
/// Both ends are matched: after a busy suite the table holds thousands of closed
/// (TIME_WAIT, inode 0) connections, and one of them often shares the local port with a
/// live connection to another server.
fn socket_inode(local: SocketAddr, remote: SocketAddr) -> Result<Option<u64>> {
    let (Some(local), Some(remote)) = (proc_net_address(local), proc_net_address(remote)) else {
        return Ok(None);
    };
    let table = std::fs::read_to_string("/proc/net/tcp").context("cannot read /proc/net/tcp")?;
    Ok(table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ends_match = fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str());
        ends_match.then(|| fields.get(9)?.parse::<u64>().ok()).flatten().filter(|inode| *inode != 0)
    }))
}

/// An IPv4 address as /proc/net/tcp writes it: the address bytes as a native-endian
/// hex word, then the port.
fn proc_net_address(address: SocketAddr) -> Option<String> {
    let SocketAddr::V4(v4) = address else { return None };
    Some(format!("{:08X}:{:04X}", u32::from_ne_bytes(v4.ip().octets()), v4.port()))
}
