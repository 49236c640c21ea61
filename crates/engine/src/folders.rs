//! A node's folders. The first, `default`, lives in the node's home; every
//! other one in `HOME/folders/NAME/`, a home of its own (config, index,
//! packs, control socket and MCP tokens) whose key is sealed by the node's
//! key (the default folder's) together with the node's identity, which it
//! shares. One
//! passphrase opens every folder; each folder has its own random key, so
//! peers of one folder can read nothing of another.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use sovryn_store::{Access, KeyFile, MasterKey, Store};

use crate::config::{absolute, canonical_prefix, check_apart, Config, Home};
use crate::node::tighten_home;
use crate::{Error, Result};

/// The name of the folder that lives in the node's home.
pub const DEFAULT: &str = "default";
const FOLDERS_DIR: &str = "folders";
const REMOVED_DIR: &str = "removed-folders";

/// A folder's name: 1 to 32 of `a-z 0-9 - _`, starting with a letter or
/// digit (it names a directory).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FolderName(String);

impl FolderName {
    /// Checks a user-typed name.
    pub fn parse(raw: &str) -> Result<Self> {
        let ok = (1..=32).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && raw
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if !ok {
            return Err(Error::Usage(format!(
                "'{raw}' is not a folder name: use 1 to 32 of a-z, 0-9, '-' and '_', starting with a letter or digit"
            )));
        }
        Ok(FolderName(raw.to_owned()))
    }

    /// The name of the node's first folder.
    pub fn default_folder() -> Self {
        FolderName(DEFAULT.to_owned())
    }

    /// The name as typed.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the folder in the node's home.
    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT
    }
}

impl std::fmt::Display for FolderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One folder of a node: its name and its home.
#[derive(Debug, Clone)]
pub struct Folder {
    /// Its name.
    pub name: FolderName,
    /// Its home (the node's home for `default`).
    pub home: Home,
}

/// The home of folder `name` of the node at `node`.
pub fn folder_home(node: &Home, name: &FolderName) -> Home {
    if name.is_default() {
        return node.clone();
    }
    Home {
        dir: node.dir.join(FOLDERS_DIR).join(name.as_str()),
    }
}

/// The node's home of a folder whose key is sealed (`HOME/folders/NAME`).
pub fn node_of(folder: &Home) -> Result<Home> {
    let parent = folder.dir.parent().filter(|p| p.ends_with(FOLDERS_DIR));
    match parent.and_then(Path::parent) {
        Some(node) => Ok(Home {
            dir: node.to_owned(),
        }),
        None => Err(Error::Config(format!(
            "{} holds a sealed key but is not a folder of a node",
            folder.dir.display()
        ))),
    }
}

