//! API keys: roles, collection scopes, hashed storage in the data directory, and
//! constant-time verification.
//!
//! A key reads `truce_<id>_<secret>`: the id (16 hex) finds the entry, the secret
//! (64 hex, 256 random bits) is checked against its SHA-256 in constant time. A
//! fast hash is right here: the secret is random, not a password.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use clap::ValueEnum;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{DataArgs, KeysCommand};

/// File in the data directory that holds the keys (hashes only).
pub const KEYS_FILE: &str = "api-keys.json";
/// Taken by `truce keys create|revoke` while they change [`KEYS_FILE`].
pub const KEYS_LOCK_FILE: &str = "api-keys.json.lock";
/// How often a running server looks for a changed keys file, in ms
/// (`KeyStore::follow`, on its own thread: a request never reads the file).
const KEYS_RELOAD_MS: u64 = 1000;

/// What a key may do. Each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read documents, queries, indexes and the change feed.
    Read,
    /// Also write documents and run transactions.
    Write,
    /// Also declare indexes and administer the server.
    Admin,
}

impl Role {
    /// The role as `--role` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// A stored key: never the secret, only its hash.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredKey {
    /// Public id.
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// What it may do.
    pub role: Role,
    /// Collections it is limited to; `None` = all.
    pub collections: Option<Vec<String>>,
    /// When it was created, ms since the epoch.
    pub created_ms: u64,
}

/// Who is calling, once a key is verified (or anyone, when no keys exist).
#[derive(Clone, Debug)]
pub struct Principal {
    /// The key's role.
    pub role: Role,
    /// The collections it may touch; `None` = all.
    pub collections: Option<Vec<String>>,
    /// No key was needed: the server has none (and never had one).
    pub keyless: bool,
    /// The public id of the key it presented (`None` when keyless).
    pub key_id: Option<String>,
}

impl Principal {
    /// The caller when the server has no keys: everything is allowed.
    pub fn anyone() -> Principal {
        Principal {
            role: Role::Admin,
            collections: None,
            keyless: true,
            key_id: None,
        }
    }

