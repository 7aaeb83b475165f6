//! TLS termination: the certificates of `--certs DIR`, served on the HTTPS
//! frontend and changed through HAProxy's runtime API, never a reload.
//!
//! DIR holds one PEM file per certificate, `<name>.pem`: the certificate,
//! its chain and its unencrypted private key in one file, as HAProxy wants
//! them (a volume or Docker secrets). `default.pem`, when there, is served to
//! clients that send no SNI or a name no certificate has; otherwise a
//! self-signed certificate haproxy-sync makes (once, kept beside the others).
//!
//! haproxy-sync keeps what HAProxy serves in its own directory, `certs/`
//! beside the configuration file: a copy of each certificate and the
//! crt-list the HTTPS frontend reads (`certs/crt-list`, the default first;
//! SNI picks among the others). Each file of DIR is checked ([`check`]: PEM,
//! a private key that matches the certificate) before HAProxy sees it; a bad
//! one is refused with an error naming it and the certificate in force stays.
//! A new, renewed or removed certificate reaches HAProxy through the runtime
//! API (`new`/`set`/`commit ssl cert`, `add`/`del ssl crt-list`), and the
//! copy on disk follows right after: the files are what HAProxy runs, so a
//! reload or a restart keeps them. When HAProxy does not run (or its
//! configuration does not name the crt-list yet) the files are written for
//! its start; what it serves is learnt again from HAProxy itself
//! (`show ssl crt-list`, `show ssl cert`) whenever it may have changed.
//!
//! [`watch`] runs a round when inotify reports a change in DIR (once DIR was
//! quiet for a moment), when [`follow_kv`] reports one in Consul KV
//! (`--certs-kv PREFIX`: keys `PREFIX/<name>.pem`, the same bundles; a file
//! of DIR wins over a key of the same name), and every [`POLL`] besides.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::haproxy::{Haproxy, ask, ask_with_payload};
use crate::metrics::Metrics;

/// The certificate served when no other matches.
pub const DEFAULT_NAME: &str = "default";

/// How often the certificate directory is looked at besides the changes
/// inotify reports (a file is read again only when its size or
/// modification time changed): a fallback, for file systems that report
/// nothing.
pub const POLL: Duration = Duration::from_secs(1);

/// After a change is reported, how long the directory must be quiet (a
/// writer may write a file in several steps: the certificate, then the
/// key), and the longest wait from the first change.
const SETTLE: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(100));

/// How long one runtime API command may take.
const LIMIT: Duration = Duration::from_secs(5);

/// Source files larger than this are not certificates.
const MAX_FILE: u64 = 1 << 20;

/// Where certificates come from and go.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    /// `--certs DIR`: the operator's certificates.
    pub source: PathBuf,
    /// haproxy-sync's copies and crt-list (absolute: HAProxy's runtime API
    /// names certificates by the path the crt-list gives).
    pub state: PathBuf,
    pub runtime_socket: PathBuf,
    /// `--certs-kv PREFIX`: certificates also from Consul's KV store, each
    /// key `PREFIX/<name>.pem` (a file of DIR with the same name wins).
    pub kv_prefix: Option<String>,
}

impl TlsOptions {
    /// `certs/` beside the configuration file `config`, made absolute.
    pub fn new(source: PathBuf, config: &Path, runtime_socket: PathBuf) -> std::io::Result<Self> {
        let dir = config.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let state = std::path::absolute(dir)?.join("certs");
        Ok(Self { source, state, runtime_socket, kv_prefix: None })
    }

    /// The crt-list the HTTPS frontend reads.
    pub fn crt_list(&self) -> PathBuf {
        self.state.join("crt-list")
    }

    /// HAProxy's copy of certificate `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.state.join(format!("{name}.pem"))
    }

    /// The self-signed default, kept across restarts (not in the crt-list).
    fn generated(&self) -> PathBuf {
        self.state.join(".self-signed.pem")
    }
}

/// What a valid certificate file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// SHA-1 of the leaf certificate, upper-case hex, as `show ssl cert` prints it.
    pub fingerprint: String,
    /// DNS names (subject alternative names, else the common name).
    pub names: Vec<String>,
    /// Unix time the leaf certificate expires.
    pub not_after: i64,
}

