"""Starts the test Waldur built by tests/real-waldur/setup; run by tests/real-waldur/serve.

    serve STATE_DIR [--port PORT] [--ignore-stdin]

Copies the migrated PostgreSQL data directory into STATE_DIR, starts PostgreSQL (as the
postgres OS user when run as root) and `waldur runserver --noreload` on free loopback
ports, waits until the API answers, then prints one line on stdout:

    READY http://127.0.0.1:PORT/api/ db_port=DBPORT

It also writes STATE_DIR/env (the WALDUR_TEST_* variables `seed` needs). Both servers
are stopped on SIGTERM or SIGINT, when stdin reaches end of file (unless
--ignore-stdin), or when either server dies; the servers also get SIGKILL if this
process is killed outright. Logs: STATE_DIR/postgres.log, STATE_DIR/waldur.log.
"""

import argparse
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

PG_START_TIMEOUT = 60
WALDUR_START_TIMEOUT = 300


def log(message):
    print(f"real-waldur serve: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent():
    # PR_SET_PDEATHSIG = 1: the kernel sends SIGKILL when serve dies. Runs after the
    # uid change (which would clear it).
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


class Serve:
    def __init__(self, args):
        self.cache = args.cache
        self.venv = os.path.join(self.cache, "venv")
        self.state = os.path.abspath(args.state_dir)
        self.port = args.port or free_port()
        self.db_port = free_port()
        self.bindir = args.pg_bindir
        self.children = []
        self.stop = threading.Event()
        self.reason = None
        root = os.geteuid() == 0
        self.pg_user = pwd.getpwnam("postgres") if root else None

    def env(self):
        env = dict(os.environ)
        env.update(
            WALDUR_TEST_DB_PORT=str(self.db_port),
            WALDUR_TEST_DB_HOST="127.0.0.1",
            WALDUR_TEST_MEDIA_ROOT=os.path.join(self.state, "media"),
        )
        return env

    def spawn(self, argv, logname, **kwargs):
        out = open(os.path.join(self.state, logname), "ab")
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
            process_group=0,
            **kwargs,
        )
        out.close()
        self.children.append((logname, child))
        return child

    def check_children(self):
        for name, child in self.children:
            code = child.poll()
            if code is not None:
                raise RuntimeError(f"{name.split('.')[0]} exited with {code}:\n{tail(self.state, name)}")

    def start(self):
        t0 = time.monotonic()
        os.makedirs(self.state, exist_ok=True)
        data = os.path.join(self.state, "pgdata")
        sockets = os.path.join(self.state, "pgsocket")
        if os.path.exists(data):
            shutil.rmtree(data)
        os.makedirs(sockets, exist_ok=True)
        # cp -a keeps the owner (postgres) and the 0700 mode PostgreSQL insists on.
        subprocess.run(["cp", "-a", "--reflink=auto", os.path.join(self.cache, "pgdata"), data], check=True)
        pg_kwargs = {}
        if self.pg_user:
            os.chmod(self.state, 0o711)  # postgres must reach its folders
            reach = subprocess.run(["test", "-x", self.state], user=self.pg_user.pw_uid, check=False)
            if reach.returncode != 0:
                raise RuntimeError(f"the postgres user cannot reach {self.state}: choose a STATE_DIR under world-searchable folders")
            os.chown(sockets, self.pg_user.pw_uid, self.pg_user.pw_gid)
            pg_log = os.path.join(self.state, "postgres.log")
            open(pg_log, "ab").close()
            os.chown(pg_log, self.pg_user.pw_uid, self.pg_user.pw_gid)
            pg_kwargs = dict(user=self.pg_user.pw_uid, group=self.pg_user.pw_gid, extra_groups=[])
        t_copy = time.monotonic()
        self.spawn(
            [
                os.path.join(self.bindir, "postgres"),
                "-D", data,
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"port={self.db_port}",
                "-c", f"unix_socket_directories={sockets}",
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
            ],
            "postgres.log",
            **pg_kwargs,
        )
        self.wait_for_postgres()
        t_pg = time.monotonic()
        self.spawn(
            [os.path.join(self.venv, "bin", "waldur"), "runserver", "--noreload", "--skip-checks", f"127.0.0.1:{self.port}"],
            "waldur.log",
            env=self.env(),
        )
        url = f"http://127.0.0.1:{self.port}/api/"
        self.wait_for_api(url)
        t_api = time.monotonic()
        with open(os.path.join(self.state, "env"), "w") as f:
            for key in ("WALDUR_TEST_DB_PORT", "WALDUR_TEST_DB_HOST", "WALDUR_TEST_MEDIA_ROOT"):
                f.write(f"{key}={self.env()[key]}\n")
            f.write(f"WALDUR_TEST_API_URL={url}\n")
        log(
            f"copy {t_copy - t0:.1f} s, postgres {t_pg - t_copy:.1f} s, "
            f"waldur {t_api - t_pg:.1f} s, ready in {t_api - t0:.1f} s"
        )
        print(f"READY {url} db_port={self.db_port}", flush=True)

    def wait_for_postgres(self):
        deadline = time.monotonic() + PG_START_TIMEOUT
        while True:
            self.check_children()
            try:
                with socket.create_connection(("127.0.0.1", self.db_port), timeout=1):
                    pass
                ready = subprocess.run(
                    [os.path.join(self.bindir, "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.db_port)],
                    check=False,
                )
                if ready.returncode == 0:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start within {PG_START_TIMEOUT} s")
            time.sleep(0.1)

    def wait_for_api(self, url):
        deadline = time.monotonic() + WALDUR_START_TIMEOUT
        while True:
            self.check_children()
            try:
                urllib.request.urlopen(url, timeout=5).close()
                return
            except urllib.error.HTTPError:
                return  # an answer, if not a 200: the API is up
            except (urllib.error.URLError, OSError):
                pass
            if self.stop.is_set():
                raise RuntimeError(f"stopped ({self.reason}) before Waldur answered")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Waldur did not answer within {WALDUR_START_TIMEOUT} s:\n{tail(self.state, 'waldur.log')}")
            time.sleep(0.2)

    def request_stop(self, reason):
        if not self.stop.is_set():
            self.reason = reason
            self.stop.set()

    def run_until_stopped(self):
        while not self.stop.wait(0.2):
            try:
                self.check_children()
            except RuntimeError as e:
                self.request_stop(str(e))
        log(f"stopping: {self.reason}")

    def shutdown(self):
        # Waldur first (it holds database connections), then PostgreSQL's fast shutdown.
        for name, child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGINT if name == "postgres.log" else signal.SIGTERM)
                try:
                    child.wait(15)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        log("stopped")


def tail(state, name, lines=40):
    try:
        with open(os.path.join(state, name), errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def main():
    parser = argparse.ArgumentParser(prog="tests/real-waldur/serve")
    parser.add_argument("state_dir")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ignore-stdin", action="store_true", help="run until SIGTERM even when stdin closes")
    parser.add_argument("--cache", required=True, help=argparse.SUPPRESS)
    parser.add_argument("--pg-bindir", required=True, help=argparse.SUPPRESS)
    args = parser.parse_args()

    serve = Serve(args)
    signal.signal(signal.SIGTERM, lambda *_: serve.request_stop("SIGTERM"))
    signal.signal(signal.SIGINT, lambda *_: serve.request_stop("SIGINT"))
    signal.signal(signal.SIGHUP, lambda *_: serve.request_stop("SIGHUP"))
    if not args.ignore_stdin:

        def watch_stdin():
            while sys.stdin.buffer.read1(65536):
                pass
            serve.request_stop("stdin closed")

        threading.Thread(target=watch_stdin, daemon=True).start()
    code = 0
    try:
        serve.start()
        serve.run_until_stopped()
    except Exception as e:  # noqa: BLE001 - any failure to start ends in a clean stop
        log(f"failed: {e}")
        code = 1
    finally:
        serve.shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