    /// Whether this caller may touch `collection`.
    pub fn may_access(&self, collection: &str) -> bool {
        self.collections
            .as_ref()
            .is_none_or(|list| list.iter().any(|c| c == collection))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn sha256_hex(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn keys_path(data: &Path) -> PathBuf {
    data.join(KEYS_FILE)
}

fn load(path: &Path) -> Result<Vec<StoredKey>, String> {
    parse(path, read_file(path)?.as_deref())
}

/// The keys file's bytes, `None` when there is none.
fn read_file(path: &Path) -> Result<Option<Vec<u8>>, String> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The keys in the keys file's bytes (none without a file).
fn parse(path: &Path, bytes: Option<&[u8]>) -> Result<Vec<StoredKey>, String> {
    match bytes {
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| format!("{}: {e}", path.display())),
        None => Ok(Vec::new()),
    }
}

/// Changes the keys file of data directory `data` with `change`, which sees
/// the keys as they are and answers what to report. Two `truce keys` commands
/// at once take turns (an exclusive lock on `api-keys.json.lock`): without it
/// each read the file, changed its copy and wrote it back, so one's change was
/// lost — a revoked admin key came back, a created key was never stored. The
/// new file is written whole beside the old one, synced, renamed over it and
/// the rename synced: a crash leaves the old keys or the new, never a torn file
/// or a revocation undone.
fn modify<T>(
    data: &Path,
    change: impl FnOnce(&mut Vec<StoredKey>) -> Result<T, String>,
) -> Result<T, String> {
    let lock_path = data.join(KEYS_LOCK_FILE);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    let path = keys_path(data);
    let mut keys = load(&path)?;
    let answer = change(&mut keys)?;
    let tmp = data.join(format!("{KEYS_FILE}.tmp.{}", std::process::id()));
    let text = serde_json::to_vec_pretty(&keys).map_err(|e| e.to_string())?;
    let written = std::fs::File::create(&tmp)
        .and_then(|mut file| {
            std::io::Write::write_all(&mut file, &text)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, &path))
        .and_then(|()| std::fs::File::open(data)?.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot replace {}: {e}", path.display()));
    }
    Ok(answer)
}

/// The keys of a running server, reloaded when the file changes.
pub struct KeyStore {
    path: PathBuf,
    state: RwLock<Loaded>,
    /// Taken by a reload for its whole look: files are applied in the order
    /// they were read (two reads on either side of a revoke, applied the
    /// other way round, would bring the revoked key back).
    reloading: std::sync::Mutex<()>,
    /// How many times the keys were reloaded: long-lived reads wait on it to
    /// check their key again (`http::extract::Standing`), rather than each
    /// waking on a timer of its own.
    reloads: tokio::sync::watch::Sender<u64>,
}

struct Loaded {
    keys: Vec<StoredKey>,
    /// The file as last read, whether its keys were taken or refused.
    read: Stamp,
    /// Whether this process has seen a key. A server that had keys never
    /// falls open while it runs, whatever it listens on (a loopback server
    /// behind a reverse proxy is reachable from anywhere). One that had none
    /// listens on loopback or was started with `--insecure-no-auth`
    /// (`serve.rs` refuses to start otherwise), and serves everyone.
    had_keys: bool,
}

/// What says the keys file changed: the outcome of reading it, its bytes
/// compared whole (a few hundred bytes a key, read once a second). Its
/// modification time and length were not enough: with coarse timestamps a
/// revoke then a create in one tick (a key rotated) left both as they were,
/// and the revoked key was taken until the next change; nor is its inode,
/// which the next change's file may reuse.
type Stamp = Result<Option<Vec<u8>>, String>;

/// Why a key was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Not a key of this server (or revoked).
    Invalid,
    /// The server has no keys: its last was revoked while it ran.
    NoKeys,
}

impl KeyStore {
    /// Loads the keys of data directory `data`.
    pub fn open(data: &Path) -> Result<KeyStore, String> {
        let path = keys_path(data);
        let read = read_file(&path);
        let keys = parse(&path, read.as_ref().map_err(Clone::clone)?.as_deref())?;
        Ok(KeyStore {
            path,
            state: RwLock::new(Loaded {
                had_keys: !keys.is_empty(),
                keys,
                read,
            }),
            reloading: std::sync::Mutex::default(),
            reloads: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The reloads to come (see `reloads`).
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// Looks at the keys file every `KEYS_RELOAD_MS`, for ever: a revocation
    /// reaches requests and open streams alike within that.
    pub async fn follow(&self) {
        let mut ticks = tokio::time::interval(std::time::Duration::from_millis(KEYS_RELOAD_MS));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.reload_if_changed();
        }
    }

    /// Reloads the keys if the file changed; then tells the waiting feeds,
    /// with no lock held (a feed checks its key while it is told). A file
    /// that cannot be read or taken keeps the keys as they were, and says so
    /// once, not every second until it changes.
    fn reload_if_changed(&self) {
        let _turn = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        // Read with no lock that requests take: they wait only while new
        // keys are put in place.
        let read = read_file(&self.path);
        if self.state.read().is_ok_and(|state| read == state.read) {
            return;
        }
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let parsed = read
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|bytes| parse(&self.path, bytes.as_deref()));
        state.read = read;
        match parsed {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "API keys reloaded");
                state.had_keys |= !keys.is_empty();
                state.keys = keys;
                drop(state);
                self.reloads.send_modify(|n| *n += 1);
            }
            Err(e) => tracing::error!("keeping the previous API keys until the file changes again: {e}"),
        }
    }

    /// Whether no key exists.
    pub fn is_empty(&self) -> bool {
        self.state.read().map(|s| s.keys.is_empty()).unwrap_or(false)
    }

    /// The caller the value of an `Authorization` header names. With no keys
    /// at all, anyone if this process never had a key, and no one if it had:
    /// revoking the last key never opens a server.
    pub fn caller(&self, authorization: Option<&str>) -> Result<Principal, AuthFailure> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        if state.keys.is_empty() {
            return if state.had_keys {
                Err(AuthFailure::NoKeys)
            } else {
                Ok(Principal::anyone())
            };
        }
        let token = authorization.and_then(bearer_token).ok_or(AuthFailure::Missing)?;
        let (id, secret) = key_parts(token).ok_or(AuthFailure::Invalid)?;
        let key = state
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or(AuthFailure::Invalid)?;
        let presented = sha256_hex(secret);
        if bool::from(presented.as_bytes().ct_eq(key.secret_sha256.as_bytes())) {
            Ok(Principal {
                role: key.role,
                collections: key.collections.clone(),
                keyless: false,
                key_id: Some(key.id.clone()),
            })
        } else {
            Err(AuthFailure::Invalid)
        }
    }
}

/// Creates a key in data directory `data`; returns the full key (shown once).
pub fn create(
    data: &Path,
    role: Role,
    collections: Option<Vec<String>>,
) -> Result<(StoredKey, String), String> {
    // Each collection once, in the order given (`a,a` names one collection).
    let collections = match collections {
        Some(list) => {
            let mut unique: Vec<String> = Vec::with_capacity(list.len());
            for name in list {
                truce::doc::validate_collection_name(&name).map_err(|e| e.to_string())?;
                if !unique.contains(&name) {
                    unique.push(name);
                }
            }
            Some(unique)
        }
        None => None,
    };
    let mut rng = rand::rng();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let (id, secret) = (hex(&id), hex(&secret));
    let created_ms = truce::engine::now_ms();
    let stored = StoredKey {
        id: id.clone(),
        secret_sha256: sha256_hex(&secret),
        role,
        collections,
        created_ms,
    };
    crate::serve::make_private_directory(data)
        .map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    modify(data, |keys| {
        keys.push(stored.clone());
        Ok(())
    })?;
    Ok((stored, format!("truce_{id}_{secret}")))
}