/// Checks a PEM file as HAProxy will load it: certificates (the leaf
/// first) and one unencrypted private key that matches the leaf. An expired
/// certificate is accepted (the caller warns).
pub fn check(pem: &[u8]) -> Result<CertInfo, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM file: {e}"))?;
    let Some(leaf) = certs.first() else { return Err("holds no certificate".into()) };
    let keys = PrivateKeyDer::pem_slice_iter(pem).count();
    if keys > 1 {
        return Err("holds more than one private key".into());
    }
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            "holds no (unencrypted) private key; HAProxy wants it in the same file as the certificate".to_owned()
        }
        e => format!("private key: {e}"),
    })?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(certs.clone(), key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            "the private key does not match the certificate".to_owned()
        }
        e => format!("the private key cannot be used: {e}"),
    })?;
    let mut names: Vec<String> = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(parsed.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_owned));
    }
    Ok(CertInfo { fingerprint: fingerprint(leaf), names, not_after: parsed.validity().not_after.timestamp() })
}

/// SHA-1 of `der`, upper-case hex.
fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// The leaf fingerprint of a PEM file, if it has a certificate.
fn pem_fingerprint(pem: &[u8]) -> Option<String> {
    CertificateDer::pem_slice_iter(pem).next().and_then(Result::ok).map(|c| fingerprint(&c))
}

/// A self-signed certificate and its key, PEM, for names `names`.
pub fn self_signed(names: &[&str]) -> Result<String, String> {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(names).map_err(|e| format!("making a self-signed certificate: {e}"))?;
    Ok(format!("{}{}", cert.pem(), key_pair.serialize_pem()))
}

/// The certificate's name for a file of DIR: `<name>.pem`, name made of
/// `[A-Za-z0-9._-]` (it becomes a path in the crt-list) and not hidden.
pub fn cert_name(file: &str) -> Option<&str> {
    let name = file.strip_suffix(".pem")?;
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    ok.then_some(name)
}

/// The PEM text sent as a runtime API payload: an empty line ends a
/// payload, so there is none inside; no carriage returns.
pub fn payload(pem: &[u8]) -> String {
    String::from_utf8_lossy(pem)
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a round changes in HAProxy, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Add(String),
    Update(String),
    Remove(String),
}

/// The changes from what HAProxy serves (`in_force`) to what is wanted.
/// The default certificate is never removed (HAProxy cannot delete it).
pub fn changes(in_force: &BTreeMap<String, Vec<u8>>, wanted: &BTreeMap<String, Vec<u8>>) -> Vec<Change> {
    let mut out = Vec::new();
    for (name, pem) in wanted {
        match in_force.get(name) {
            None => out.push(Change::Add(name.clone())),
            Some(running) if running != pem => out.push(Change::Update(name.clone())),
            Some(_) => {}
        }
    }
    for name in in_force.keys() {
        if !wanted.contains_key(name) && name != DEFAULT_NAME {
            out.push(Change::Remove(name.clone()));
        }
    }
    out
}

/// The crt-list's text: the default first, then the others by name.
pub fn crt_list_text(opts: &TlsOptions, names: &BTreeSet<&str>) -> String {
    let mut text = format!("{}\n", opts.path(DEFAULT_NAME).display());
    for name in names.iter().filter(|n| **n != DEFAULT_NAME) {
        text.push_str(&format!("{}\n", opts.path(name).display()));
    }
    text
}

/// Certificates read from Consul's KV store, by name: (key, content);
/// `None` until Consul first answered.
pub type KvCerts = Arc<Mutex<Option<BTreeMap<String, (String, Vec<u8>)>>>>;

/// The certificates of DIR and HAProxy's copies, kept equal.
pub struct Tls {
    opts: TlsOptions,
    haproxy: Haproxy,
    metrics: Metrics,
    /// What HAProxy serves, by name (the file's content); `None` when not
    /// known (start, HAProxy not answering or reloaded meanwhile).
    in_force: Option<BTreeMap<String, Vec<u8>>>,
    /// Files of DIR refused, with the content refused: told once.
    refused: BTreeMap<String, Vec<u8>>,
    /// Files of DIR skipped for their name: told once.
    skipped: BTreeSet<String>,
    /// Files of DIR that could not be read, with the error: told once.
    unreadable: BTreeMap<String, String>,
    /// Files of DIR as last read: their [`Stamp`] and content; forgotten
    /// when inotify reports a change and every [`REREAD`] rounds (a file
    /// rewritten in place within one tick of the clock keeps its stamp).
    seen: BTreeMap<String, (Stamp, Vec<u8>)>,
    rounds: u32,
    /// Certificates from Consul's KV store, by name: (key, content), as
    /// [`follow_kv`] last read them.
    kv: KvCerts,
    /// Where each certificate of the last read came from, for messages.
    origin: BTreeMap<String, String>,
}

/// Every this many rounds, every file of DIR is read again.
const REREAD: u32 = 20;

