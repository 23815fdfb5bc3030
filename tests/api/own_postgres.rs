//! A PostgreSQL cluster of a test's (or a benchmark's) own, which it may restart, stop,
//! replicate and promote — for the tests of PostgreSQL operations. Self-contained, so the
//! CDC benchmark includes it too.

use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn test_work_dir(name: &str) -> PathBuf {
    let work = std::env::var("MEDFLOW_TEST_WORK").expect("run through scripts/test");
    let dir = Path::new(&work).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A PostgreSQL cluster of the test's own, which it may restart.
pub(crate) struct OwnPostgres {
    data: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl OwnPostgres {
    pub(crate) fn start() -> Self {
        let bin =
            PathBuf::from(std::env::var("MEDFLOW_TEST_PG_BIN").expect("run through scripts/test"));
        let port = free_port();
        let data = test_work_dir(&format!("pg-own-{port}")).join("data");
        std::fs::create_dir_all(&data).unwrap();
        let cluster = Self { data, port, bin };
        cluster.chown();
        cluster.run(
            "initdb",
            &[
                "-D",
                cluster.data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
        );
        cluster.configure(
            "listen_addresses = '127.0.0.1'\nwal_level = logical\nmax_replication_slots = 8\n\
             max_wal_senders = 8\nfsync = off\nsynchronous_commit = off\n",
        );
        cluster.pg_ctl("start");
        cluster
    }

    /// A streaming replica of this cluster (`pg_basebackup -R`, a hot standby), started on a
    /// port of its own.
    pub(crate) fn start_standby(&self) -> Self {
        let port = free_port();
        let data = test_work_dir(&format!("pg-own-{port}")).join("data");
        let standby = Self {
            data,
            port,
            bin: self.bin.clone(),
        };
        standby.chown();
        let source = format!("host=127.0.0.1 port={} user=postgres", self.port);
        standby.run(
            "pg_basebackup",
            &[
                "-D",
                standby.data.to_str().unwrap(),
                "-d",
                &source,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        );
        // The copied configuration names the primary's port and socket directory.
        standby.configure("");
        standby.pg_ctl("start");
        standby
    }

    /// Appends `settings` and this cluster's port and socket directory to its configuration.
    fn configure(&self, settings: &str) {
        let conf = format!(
            "{settings}port = {}\nunix_socket_directories = '{}'\n",
            self.port,
            self.data.display()
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut file, conf.as_bytes()).unwrap();
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Promotes this standby to a primary, waiting until it accepts writes.
    pub(crate) fn promote(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "promote",
            ],
        );
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn as_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
            .unwrap_or(false)
    }

    /// PostgreSQL refuses to run as root: the cluster belongs to the `postgres` user then.
    fn chown(&self) {
        if Self::as_root() {
            let parent = self.data.parent().unwrap();
            let status = Command::new("chown")
                .args(["-R", "postgres:", parent.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let output = if Self::as_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .output()
        } else {
            Command::new(&program).args(args).output()
        }
        .unwrap();
        assert!(
            output.status.success(),
            "{} {args:?} failed: {}",
            program.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub(crate) fn pg_ctl(&self, action: &str) {
        self.pg_ctl_within(action, 60);
    }

    /// `pg_ctl -m fast -w -t <seconds> <action>`: panics if it does not finish in time.
    pub(crate) fn pg_ctl_within(&self, action: &str, seconds: u32) {
        let log = self.data.parent().unwrap().join("server.log");
        let seconds = seconds.to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "-t",
                &seconds,
                action,
            ],
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let args = ["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"];
        let _ = if Self::as_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_ctl)
                .args(args)
                .output()
        } else {
            Command::new(pg_ctl).args(args).output()
        };
    }
}