/// A key's id and secret: `truce_<id>_<secret>`.
fn key_parts(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix("truce_").and_then(|rest| rest.split_once('_'))
}

/// Revokes key `id` of data directory `data` (or the key whose whole text
/// `id` is: only its id is read, and no message repeats its secret);
/// returns how many keys are left.
pub fn revoke(data: &Path, id: &str) -> Result<usize, String> {
    let id = key_parts(id).map_or(id, |(id, _)| id);
    modify(data, |keys| {
        let before = keys.len();
        keys.retain(|k| k.id != id);
        if keys.len() == before {
            return Err(format!("no key with id {id}"));
        }
        Ok(keys.len())
    })
}

/// Runs `truce keys …`.
pub fn run(command: KeysCommand) -> Result<(), String> {
    // A data directory that is not there is most likely a typo: listing or
    // revoking in it would find no key, as if the server had none.
    let existing = |data: &DataArgs| {
        let dir = data.dir()?;
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(format!(
                "no data directory at {}: name the server's with --data (or TRUCE_DATA, or its --config file)",
                dir.display()
            ))
        }
    };
    match command {
        KeysCommand::Create {
            role,
            collections,
            data,
        } => {
            let dir = data.dir()?;
            let made = !dir.exists();
            let (stored, key) = create(&dir, role, collections)?;
            if made {
                eprintln!(
                    "note: {} did not exist; it was created, and a server started on it will find the key",
                    dir.display()
                );
            }
            eprintln!(
                "created key {} (role {}, collections {}); it is shown only now:",
                stored.id,
                stored.role.name(),
                stored
                    .collections
                    .as_ref()
                    .map_or("all".to_string(), |c| c.join(","))
            );
            println!("{key}");
            Ok(())
        }
        KeysCommand::List { data } => {
            for key in load(&keys_path(&existing(&data)?))? {
                let scope = key.collections.map_or("all".to_string(), |c| c.join(","));
                println!("{}\t{}\t{}", key.id, key.role.name(), scope);
            }
            Ok(())
        }
        KeysCommand::Revoke { id, data } => {
            let left = revoke(&existing(&data)?, &id)?;
            eprintln!("revoked key {id}");
            if left == 0 {
                eprintln!(
                    "that was the last key: a running server now refuses every API request until a key \
                     is created; restarted without keys it listens on loopback only (or anywhere with \
                     --insecure-no-auth) and serves everyone"
                );
            }
            Ok(())
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme's name
/// is case-insensitive (RFC 9110, 11.1).
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collection_named_twice_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["a", "b", "a"].map(String::from).to_vec();
        let (stored, _) = create(dir.path(), Role::Read, Some(names)).unwrap();
        assert_eq!(stored.collections, Some(vec!["a".to_string(), "b".to_string()]));
    }

    /// `truce keys` commands run at once take turns on the file: every create
    /// is stored and no revoked key comes back (each used to read the file,
    /// change its copy and write it back over the others' changes).
    #[test]
    fn concurrent_creates_and_revokes_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let early: Vec<String> = (0..8)
            .map(|_| create(&data, Role::Admin, None).unwrap().0.id)
            .collect();
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let (data, early) = (data.clone(), early.clone());
                std::thread::spawn(move || match i % 2 {
                    0 => revoke(&data, &early[i / 2]).map(|_| None),
                    _ => create(&data, Role::Read, None).map(|(stored, _)| Some(stored.id)),
                })
            })
            .collect();
        let created: Vec<String> = threads
            .into_iter()
            .filter_map(|t| t.join().unwrap().unwrap())
            .collect();
        let stored: Vec<String> = load(&keys_path(&data))
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        let mut expected = created.clone();
        expected.sort();
        let mut got = stored.clone();
        got.sort();
        assert_eq!(got, expected, "exactly the 8 created later are left");
        assert!(
            !data
                .read_dir()
                .unwrap()
                .any(|e| e.unwrap().file_name().to_string_lossy().contains(".tmp")),
            "no temporary file is left"
        );
    }

    /// A key rotated (revoked, and one of the same role and collections
    /// made) within one tick of a coarse clock leaves the file's length and
    /// time as they were: the server took that for no change, and kept
    /// taking the revoked key and refusing the new one until the next
    /// change (found by an access review).
    #[test]
    fn a_rotation_that_keeps_the_files_length_and_time_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let (old, old_key) = create(dir.path(), Role::Write, Some(vec!["a".into()])).unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        let bearer = |key: &str| format!("Bearer {key}");
        assert!(store.caller(Some(&bearer(&old_key))).is_ok());
        let path = keys_path(dir.path());
        let before = std::fs::metadata(&path).unwrap();
        revoke(dir.path(), &old.id).unwrap();
        let (_, new_key) = create(dir.path(), Role::Write, Some(vec!["a".into()])).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(before.modified().unwrap()).unwrap();
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (after.len(), after.modified().unwrap()),
            (before.len(), before.modified().unwrap())
        );
        store.reload_if_changed();
        assert_eq!(
            store.caller(Some(&bearer(&old_key))).unwrap_err(),
            AuthFailure::Invalid
        );
        assert!(store.caller(Some(&bearer(&new_key))).is_ok());
        // A file that cannot be taken keeps the keys, and is looked at again
        // only once it changes.
        std::fs::write(&path, b"[{").unwrap();
        store.reload_if_changed();
        assert!(store.caller(Some(&bearer(&new_key))).is_ok());
        assert!(
            store
                .state
                .read()
                .unwrap()
                .read
                .as_ref()
                .is_ok_and(|b| b.as_deref() == Some(&b"[{"[..]))
        );
    }

    /// `keys revoke` takes the whole key too, and never says its secret
    /// (a message echoing it put the key into terminals and CI logs).
    #[test]
    fn a_key_is_revoked_by_its_id_or_its_whole_text() {
        let dir = tempfile::tempdir().unwrap();
        let (_, first) = create(dir.path(), Role::Read, None).unwrap();
        let (second, _) = create(dir.path(), Role::Read, None).unwrap();
        assert_eq!(revoke(dir.path(), &first), Ok(1));
        let again = revoke(dir.path(), &first).unwrap_err();
        let secret = key_parts(&first).unwrap().1;
        assert!(!again.contains(secret), "{again}");
        assert_eq!(revoke(dir.path(), &second.id), Ok(0));
    }

    #[test]
    fn created_keys_verify_and_others_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = create(dir.path(), Role::Write, Some(vec!["a".into()])).unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        let who = store.caller(Some(&format!("Bearer {key}"))).unwrap();
        assert_eq!(who.role, Role::Write);
        assert!(who.may_access("a") && !who.may_access("b"));
        assert_eq!(store.caller(None).unwrap_err(), AuthFailure::Missing);
        assert_eq!(
            store.caller(Some(&key)).unwrap_err(),
            AuthFailure::Missing,
            "Bearer is required"
        );
        // The scheme's name is case-insensitive (RFC 9110, 11.1).
        for scheme in ["bearer", "BEARER", "beaRer"] {
            let who = store.caller(Some(&format!("{scheme} {key}"))).unwrap();
            assert_eq!(who.role, Role::Write, "{scheme}");
        }
        assert_eq!(
            store.caller(Some(&format!("Basic {key}"))).unwrap_err(),
            AuthFailure::Missing
        );
        let mut wrong = key.clone();
        wrong.pop();
        wrong.push('x');
        assert_eq!(
            store.caller(Some(&format!("Bearer {wrong}"))).unwrap_err(),
            AuthFailure::Invalid
        );
        assert_eq!(
            store.caller(Some("Bearer truce_nope_00")).unwrap_err(),
            AuthFailure::Invalid
        );
        let text = std::fs::read_to_string(dir.path().join(KEYS_FILE)).unwrap();
        assert!(
            !text.contains(key.rsplit('_').next().unwrap()),
            "secrets are never stored"
        );
    }

    /// A server that never had a key serves everyone (it listens on loopback,
    /// or was told `--insecure-no-auth`); one whose last key goes while it
    /// runs refuses everyone.
    #[test]
    fn a_server_that_had_keys_never_falls_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path()).unwrap();
        assert_eq!(store.caller(None).unwrap().role, Role::Admin);

        // A running server's `follow` looks at the keys file every KEYS_RELOAD_MS.
        let reloaded = || store.reload_if_changed();
        let (stored, key) = create(dir.path(), Role::Read, None).unwrap();
        reloaded();
        let bearer = format!("Bearer {key}");
        assert_eq!(store.caller(None).unwrap_err(), AuthFailure::Missing);
        assert_eq!(store.caller(Some(&bearer)).unwrap().role, Role::Read);
        revoke(dir.path(), &stored.id).unwrap();
        reloaded();
        for authorization in [None, Some(bearer.as_str())] {
            assert_eq!(
                store.caller(authorization).unwrap_err(),
                AuthFailure::NoKeys,
                "a running server must not fall open when its last key is revoked"
            );
        }
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
    }
}