/// What tells a file of DIR changed without reading it: the file (device,
/// inode: a file renamed into place or a swapped `..data` symlink is
/// another one), its size and its modification time.
type Stamp = (u64, u64, u64, Option<std::time::SystemTime>);

/// What one certificate change did, for logs and figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// HAProxy serves the change and the files say it.
    Applied(Change),
    /// HAProxy did not run (or did not read the crt-list): files written for its start.
    Written,
}

impl Tls {
    pub fn new(opts: TlsOptions, haproxy: Haproxy, metrics: Metrics) -> Self {
        Self {
            opts,
            haproxy,
            metrics,
            in_force: None,
            refused: BTreeMap::new(),
            skipped: BTreeSet::new(),
            unreadable: BTreeMap::new(),
            seen: BTreeMap::new(),
            rounds: 0,
            kv: Arc::default(),
            origin: BTreeMap::new(),
        }
    }

    /// Where certificate `name` came from: its file, or its Consul KV key.
    fn origin(&self, name: &str) -> String {
        self.origin
            .get(name)
            .cloned()
            .unwrap_or_else(|| self.opts.source.join(format!("{name}.pem")).display().to_string())
    }

    pub fn options(&self) -> &TlsOptions {
        &self.opts
    }

    /// One round: reads DIR, checks what changed, and applies it.
    pub async fn sync(&mut self) -> anyhow::Result<Vec<Outcome>> {
        std::fs::create_dir_all(&self.opts.state)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", self.opts.state.display()))?;
        let (source, complete) = self.read_source();
        if self.in_force.is_none() {
            self.in_force = self.learn().await;
        }
        let wanted = self.wanted(source, complete)?;
        let Some(in_force) = self.in_force.clone() else {
            // HAProxy reads the files when it starts (or reloads onto the
            // configuration that names them).
            return match self.write_all(&wanted)? {
                true => Ok(vec![Outcome::Written]),
                false => Ok(Vec::new()),
            };
        };
        let todo = changes(&in_force, &wanted);
        if todo.is_empty() {
            return Ok(Vec::new());
        }
        let reloads = self.haproxy.worker_reloads().await.ok();
        let mut done = Vec::new();
        for change in todo {
            match self.apply(&change, &wanted).await {
                Ok(()) => {
                    self.metrics.certificates_applied.inc();
                    done.push(Outcome::Applied(change));
                }
                Err(Failure::Refused(name, reason)) => {
                    self.metrics.certificates_refused.inc();
                    let file = self.origin(&name);
                    error!(%file, %reason, "HAProxy refused the certificate; the one in force stays");
                    if let Some(pem) = wanted.get(&name) {
                        self.refused.insert(name, pem.clone());
                    }
                }
                Err(Failure::Io(e)) => {
                    self.in_force = None;
                    return Err(e);
                }
            }
        }
        // A reload meanwhile may have started a worker on the files as they
        // were before: learn what it serves.
        if reloads.is_none() || self.haproxy.worker_reloads().await.ok() != reloads {
            debug!("HAProxy reloaded during a certificate change; checking what it serves");
            self.in_force = None;
        }
        Ok(done)
    }