/// Every folder of the node: `default` first (when the node exists), then
/// the others by name.
pub fn list(node: &Home) -> Result<Vec<Folder>> {
    let mut out = Vec::new();
    if node.exists() {
        out.push(Folder {
            name: FolderName::default_folder(),
            home: node.clone(),
        });
    }
    let dir = node.dir.join(FOLDERS_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    let mut others: Vec<Folder> = entries
        .flatten()
        .filter_map(|e| {
            let name = FolderName::parse(e.file_name().to_str()?).ok()?;
            let home = folder_home(node, &name);
            home.exists().then_some(Folder { name, home })
        })
        .collect();
    others.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(others);
    Ok(out)
}

fn names(folders: &[Folder]) -> String {
    folders
        .iter()
        .map(|f| f.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The folder called `name`, or an error listing the folders there are.
pub fn find(node: &Home, name: &str) -> Result<Folder> {
    let name = FolderName::parse(name)?;
    let all = list(node)?;
    if name.is_default() && all.is_empty() {
        return Err(Error::NoNode(node.dir.clone()));
    }
    all.iter().find(|f| f.name == name).cloned().ok_or_else(|| {
        Error::NotFound(format!(
            "no folder '{name}' on this node; its folders: {}",
            names(&all)
        ))
    })
}

/// The folder a command works on: the one named, else the one whose
/// storage path holds `cwd` (the innermost), else the only one, else an
/// error listing them.
pub fn select(node: &Home, name: Option<&str>, cwd: &Path) -> Result<Folder> {
    if let Some(n) = name {
        return find(node, n);
    }
    let all = list(node)?;
    if all.len() <= 1 {
        return Ok(all.into_iter().next().unwrap_or(Folder {
            name: FolderName::default_folder(),
            home: node.clone(),
        }));
    }
    let cwd = fs::canonicalize(cwd).unwrap_or_else(|_| cwd.to_owned());
    let holding = all
        .iter()
        .filter_map(|f| {
            let root = fs::canonicalize(Config::load(&f.home).ok()?.storage_path).ok()?;
            cwd.starts_with(&root)
                .then(|| (root.components().count(), f))
        })
        .max_by_key(|(depth, _)| *depth);
    match holding {
        Some((_, f)) => Ok(f.clone()),
        None => Err(Error::Usage(format!(
            "this node has several folders ({}); choose one with -F NAME or work inside its storage path",
            names(&all)
        ))),
    }
}

/// What [`create`] made.
#[derive(Debug, Clone)]
pub struct Created {
    /// The new folder.
    pub folder: Folder,
    /// Its public id.
    pub folder_id: String,
    /// Its storage path (absolute, symlinks resolved).
    pub storage_path: PathBuf,
}

/// Adds folder `name` to the node at `node`, keeping `storage` in sync
/// under `folder_key` (a new random key when `None`), its key sealed by
/// `node_key`. Its storage path may neither hold nor lie inside the home
/// or another folder's storage path; a key already used by a folder of
/// this node is refused.
pub fn create(
    node: &Home,
    name: &FolderName,
    storage: &Path,
    node_key: &MasterKey,
    folder_key: Option<MasterKey>,
) -> Result<Created> {
    if name.is_default() {
        return Err(Error::Usage(
            "'default' is the folder in the node's home; choose another name".into(),
        ));
    }
    let base = Config::load(node)?;
    let home = folder_home(node, name);
    if home.dir.exists() {
        return Err(Error::Usage(format!(
            "this node already has a folder '{name}'"
        )));
    }
    let storage = absolute(storage)?;
    if storage
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(Error::Usage(format!(
            "give the storage path without '..': {}",
            storage.display()
        )));
    }
    check_apart(&node.dir, &storage)?;
    check_apart_from_folders(node, None, &storage)?;
    let key = folder_key.unwrap_or_else(MasterKey::generate);
    let folder_id = key.derive().folder_id;
    for f in list(node)? {
        if let Ok(k) = open_key(&f.home, node_key) {
            if k.derive().folder_id == folder_id {
                return Err(Error::Usage(format!(
                    "folder '{}' already has this key",
                    f.name
                )));
            }
        }
    }
    fs::create_dir_all(&storage).map_err(|e| Error::io(&storage, e))?;
    let storage = fs::canonicalize(&storage).map_err(|e| Error::io(&storage, e))?;
    // Again on the real path: a symlink or `..` may have led elsewhere.
    check_apart(&node.dir, &storage)?;
    check_apart_from_folders(node, None, &storage)?;
    let parent = node.dir.join(FOLDERS_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&parent)
        .map_err(|e| Error::io(&parent, e))?;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&home.dir)
        .map_err(|e| Error::io(&home.dir, e))?;
    let made = fill(node, &home, &base, &storage, &key, node_key);
    if made.is_err() {
        // Only what was just made here: the directory did not exist before.
        let _ = fs::remove_dir_all(&home.dir);
    }
    made?;
    Ok(Created {
        folder: Folder {
            name: name.clone(),
            home,
        },
        folder_id,
        storage_path: storage,
    })
}

/// Refuses a storage path that holds or lies inside the storage path of
/// another folder of the node (`except`: the folder it is for): the outer
/// folder would record the inner one's files and send them, under its
/// key, to its own peers. Symlinks are resolved as far as the paths exist.
pub fn check_apart_from_folders(
    node: &Home,
    except: Option<&FolderName>,
    storage: &Path,
) -> Result<()> {
    let s = canonical_prefix(storage);
    for f in list(node)? {
        if Some(&f.name) == except {
            continue;
        }
        let cfg = Config::load(&f.home)?;
        let other = canonical_prefix(&cfg.storage_path);
        if other.starts_with(&s) || s.starts_with(&other) {
            return Err(Error::Usage(format!(
                "{} and folder '{}' ({}) must not contain each other",
                storage.display(),
                f.name,
                cfg.storage_path.display()
            )));
        }
    }
    Ok(())
}

/// Writes a new folder's files into its (empty, private) home; the config
/// last, as in `init`: its presence means the folder is complete.
fn fill(
    node: &Home,
    home: &Home,
    base: &Config,
    storage: &Path,
    key: &MasterKey,
    node_key: &MasterKey,
) -> Result<()> {
    let mut config = Config::new(base.node_name.clone(), storage.to_owned());
    // Node-wide settings come from the node; its endpoint serves every folder.
    config.listen = base.listen.clone();
    config.sync.mdns = base.sync.mdns;
    config.sync.dht = base.sync.dht;
    config.sync.relay_url = base.sync.relay_url.clone();
    // One MCP server per folder, off until asked for (its own port).
    config.mcp.enabled = false;
    config.validate()?;
    let identity = fs::read(node.identity()).map_err(|e| Error::io(&node.identity(), e))?;
    sovryn_store::keys::write_secret_file(&home.identity(), &identity)?;
    let secret = crate::identity::load(&home.identity())?.to_bytes();
    KeyFile::sealed(key, node_key, &secret)?.save(&home.keyfile())?;
    drop(Store::open(&home.dir, key, Access::ReadWrite)?);
    config.save(home)?;
    tighten_home(home)
}

/// Opens the key of a folder's home: a sealed key with `node_key` and the
/// node's identity.
pub fn open_key(home: &Home, node_key: &MasterKey) -> Result<MasterKey> {
    let kf = KeyFile::load(&home.keyfile())?;
    if kf.is_sealed() {
        let secret = crate::identity::load(&home.identity())?.to_bytes();
        return Ok(kf.unseal(node_key, &secret)?);
    }
    Ok(node_key.clone())
}

/// Takes folder `name` off the node: its home moves to
/// `HOME/removed-folders/NAME-<unix time>`, history and all (delete that
/// directory to free its space). Files in its storage path stay.
pub fn remove(node: &Home, name: &FolderName) -> Result<PathBuf> {
    let folder = find(node, name.as_str())?;
    if folder.name.is_default() {
        return Err(Error::Usage(
            "the default folder holds the node's key and cannot be removed".into(),
        ));
    }
    let removed = node.dir.join(REMOVED_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&removed)
        .map_err(|e| Error::io(&removed, e))?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let to = removed.join(format!("{name}-{secs}"));
    fs::rename(&folder.home.dir, &to).map_err(|e| Error::io(&folder.home.dir, e))?;
    sovryn_store::fsync_parent(&folder.home.dir)?;
    sovryn_store::fsync_parent(&to)?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{InitOptions, Node};

    #[test]
    fn folders_are_kept_apart_and_chosen_by_name_or_directory() {
        let dir = tempfile::tempdir().unwrap();
        let node = Home {
            dir: dir.path().join("home"),
        };
        let key = MasterKey::generate();
        Node::init(
            &node,
            InitOptions {
                storage_path: dir.path().join("default"),
                folder_key: Some(key.to_hex()),
                ..Default::default()
            },
        )
        .unwrap();
        let work = FolderName::parse("work").unwrap();
        let made = create(&node, &work, &dir.path().join("work"), &key, None).unwrap();
        // Its key opens with the node key only, and differs from the node's.
        let wk = open_key(&made.folder.home, &key).unwrap();
        assert_eq!(wk.derive().folder_id, made.folder_id);
        assert_ne!(made.folder_id, key.derive().folder_id);
        assert!(open_key(&made.folder.home, &MasterKey::generate()).is_err());
        assert!(Node::open(made.folder.home.clone(), &wk, Access::ReadOnly).is_ok());
        // Overlapping storage paths, a reused key, a second 'work' and the
        // name 'default' are refused, and leave nothing behind.
        let photos = FolderName::parse("photos").unwrap();
        std::os::unix::fs::symlink(dir.path().join("default"), dir.path().join("link")).unwrap();
        for (name, path, k) in [
            (&photos, dir.path().join("link/inner"), None),
            (&photos, dir.path().join("x/../default/y"), None),
            (&photos, dir.path().join("work/inner"), None),
            (&photos, dir.path().to_owned(), None),
            (&photos, dir.path().join("p"), Some(wk.clone())),
            (&photos, dir.path().join("home/x"), None),
            (&work, dir.path().join("w2"), None),
            (&FolderName::default_folder(), dir.path().join("d2"), None),
        ] {
            assert!(create(&node, name, &path, &key, k).is_err(), "{path:?}");
        }
        assert!(!folder_home(&node, &photos).dir.exists());
        assert!(!dir.path().join("default/inner").exists());
        create(&node, &photos, &dir.path().join("photos"), &key, None).unwrap();
        let names: Vec<String> = list(&node)
            .unwrap()
            .iter()
            .map(|f| f.name.to_string())
            .collect();
        assert_eq!(names, ["default", "photos", "work"]);
        // Chosen by name, by the directory holding the cwd, else an error naming them.
        assert_eq!(select(&node, Some("work"), dir.path()).unwrap().name, work);
        let deep = dir.path().join("photos/a/b");
        fs::create_dir_all(&deep).unwrap();
        assert_eq!(select(&node, None, &deep).unwrap().name, photos);
        let err = select(&node, None, dir.path()).unwrap_err().to_string();
        assert!(err.contains("default, photos, work"), "{err}");
        assert!(select(&node, Some("nope"), dir.path()).is_err());
        // Removed: gone from the list, its history kept aside.
        let kept = remove(&node, &photos).unwrap();
        assert!(kept.join("index.db").exists());
        assert_eq!(list(&node).unwrap().len(), 2);
        assert!(remove(&node, &FolderName::default_folder()).is_err());
    }

    #[test]
    fn folder_names_are_checked() {
        for good in ["work", "photos-2026", "a", "x_y"] {
            assert!(FolderName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "Work", "../x", "a/b", "-x", ".x", &"a".repeat(33), "é"] {
            assert!(FolderName::parse(bad).is_err(), "{bad}");
        }
    }
}
