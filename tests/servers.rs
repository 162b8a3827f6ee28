//! Real servers for the tests, started on loopback by the tests themselves and stopped on drop: PostgreSQL
//! 15 (Debian's package), an S3 server (moto's server mode, from PyPI, in the test virtualenv), a STAC API
//! (rustac's server on pgstac, both from PyPI, on that PostgreSQL with PostGIS), a rate-limiting gateway
//! (nginx) and a Slurm cluster.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{free_port, python, python_json, wait_for_port};

/// A PostgreSQL 15 server of its own: `initdb` + `pg_ctl` on a temp dir and a free loopback port, stopped
/// on drop. Run as the `postgres` user when the tests run as root (PostgreSQL refuses root).
pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// PostgreSQL refuses to run as root: its tools then run as the `postgres` user.
fn as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"))
}

impl Postgres {
    pub fn start() -> Postgres {
        assert!(
            Path::new(PG_BIN).join("initdb").exists(),
            "PostgreSQL 15 is not installed (apt-get install postgresql); .ci/run installs it"
        );
        let dir = tempfile::Builder::new().prefix("flowrun-pg").tempdir_in("/tmp").unwrap();
        if as_root() {
            assert!(Command::new("chown").args(["-R", "postgres"]).arg(dir.path()).status().unwrap().success());
        }
        let pg = Postgres { port: free_port(), dir };
        pg.pg("initdb", &["-D", &pg.data(), "-A", "trust", "-U", "postgres", "--no-sync"]);
        pg.start_again();
        pg.createdb("lake");
        pg
    }

    /// Starts the server (again, after [`Postgres::stop`]) on its data directory and port.
    pub fn start_again(&self) {
        let opts =
            format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.path().display());
        let log = format!("{}/log", self.dir.path().display());
        self.pg("pg_ctl", &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"]);
    }