    /// DIR's `*.pem` files and Consul KV's certificates, by name (a file
    /// wins over a key of the same name); whether that is all of them
    /// (false while Consul KV has not answered yet).
    fn read_source(&mut self) -> (BTreeMap<String, Vec<u8>>, bool) {
        let mut out = BTreeMap::new();
        self.rounds = self.rounds.wrapping_add(1);
        if self.rounds % REREAD == 0 {
            self.seen.clear();
        }
        let entries = match std::fs::read_dir(&self.opts.source) {
            Ok(entries) => {
                self.unreadable.remove(&self.opts.source.display().to_string());
                Some(entries)
            }
            Err(e) => {
                let key = self.opts.source.display().to_string();
                if self.unreadable.insert(key.clone(), e.to_string()).as_deref() != Some(&e.to_string()) {
                    error!(dir = %key, error = %e, "cannot read the certificate directory; the certificates in force stay");
                }
                None
            }
        };
        let dir_read = entries.is_some();
        let mut present = BTreeSet::new();
        for entry in entries.into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.starts_with('.') || !file.ends_with(".pem") {
                continue;
            }
            present.insert(file.clone());
            let Some(name) = cert_name(&file) else {
                if self.skipped.insert(file.clone()) {
                    warn!(file = %entry.path().display(), "certificate file skipped: name it <name>.pem with [A-Za-z0-9._-]");
                }
                continue;
            };
            let path = entry.path();
            let read = std::fs::metadata(&path).and_then(|m| {
                use std::os::unix::fs::MetadataExt;
                let stamp: Stamp = (m.dev(), m.ino(), m.len(), m.modified().ok());
                match self.seen.get(&file) {
                    _ if !m.is_file() || m.len() > MAX_FILE => {
                        Err(std::io::Error::other("not a file of at most 1 MiB"))
                    }
                    Some((seen, bytes)) if *seen == stamp => Ok(bytes.clone()),
                    _ => {
                        let bytes = std::fs::read(&path)?;
                        self.seen.insert(file.clone(), (stamp, bytes.clone()));
                        Ok(bytes)
                    }
                }
            });
            match read {
                Ok(bytes) => {
                    self.unreadable.remove(&file);
                    out.insert(name.to_owned(), bytes);
                }
                Err(e) => {
                    if self.unreadable.insert(file.clone(), e.to_string()).as_deref() != Some(&e.to_string()) {
                        error!(file = %path.display(), error = %e, "cannot read the certificate file");
                    }
                }
            }
        }
        self.seen.retain(|file, _| present.contains(file));
        self.origin.clear();
        let kv = match self.opts.kv_prefix {
            None => Some(BTreeMap::new()),
            Some(_) => self.kv.lock().ok().and_then(|kv| kv.clone()),
        };
        let complete = dir_read && kv.is_some();
        for (name, (key, pem)) in kv.unwrap_or_default() {
            if let std::collections::btree_map::Entry::Vacant(slot) = out.entry(name) {
                self.origin.insert(slot.key().clone(), format!("Consul KV {key}"));
                slot.insert(pem);
            }
        }
        (out, complete)
    }

    /// What HAProxy should serve: each certificate of `source` that passes
    /// [`check`] (a refused one leaves the certificate in force under its
    /// name), and the generated default when there is none. When `source`
    /// is not `complete` (DIR unreadable, Consul KV not read yet: at start,
    /// or Consul away since), what HAProxy serves stays besides.
    fn wanted(
        &mut self,
        source: BTreeMap<String, Vec<u8>>,
        complete: bool,
    ) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        let empty = BTreeMap::new();
        let in_force = self.in_force.as_ref().unwrap_or(&empty);
        let on_disk = |name: &str| std::fs::read(self.opts.path(name)).ok();
        self.refused.retain(|name, pem| source.get(name) == Some(pem));
        let mut wanted = BTreeMap::new();
        for (name, pem) in source {
            let kept = || in_force.get(&name).cloned().or_else(|| on_disk(&name).filter(|d| check(d).is_ok()));
            if in_force.get(&name) == Some(&pem) {
                wanted.insert(name, pem);
                continue;
            }
            if self.refused.contains_key(&name) {
                if let Some(old) = kept() {
                    wanted.insert(name, old);
                }
                continue;
            }
            let file = self.origin(&name);
            match check(&pem) {
                Ok(info) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                    if info.not_after < now {
                        warn!(%file, "the certificate has expired; serving it anyway");
                    }
                    if on_disk(&name).as_ref() != Some(&pem) || !in_force.contains_key(&name) {
                        info!(%file, names = ?info.names, fingerprint = %info.fingerprint, "certificate accepted");
                    }
                    wanted.insert(name, pem);
                }
                Err(reason) => {
                    self.metrics.certificates_refused.inc();
                    let old = kept();
                    error!(
                        %file,
                        %reason,
                        "certificate refused; {}",
                        if old.is_some() { "the one in force stays" } else { "it is not served" }
                    );
                    if let Some(old) = old {
                        wanted.insert(name.clone(), old);
                    }
                    self.refused.insert(name, pem);
                }
            }
        }
        if !complete {
            let copies = std::fs::read_dir(&self.opts.state).into_iter().flatten().flatten();
            let copies = copies.filter_map(|e| cert_name(&e.file_name().to_string_lossy()).map(str::to_owned));
            let served: BTreeSet<String> = in_force.keys().cloned().chain(copies).collect();
            for name in served {
                if wanted.contains_key(&name) {
                    continue;
                }
                let pem = in_force.get(&name).filter(|p| !p.is_empty()).cloned();
                if let Some(pem) = pem.or_else(|| on_disk(&name).filter(|d| check(d).is_ok())) {
                    wanted.insert(name, pem);
                }
            }
        }
        if !wanted.contains_key(DEFAULT_NAME) {
            wanted.insert(DEFAULT_NAME.to_owned(), self.generated_default()?);
        }
        Ok(wanted)
    }

    /// The self-signed default: the one kept from before, else a new one.
    fn generated_default(&self) -> anyhow::Result<Vec<u8>> {
        let path = self.opts.generated();
        if let Some(pem) = std::fs::read(&path).ok().filter(|pem| check(pem).is_ok()) {
            return Ok(pem);
        }
        let pem = self_signed(&["localhost"]).map_err(anyhow::Error::msg)?;
        write_atomic(&path, pem.as_bytes())?;
        info!(file = %path.display(), "made a self-signed default certificate (put default.pem in the certificate directory to serve your own)");
        Ok(pem.into_bytes())
    }

    /// What HAProxy serves from our crt-list, asked of HAProxy; `None` when
    /// it does not answer or does not read the crt-list. A certificate whose
    /// fingerprint differs from our copy's is known with no content, so it
    /// is set again.
    async fn learn(&self) -> Option<BTreeMap<String, Vec<u8>>> {
        let list = self.opts.crt_list();
        let answer =
            ask(&self.opts.runtime_socket, &format!("show ssl crt-list {}", list.display()), LIMIT).await.ok()?;
        // "# <crt-list>" then one line per entry: "<path> [options] [filters]".
        if !answer.lines().any(|l| l.trim() == format!("# {}", list.display())) {
            return None;
        }
        let mut out = BTreeMap::new();
        for line in answer.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let Some(path) = line.split_whitespace().next() else { continue };
            let path = Path::new(path);
            let Some(name) = path
                .file_name()
                .and_then(|f| cert_name(&f.to_string_lossy()).map(str::to_owned))
                .filter(|_| path.parent() == Some(self.opts.state.as_path()))
            else {
                continue;
            };
            let shown =
                ask(&self.opts.runtime_socket, &format!("show ssl cert {}", path.display()), LIMIT).await.ok()?;
            let served =
                shown.lines().find_map(|l| l.strip_prefix("SHA1 FingerPrint:")).map(|f| f.trim().to_ascii_uppercase());
            let disk = std::fs::read(path).ok();
            let same = served.is_some() && disk.as_deref().and_then(pem_fingerprint) == served;
            out.insert(name, if same { disk.unwrap_or_default() } else { Vec::new() });
        }
        debug!(certificates = out.len(), "learnt what HAProxy serves");
        Some(out)
    }

    /// Writes every wanted certificate and the crt-list, and removes the
    /// copies no longer wanted; whether anything changed.
    fn write_all(&self, wanted: &BTreeMap<String, Vec<u8>>) -> anyhow::Result<bool> {
        let mut changed = false;
        for (name, pem) in wanted {
            let path = self.opts.path(name);
            if std::fs::read(&path).ok().as_ref() != Some(pem) {
                write_atomic(&path, pem)?;
                changed = true;
            }
        }
        let names: BTreeSet<&str> = wanted.keys().map(String::as_str).collect();
        let list = crt_list_text(&self.opts, &names);
        if std::fs::read_to_string(self.opts.crt_list()).ok().as_deref() != Some(list.as_str()) {
            write_atomic(&self.opts.crt_list(), list.as_bytes())?;
            changed = true;
        }
        for entry in std::fs::read_dir(&self.opts.state)?.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if cert_name(&file).is_some_and(|n| !wanted.contains_key(n)) {
                std::fs::remove_file(entry.path())?;
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Applies one change through the runtime API, then to the files.
    async fn apply(&mut self, change: &Change, wanted: &BTreeMap<String, Vec<u8>>) -> Result<(), Failure> {
        let list = self.opts.crt_list();
        match change {
            Change::Add(name) | Change::Update(name) => {
                let pem = wanted.get(name).cloned().unwrap_or_default();
                let path = self.opts.path(name);
                let p = path.display().to_string();
                let new = matches!(change, Change::Add(_));
                if new {
                    // Already there if an earlier attempt stopped half-way.
                    let answer = self.ask(&format!("new ssl cert {p}"), None).await?;
                    if !answer.contains("New empty certificate store") && !answer.contains("already exists") {
                        return Err(Failure::Refused(name.clone(), answer.trim().to_owned()));
                    }
                }
                let answer = self.ask(&format!("set ssl cert {p}"), Some(&payload(&pem))).await?;
                if !answer.contains("Transaction created") && !answer.contains("Transaction updated") {
                    self.abort(&p, new).await;
                    return Err(Failure::Refused(name.clone(), answer.trim().to_owned()));
                }
                let answer = self.ask(&format!("commit ssl cert {p}"), None).await?;
                if !answer.contains("Success!") {
                    self.abort(&p, new).await;
                    return Err(Failure::Refused(name.clone(), answer.trim().to_owned()));
                }
                if new {
                    let answer = self.ask(&format!("add ssl crt-list {} {p}", list.display()), None).await?;
                    if !answer.contains("Success!") {
                        let _ = self.ask(&format!("del ssl cert {p}"), None).await;
                        return Err(Failure::Refused(name.clone(), answer.trim().to_owned()));
                    }
                }
                // HAProxy serves it: the files follow.
                let in_force = self.in_force.get_or_insert_default();
                in_force.insert(name.clone(), pem.clone());
                write_atomic(&path, &pem).map_err(Failure::Io)?;
                if new {
                    let names: BTreeSet<&str> = in_force.keys().map(String::as_str).collect();
                    write_atomic(&list, crt_list_text(&self.opts, &names).as_bytes()).map_err(Failure::Io)?;
                }
                info!(certificate = %p, ?change, "certificate applied through the runtime API");
            }
            Change::Remove(name) => {
                let p = self.opts.path(name).display().to_string();
                let answer = self.ask(&format!("del ssl crt-list {} {p}", list.display()), None).await?;
                // Gone already if an earlier attempt stopped half-way.
                if !answer.contains("deleted in crtlist") && !answer.contains("can't be found") {
                    return Err(Failure::Refused(name.clone(), answer.trim().to_owned()));
                }
                let answer = self.ask(&format!("del ssl cert {p}"), None).await?;
                if !answer.contains("deleted") && !answer.contains("doesn't exist") {
                    warn!(certificate = %p, answer = %answer.trim(), "HAProxy kept the certificate's store");
                }
                let in_force = self.in_force.get_or_insert_default();
                in_force.remove(name);
                let names: BTreeSet<&str> = in_force.keys().map(String::as_str).collect();
                write_atomic(&list, crt_list_text(&self.opts, &names).as_bytes()).map_err(Failure::Io)?;
                let _ = std::fs::remove_file(self.opts.path(name));
                info!(certificate = %p, "certificate removed through the runtime API");
            }
        }
        Ok(())
    }

    /// Takes back a transaction HAProxy refused (and the empty store of a new one).
    async fn abort(&self, path: &str, new: bool) {
        let _ = self.ask(&format!("abort ssl cert {path}"), None).await;
        if new {
            let _ = self.ask(&format!("del ssl cert {path}"), None).await;
        }
    }

    async fn ask(&self, line: &str, payload: Option<&str>) -> Result<String, Failure> {
        let socket = &self.opts.runtime_socket;
        let answer = match payload {
            Some(p) => ask_with_payload(socket, line, p, LIMIT).await,
            None => ask(socket, line, LIMIT).await,
        };
        answer.map_err(|e| Failure::Io(anyhow::anyhow!("runtime API at {}: {e}", socket.display())))
    }
}

/// Why a change did not happen.
enum Failure {
    /// HAProxy refused this certificate: the one in force stays.
    Refused(String, String),
    /// HAProxy did not answer, or a file could not be written.
    Io(anyhow::Error),
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

/// Applies DIR's certificates as inotify reports changes in it (a file
/// written, renamed into place, removed; a `..data` symlink swapped, as
/// Kubernetes updates secrets) or [`follow_kv`] reports a change in Consul
/// KV, once it settled (20 ms of quiet), and at least every `interval`, until
/// `shutdown`. A file is read again at every change reported: a file
/// refused half-written is applied once complete. A change in Consul KV
/// is whole when reported: it is applied at once.
pub async fn watch(mut tls: Tls, interval: Duration, kv: Option<consul::Client>, shutdown: CancellationToken) {
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    if let (Some(client), Some(prefix)) = (kv, tls.opts.kv_prefix.clone()) {
        tokio::spawn(follow_kv(client, prefix, tls.kv.clone(), tx.clone(), shutdown.clone()));
    }
    let dir = tls.opts.source.clone();
    let mut watcher = match watch_dir(&dir, &tx) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, every = ?interval, "cannot watch the certificate directory; reading it periodically");
            None
        }
    };
    // What changed between the first round and the watch.
    let mut woken = true;
    let mut failing = false;
    loop {
        if woken {
            tls.seen.clear();
        }
        match tls.sync().await {
            Ok(_) => {
                if failing {
                    info!("certificates in sync again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    warn!(error = %e, "certificate sync failed; retrying");
                }
                failing = true;
            }
        }
        woken = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(wake) = changes.recv() => {
                if wake == Wake::Dir {
                    settle(&mut changes).await;
                }
                true
            }
            _ = tokio::time::sleep(interval) => false,
        };
        if watcher.is_none() {
            // DIR may be there now.
            watcher = watch_dir(&dir, &tx).ok();
            if watcher.is_some() {
                info!(dir = %dir.display(), "watching the certificate directory");
                woken = true;
            }
        }
    }
}

/// What tells [`watch`] that certificates may have changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// inotify: something changed in DIR (maybe half-way).
    Dir,
    /// [`follow_kv`]: Consul KV's certificates changed.
    Kv,
}

/// An inotify watch on `dir` that wakes `wake` at each change in it.
fn watch_dir(
    dir: &Path,
    wake: &tokio::sync::mpsc::UnboundedSender<Wake>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let wake = wake.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // An error (the kernel's queue overflowed, say) may hide a change.
        if event.as_ref().map_or(true, is_change) {
            let _ = wake.send(Wake::Dir);
        }
    })?;
    watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Whether an inotify event may be a change of a certificate: anything but
/// a file or DIR opened, read or closed unwritten (which every round does).
fn is_change(event: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Waits until no change came for [`SETTLE`]`.0`, at most [`SETTLE`]`.1`.
async fn settle(changes: &mut tokio::sync::mpsc::UnboundedReceiver<Wake>) {
    let first = tokio::time::Instant::now();
    loop {
        let left = SETTLE.1.saturating_sub(first.elapsed());
        if left.is_zero() {
            return;
        }
        match tokio::time::timeout(SETTLE.0.min(left), changes.recv()).await {
            Ok(Some(_)) => {}
            _ => return,
        }
    }
}

/// The certificate a Consul KV key holds, `dir` being the prefix with its
/// `/` (empty: the whole store): `name` for `dir<name>.pem`, `None` for
/// any other key (another name, a key further down, a folder).
pub fn kv_cert_name<'a>(dir: &str, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(dir).filter(|file| !file.contains('/')).and_then(cert_name)
}