    /// Stops the server now (as a crash would: `-m immediate`).
    pub fn stop(&self) {
        self.pg("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }

    fn data(&self) -> String {
        format!("{}/data", self.dir.path().display())
    }

    fn pg(&self, tool: &str, args: &[&str]) {
        let bin = format!("{PG_BIN}/{tool}");
        let out = if as_root() {
            Command::new("runuser").args(["-u", "postgres", "--", &bin]).args(args).output()
        } else {
            Command::new(&bin).args(args).output()
        }
        .unwrap();
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates database `name` on this server.
    pub fn createdb(&self, name: &str) {
        self.pg("createdb", &["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name]);
    }

    pub fn conninfo(&self) -> String {
        format!("dbname=lake host=127.0.0.1 port={} user=postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.pg("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"])
        }));
    }
}

/// A STAC API: `rustac serve --pgstac` (rustac, PyPI) over a pgstac database (`pypgstac migrate`, PyPI) on a
/// [`Postgres`] of its own with PostGIS (Debian's `postgresql-15-postgis-3`), loaded with the collections
/// and items given (as `pypgstac load` loads them). Stopped on drop.
pub struct StacServer {
    child: Option<Child>,
    pub port: u16,
    pub pg: Postgres,
}

impl StacServer {
    /// `collections` and `items`: the STAC JSON objects, one per element.
    pub fn start(collections: &[serde_json::Value], items: &[serde_json::Value]) -> StacServer {
        assert!(
            Path::new("/usr/share/postgresql/15/extension/postgis.control").exists(),
            "PostGIS is not installed (apt-get install postgresql-15-postgis-3); .ci/run installs it"
        );
        let pg = Postgres::start();
        let dsn = format!("postgresql://postgres@127.0.0.1:{}/lake", pg.port);
        let venv = python().parent().unwrap().to_path_buf();
        let ndjson = |name: &str, values: &[serde_json::Value]| {
            let path = pg.dir.path().join(name);
            let text: String = values.iter().map(|v| format!("{v}\n")).collect();
            std::fs::write(&path, text).unwrap();
            path
        };
        let (cols, its) = (ndjson("collections.ndjson", collections), ndjson("items.ndjson", items));
        let pypgstac = |args: &[&str]| {
            let out = Command::new(venv.join("pypgstac")).args(args).args(["--dsn", &dsn]).output().unwrap();
            assert!(out.status.success(), "pypgstac {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        pypgstac(&["migrate"]);
        python_json(
            "import psycopg, sys\n\
             c = psycopg.connect(sys.argv[1], autocommit=True)\n\
             c.execute('ALTER DATABASE lake SET search_path TO pgstac, public')\n\
             print('{}')",
            &[&dsn],
        );
        pypgstac(&["load", "collections", &cols.display().to_string(), "--method", "insert"]);
        pypgstac(&["load", "items", &its.display().to_string(), "--method", "insert"]);
        let mut server = StacServer { child: None, port: free_port(), pg };
        server.start_again();
        server
    }

    /// (Re)starts the API server on its port (after [`StacServer::stop`]).
    pub fn start_again(&mut self) {
        let dsn = format!("postgresql://postgres@127.0.0.1:{}/lake", self.pg.port);
        let addr = format!("127.0.0.1:{}", self.port);
        let child = Command::new(python().parent().unwrap().join("rustac"))
            .args(["serve", "--pgstac", &dsn, "--addr", &addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rustac serve starts");
        self.child = Some(child);
        wait_for_port(self.port, "rustac serve");
    }

    /// Stops the API server (the database stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs a statement in the API's database (to make the server fail as a broken database makes it fail).
    pub fn sql(&self, statement: &str) {
        let dsn = format!("postgresql://postgres@127.0.0.1:{}/lake", self.pg.port);
        python_json(
            "import psycopg, sys\nc = psycopg.connect(sys.argv[1], autocommit=True)\nc.execute(sys.argv[2])\nprint('{}')",
            &[&dsn, statement],
        );
    }
}

impl Drop for StacServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A rate-limiting gateway in front of a server, as public STAC APIs sit behind one: nginx (Debian's
/// `nginx-light`) on a free loopback port, letting `per_second` requests a second through to `upstream` and
/// answering the others `429 Too Many Requests` with `Retry-After: 1`. Stopped on drop.
pub struct RateLimiter {
    child: Child,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl RateLimiter {
    pub fn start(upstream: &str, per_second: u32) -> RateLimiter {
        RateLimiter::with_locations(upstream, per_second, "")
    }

    /// The gateway with more nginx `location` blocks of the test's own (`{port}` in them is the gateway's).
    pub fn with_locations(upstream: &str, per_second: u32, locations: &str) -> RateLimiter {
        assert!(
            Path::new("/usr/sbin/nginx").exists(),
            "nginx is not installed (apt-get install nginx-light); .ci/run installs it"
        );
        let (dir, port) = (tempfile::tempdir().unwrap(), free_port());
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             limit_req_zone $binary_remote_addr zone=api:1m rate={per_second}r/s;\n\
             server {{\n    listen 127.0.0.1:{port};\n\
             location / {{\n      limit_req zone=api;\n      limit_req_status 429;\n      error_page 429 = @slow_down;\n\
             proxy_pass {upstream};\n      proxy_set_header Host $http_host;\n    }}\n\
             location @slow_down {{\n      add_header Retry-After 1 always;\n      return 429 \"too many requests\\n\";\n    }}\n\
             {}\n}}\n}}\n",
            locations.replace("{port}", &port.to_string())
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new("/usr/sbin/nginx")
            .args(["-p", &d.to_string(), "-e", &format!("{d}/error.log"), "-c", "nginx.conf"])
            .spawn()
            .expect("nginx starts");
        wait_for_port(port, "nginx");
        RateLimiter { child, dir, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The status of every request answered so far, in order (from the access log).
    pub fn statuses(&self) -> Vec<u16> {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        // combined format: ... "POST /search HTTP/1.1" 429 ...
        log.lines().filter_map(|l| l.split('"').nth(2)?.split_whitespace().next()?.parse().ok()).collect()
    }
}

impl Drop for RateLimiter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An S3-compatible server: `python -m moto.server` on a free loopback port, with authentication on (an
/// IAM user and its access key are created first, so a wrong secret is refused as AWS would refuse it).
pub struct S3Server {
    child: Child,
    pub port: u16,
    pub key_id: String,
    pub secret: String,
}

/// boto3 against the server: argv = endpoint, key id, secret, then the command's own arguments.
const S3_CLIENT: &str = r#"
import boto3, json, sys
endpoint, key, secret, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
s3 = boto3.client('s3', endpoint_url=endpoint, region_name='us-east-1', aws_access_key_id=key, aws_secret_access_key=secret)
if cmd == 'iam':
    iam = boto3.client('iam', endpoint_url=endpoint, region_name='us-east-1', aws_access_key_id='setup', aws_secret_access_key='setup')
    iam.create_user(UserName='flowrun')
    policy = {'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': '*', 'Resource': '*'}]}
    iam.put_user_policy(UserName='flowrun', PolicyName='all', PolicyDocument=json.dumps(policy))
    k = iam.create_access_key(UserName='flowrun')['AccessKey']
    print(json.dumps([k['AccessKeyId'], k['SecretAccessKey']]))
elif cmd == 'mb':
    s3.create_bucket(Bucket=args[0]); print('{}')
elif cmd == 'ls':
    out = {}
    for page in s3.get_paginator('list_objects_v2').paginate(Bucket=args[0], Prefix=args[1]):
        for o in page.get('Contents', []):
            out[o['Key']] = o['Size']
    print(json.dumps(out))
elif cmd == 'put':
    s3.put_object(Bucket=args[0], Key=args[1], Body=open(args[2], 'rb').read()); print('{}')
elif cmd == 'upload':
    import os
    bucket, prefix, root = args
    n = 0
    for d, _, files in os.walk(root, followlinks=True):
        for f in files:
            path = os.path.join(d, f)
            s3.upload_file(path, bucket, prefix + '/' + os.path.relpath(path, root)); n += 1
    print(n)
"#;

impl S3Server {
    pub fn start() -> S3Server {
        let port = free_port();
        let child = Command::new(python())
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            // the three setup calls (user, policy, key) go without authentication, everything after needs it
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto.server starts");
        wait_for_port(port, "moto.server");
        let mut s = S3Server { child, port, key_id: "setup".into(), secret: "setup".into() };
        let key = s.client("iam", &[]);
        s.key_id = key[0].as_str().unwrap().to_string();
        s.secret = key[1].as_str().unwrap().to_string();
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The standard AWS variables a flowrun process reaches this server with.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    fn client(&self, cmd: &str, args: &[&str]) -> serde_json::Value {
        let endpoint = self.endpoint();
        let mut argv = vec![endpoint.as_str(), self.key_id.as_str(), self.secret.as_str(), cmd];
        argv.extend_from_slice(args);
        python_json(S3_CLIENT, &argv)
    }

    pub fn create_bucket(&self, name: &str) {
        self.client("mb", &[name]);
    }

    /// Key -> size of the objects under `prefix`.
    pub fn list(&self, bucket: &str, prefix: &str) -> std::collections::BTreeMap<String, u64> {
        serde_json::from_value(self.client("ls", &[bucket, prefix])).unwrap()
    }

    /// Uploads every file under `dir` (following symlinks) to `prefix/<path under dir>`; returns how many.
    pub fn upload(&self, bucket: &str, prefix: &str, dir: &Path) -> u64 {
        self.client("upload", &[bucket, prefix, &dir.display().to_string()]).as_u64().unwrap()
    }

    /// Replaces the object at `key` with the bytes of `file`.
    pub fn put(&self, bucket: &str, key: &str, file: &Path) {
        self.client("put", &[bucket, key, &file.display().to_string()]);
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-node Slurm cluster on loopback (Debian's `slurm-wlm`): munged, slurmctld and slurmd in the
/// foreground on a temp dir and free ports, with a `slurm.conf` of its own (`SLURM_CONF`); stopped on drop.
pub struct Slurm {
    dir: tempfile::TempDir,
    daemons: Vec<Child>,
}

impl Slurm {
    pub fn start() -> Slurm {
        assert!(
            Path::new("/usr/sbin/slurmctld").exists() && Path::new("/usr/sbin/munged").exists(),
            "Slurm is not installed (apt-get install slurm-wlm); .ci/run installs it"
        );
        let dir = tempfile::Builder::new().prefix("flowrun-slurm").tempdir_in("/tmp").unwrap();
        let d = dir.path().display().to_string();
        for sub in ["state", "spool", "munge"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let key: Vec<u8> = (0..1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        std::fs::write(dir.path().join("munge/key"), key).unwrap();
        std::fs::set_permissions(dir.path().join("munge/key"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let host = String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout).unwrap();
        let (user, host) = (whoami(), host.trim().to_string());
        let conf = format!(
            "ClusterName=flowrun\nSlurmctldHost={host}(127.0.0.1)\nSlurmctldPort={}\nSlurmdPort={}\n\
             SlurmUser={user}\nSlurmdUser={user}\nAuthType=auth/munge\nAuthInfo=socket={d}/munge/sock\n\
             CredType=cred/munge\nStateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
             SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\nSlurmctldLogFile={d}/slurmctld.log\n\
             SlurmdLogFile={d}/slurmd.log\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
             JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n\
             SchedulerType=sched/backfill\nSelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\n\
             MpiDefault=none\nReturnToService=2\nNodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN\n\
             PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
            free_port(),
            free_port()
        );
        std::fs::write(dir.path().join("slurm.conf"), conf).unwrap();
        let mut s = Slurm { dir, daemons: Vec::new() };
        let munge = [
            "-F".to_string(),
            "-f".to_string(),
            format!("--socket={d}/munge/sock"),
            format!("--key-file={d}/munge/key"),
            format!("--pid-file={d}/munge/pid"),
            format!("--log-file={d}/munge/log"),
            format!("--seed-file={d}/munge/seed"),
        ];
        s.daemon("/usr/sbin/munged", &munge.iter().map(String::as_str).collect::<Vec<_>>());
        let started = Instant::now();
        while !s.dir.path().join("munge/sock").exists() {
            assert!(started.elapsed() < Duration::from_secs(20), "munged did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        s.daemon("/usr/sbin/slurmctld", &["-D", "-i"]);
        s.daemon("/usr/sbin/slurmd", &["-D"]);
        // ready when the node is idle
        let started = Instant::now();
        loop {
            let out = s.cmd("sinfo").args(["-h", "-o", "%T"]).output().unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == "idle" {
                break;
            }
            let log = std::fs::read_to_string(s.dir.path().join("slurmctld.log")).unwrap_or_default();
            assert!(started.elapsed() < Duration::from_secs(60), "Slurm did not become ready:\n{log}");
            std::thread::sleep(Duration::from_millis(200));
        }
        s
    }

    fn daemon(&mut self, bin: &str, args: &[&str]) {
        let child = Command::new(bin)
            .args(args)
            .env("SLURM_CONF", self.dir.path().join("slurm.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{bin} starts: {e}"));
        self.daemons.push(child);
    }

    /// A Slurm client command (`sbatch`, `squeue`, ...) for this cluster.
    pub fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.env("SLURM_CONF", self.dir.path().join("slurm.conf"));
        c
    }

    /// Waits until job `id` (all its array tasks) left the queue; returns `scontrol show job`'s text.
    pub fn wait(&self, id: &str, timeout: Duration) -> String {
        let started = Instant::now();
        loop {
            let out = self.cmd("squeue").args(["-h", "-j", id]).output().unwrap();
            if out.status.success() && out.stdout.is_empty() {
                break;
            }
            assert!(started.elapsed() < timeout, "Slurm job {id} did not finish in {timeout:?}");
            std::thread::sleep(Duration::from_millis(300));
        }
        String::from_utf8_lossy(&self.cmd("scontrol").args(["show", "job", id]).output().unwrap().stdout).into_owned()
    }
}

fn whoami() -> String {
    String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap().trim().to_string()
}

impl Drop for Slurm {
    fn drop(&mut self) {
        for d in self.daemons.iter_mut().rev() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}