/// Follows the certificates under `prefix` in Consul's KV store (a
/// blocking query) into `store`, waking `wake` at each change, until
/// `shutdown`. Keys are `prefix/<name>.pem`; others are skipped with a
/// warning, once. When Consul does not answer, the last answer stays.
pub async fn follow_kv(
    client: consul::Client,
    prefix: String,
    store: KvCerts,
    wake: tokio::sync::mpsc::UnboundedSender<Wake>,
    shutdown: CancellationToken,
) {
    use consul::blocking::{Next, Pace, Step, follow};
    let prefix = prefix.trim_matches('/').to_owned();
    // Keys under the folder only (`tls/certs/`, not `tls/certs-old/`).
    let dir = if prefix.is_empty() { String::new() } else { format!("{prefix}/") };
    let pace = Pace {
        wait: consul::client::DEFAULT_WAIT,
        min_interval: Duration::from_millis(5),
        backoff: ops::Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
    };
    let (mut failing, mut skipped) = (false, BTreeSet::new());
    let step = |step: Step<Vec<consul::KvPair>>| match step {
        Step::Answer { value, answered, .. } => {
            if failing {
                info!(%prefix, "Consul KV answers again");
                failing = false;
            }
            if !answered.news && !answered.reset {
                return Next::Go;
            }
            let mut certs = BTreeMap::new();
            for pair in value {
                match kv_cert_name(&dir, &pair.key) {
                    Some(name) => _ = certs.insert(name.to_owned(), (pair.key, pair.value)),
                    None if pair.key.ends_with('/') => {}
                    _ => {
                        if skipped.insert(pair.key.clone()) {
                            warn!(key = %pair.key, "Consul KV key skipped: name it {dir}<name>.pem with [A-Za-z0-9._-]");
                        }
                    }
                }
            }
            if let Ok(mut store) = store.lock() {
                if store.as_ref() != Some(&certs) {
                    *store = Some(certs);
                    let _ = wake.send(Wake::Kv);
                }
            }
            Next::Go
        }
        Step::Failed(e) => {
            if !failing {
                warn!(%prefix, error = %e, "cannot read certificates from Consul KV; retrying");
                failing = true;
            }
            Next::Retry
        }
    };
    let ask = |index, wait| client.kv_list(&dir, index, wait);
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = follow(pace, ask, step, || std::future::ready(())) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_with_its_key_passes_and_anything_else_is_refused_with_a_reason() {
        let good = self_signed(&["a.test"]).unwrap();
        let info = check(good.as_bytes()).unwrap();
        assert_eq!(info.names, ["a.test"]);
        assert_eq!(info.fingerprint.len(), 40);
        let other = self_signed(&["b.test"]).unwrap();
        let (cert, _) = good.split_at(good.find("-----BEGIN PRIVATE KEY").unwrap());
        let (_, other_key) = other.split_at(other.find("-----BEGIN PRIVATE KEY").unwrap());
        assert!(check(cert.as_bytes()).unwrap_err().contains("no (unencrypted) private key"));
        assert_eq!(
            check(format!("{cert}{other_key}").as_bytes()).unwrap_err(),
            "the private key does not match the certificate"
        );
        assert_eq!(check(other_key.as_bytes()).unwrap_err(), "holds no certificate");
        assert_eq!(check(b"hello").unwrap_err(), "holds no certificate");
        let (_, key) = good.split_at(good.find("-----BEGIN PRIVATE KEY").unwrap());
        assert!(check(format!("{cert}{key}{other_key}").as_bytes()).unwrap_err().contains("more than one"));
        let broken = good.replacen("MII", "M!I", 1);
        assert!(check(broken.as_bytes()).is_err());
    }

    #[test]
    fn only_plain_pem_names_are_certificates() {
        assert_eq!(cert_name("example.com.pem"), Some("example.com"));
        assert_eq!(cert_name("default.pem"), Some("default"));
        for bad in ["a b.pem", ".hidden.pem", ".pem", "x.key", "x.pem.bak", "é.pem"] {
            assert_eq!(cert_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_plain_pem_keys_right_under_the_prefix_are_certificates() {
        assert_eq!(kv_cert_name("tls/certs/", "tls/certs/a.test.pem"), Some("a.test"));
        assert_eq!(kv_cert_name("", "a.test.pem"), Some("a.test"));
        for other in ["tls/certs/", "tls/certs/sub/a.pem", "tls/certs-old/a.pem", "tls/certsa.pem", "tls/certs/a.key"] {
            assert_eq!(kv_cert_name("tls/certs/", other), None, "{other}");
        }
    }

    /// haproxy-sync started before Consul KV answered (or with Consul
    /// away) keeps what HAProxy serves from KV; KV's first answer decides.
    #[tokio::test]
    async fn certificates_from_kv_stay_until_kv_answered() {
        let root = std::env::temp_dir().join(format!("tls-kv-unknown-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let source = root.join("secrets");
        std::fs::create_dir_all(&source).unwrap();
        let haproxy = Haproxy {
            bin: "haproxy".into(),
            config: root.join("haproxy.cfg"),
            master_socket: root.join("master.sock"),
            env: Vec::new(),
        };
        let mut opts = TlsOptions::new(source.clone(), &root.join("haproxy.cfg"), root.join("admin.sock")).unwrap();
        opts.kv_prefix = Some("tls/certs".into());
        // A previous run served k.test from KV, and f.test from a file since removed.
        std::fs::create_dir_all(&opts.state).unwrap();
        let kv_pem = self_signed(&["k.test"]).unwrap();
        std::fs::write(opts.path("k.test"), &kv_pem).unwrap();
        std::fs::write(opts.path("f.test"), self_signed(&["f.test"]).unwrap()).unwrap();
        let mut tls = Tls::new(opts.clone(), haproxy, Metrics::default());
        // HAProxy does not run: the files are written for its start.
        tls.sync().await.unwrap();
        assert_eq!(std::fs::read_to_string(opts.path("k.test")).unwrap(), kv_pem);
        let list = std::fs::read_to_string(opts.crt_list()).unwrap();
        assert!(list.contains("/k.test.pem") && list.contains("/f.test.pem"), "{list}");
        // KV answered: k.test is there, f.test is in neither.
        let key = "tls/certs/k.test.pem".to_owned();
        *tls.kv.lock().unwrap() = Some([("k.test".to_owned(), (key, kv_pem.clone().into_bytes()))].into());
        tls.sync().await.unwrap();
        let list = std::fs::read_to_string(opts.crt_list()).unwrap();
        assert!(list.contains("/k.test.pem") && !list.contains("/f.test.pem"), "{list}");
        assert!(!opts.path("f.test").exists());
        // KV answered with nothing: k.test goes too.
        *tls.kv.lock().unwrap() = Some(BTreeMap::new());
        tls.sync().await.unwrap();
        assert!(!opts.path("k.test").exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_payload_has_no_empty_line() {
        assert_eq!(payload(b"a\r\n\r\nb\n\n  \nc\n"), "a\nb\nc");
    }

    #[test]
    fn changes_add_update_and_remove_but_never_the_default() {
        let map = |e: &[(&str, &str)]| e.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
        let in_force = map(&[("default", "d"), ("a", "1"), ("b", "1")]);
        let wanted = map(&[("a", "2"), ("b", "1"), ("c", "1")]);
        assert_eq!(changes(&in_force, &wanted), [Change::Update("a".into()), Change::Add("c".into())]);
        let wanted = map(&[("default", "e")]);
        assert_eq!(
            changes(&in_force, &wanted),
            [Change::Update("default".into()), Change::Remove("a".into()), Change::Remove("b".into())]
        );
    }
}
