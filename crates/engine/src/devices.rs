//! A folder's signed device list: who belongs to the folder, as operations
//! ("add this device", "revoke this device") each signed by the member who
//! made it, kept in `devices.json` of the folder's home and gossiped to
//! every member (`Msg::Devices`).
//!
//! Trust grows from the roots: this node and the peers its user configured
//! with full rights (not read-only, not limited to paths). A device added,
//! with full rights, by a trusted signer may sign in turn; of one signer's
//! adds of one device only the newest counts, so a later read-only add
//! takes signing back. A revocation wins for good: a revoked device is
//! never a member again, and what only it vouched for counts no more. A
//! root is revoked only by a root, and a revoked signer's operations count
//! for nothing. Only operations of trusted signers are kept. Members vouch
//! for the peers their user configured (not for those the list brought),
//! so a device that joins through one member learns the others.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Home, PeerConfig};
use crate::identity::{PublicKey, SecretKey};
use crate::{Error, Result};

/// Operations kept at most per folder.
pub const MAX_OPS: usize = 4096;

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// The device is a member.
    Add,
    /// The device is no longer a member, for good.
    Revoke,
}

/// One signed operation on a folder's device list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceOp {
    /// Add or revoke.
    pub kind: OpKind,
    /// The device (endpoint id, hex).
    pub device: String,
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its changes are not taken.
    #[serde(default)]
    pub read_only: bool,
    /// A backup node: it keeps the folder's sealed objects, holds no key,
    /// and is never a sync peer or a signer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backup: bool,
    /// Where it listens (`HOST:PORT`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// The member who signed it.
    pub by: String,
    /// When (milliseconds since the epoch).
    pub at_ms: u64,
    /// Ed25519 signature by `by` (hex) over the folder id and the fields above.
    pub sig: String,
}

#[derive(Serialize)]
struct Signed<'a> {
    context: &'static str,
    folder: &'a str,
    kind: OpKind,
    device: &'a str,
    name: &'a Option<String>,
    read_only: bool,
    // Absent when false, so operations signed before roles existed check.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    backup: bool,
    addresses: &'a [String],
    by: &'a str,
    at_ms: u64,
}

/// What an added device is to the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A full member: its changes are taken, and it may add devices.
    Member,
    /// A member whose changes are not taken.
    ReadOnly,
    /// A backup node: sealed objects only, no key.
    Backup,
}

impl DeviceOp {
    fn signed_bytes(&self, folder: &str) -> Vec<u8> {
        serde_json::to_vec(&Signed {
            context: "sovryn device op 1",
            folder,
            kind: self.kind,
            device: &self.device,
            name: &self.name,
            read_only: self.read_only,
            backup: self.backup,
            addresses: &self.addresses,
            by: &self.by,
            at_ms: self.at_ms,
        })
        .unwrap_or_default()
    }

    /// A new operation on `device`, signed by `secret` for `folder`.
    pub fn new(
        folder: &str,
        secret: &SecretKey,
        kind: OpKind,
        device: &PublicKey,
        name: Option<String>,
        role: Role,
        addresses: Vec<String>,
    ) -> DeviceOp {
        let mut op = DeviceOp {
            kind,
            device: device.to_string(),
            name,
            read_only: role == Role::ReadOnly,
            backup: role == Role::Backup,
            addresses,
            by: secret.public().to_string(),
            at_ms: crate::node::now_ms(),
            sig: String::new(),
        };
        op.sig = hex::encode(secret.sign(&op.signed_bytes(folder)).to_bytes());
        op
    }

    /// What the operation makes the device (for an add).
    pub fn role(&self) -> Role {
        match (self.backup, self.read_only) {
            (true, _) => Role::Backup,
            (false, true) => Role::ReadOnly,
            (false, false) => Role::Member,
        }
    }

    /// Checks a received operation: well-formed, signed by `by`, for
    /// `folder`. Returns the device's and the signer's ids.
    pub fn check(&self, folder: &str) -> Result<(PublicKey, PublicKey)> {
        let bad = |why: &str| Error::Usage(format!("device operation refused: {why}"));
        let device: PublicKey = self.device.parse().map_err(|_| bad("bad device id"))?;
        let by: PublicKey = self.by.parse().map_err(|_| bad("bad signer id"))?;
        if self
            .name
            .as_ref()
            .is_some_and(|n| n.len() > 64 || n.chars().any(char::is_control))
        {
            return Err(bad("bad name"));
        }
        if self.backup && self.read_only {
            return Err(bad("a backup node is not a read-only member"));
        }
        if self.addresses.len() > 16 {
            return Err(bad("too many addresses"));
        }
        for a in &self.addresses {
            crate::config::check_peer_address(a).map_err(|_| bad("bad address"))?;
        }
        let sig: [u8; 64] = hex::decode(&self.sig)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("bad signature"))?;
        by.verify(
            &self.signed_bytes(folder),
            &iroh_base::Signature::from_bytes(&sig),
        )
        .map_err(|_| bad("the signature does not check"))?;
        Ok((device, by))
    }
}

/// A folder's device list as this node keeps it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceList {
    /// Every operation counted, oldest first.
    pub ops: Vec<DeviceOp>,
}

/// Who is a member, as the operations say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// Members added and not revoked, with the newest counted add of each.
    pub added: BTreeMap<String, DeviceOp>,
    /// Backup nodes added and not revoked, likewise: never members.
    pub backups: BTreeMap<String, DeviceOp>,
    /// Devices revoked.
    pub revoked: BTreeSet<String>,
    /// Who may sign operations (roots included).
    pub signers: HashSet<String>,
}

fn path(home: &Home) -> PathBuf {
    home.dir.join("devices.json")
}

impl DeviceList {
    /// The list kept in `home` (empty when there is none yet).
    pub fn load(home: &Home) -> Result<DeviceList> {
        match std::fs::read(path(home)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::Config(format!("devices.json: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DeviceList::default()),
            Err(e) => Err(Error::io(&path(home), e)),
        }
    }

    /// Changes the list kept in `home` under its lock (the daemon and a
    /// command may both write it); saved when operations were added (they
    /// are never removed).
    pub fn update<T>(home: &Home, f: impl FnOnce(&mut DeviceList) -> Result<T>) -> Result<T> {
        crate::config::with_lock(home, "devices.lock", || {
            let mut list = DeviceList::load(home)?;
            let before = list.ops.len();
            let out = f(&mut list)?;
            if list.ops.len() != before {
                list.save(home)?;
            }
            Ok(out)
        })
    }

    /// Saves it (write, fsync, rename).
    pub fn save(&self, home: &Home) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Config(e.to_string()))?;
        crate::fsutil::write_atomic(&path(home), &bytes, 0o600)
    }

    /// Who is a member, given the roots ([`signing_roots`]); see the
    /// module's text for the rules. The operations are taken as checked:
    /// each was checked when [`DeviceList::merge`] took it, or signed here.
    pub fn members(&self, roots: &HashSet<String>) -> Members {
        let checked: Vec<&DeviceOp> = self.ops.iter().collect();
        // One signer's newest add of each device.
        let mut newest: BTreeMap<(&str, &str), &DeviceOp> = BTreeMap::new();
        for o in checked.iter().filter(|o| o.kind == OpKind::Add) {
            let slot = newest
                .entry((o.by.as_str(), o.device.as_str()))
                .or_insert(o);
            if (o.at_ms, &o.sig) > (slot.at_ms, &slot.sig) {
                *slot = o;
            }
        }
        let revokes: Vec<&&DeviceOp> = checked
            .iter()
            .filter(|o| o.kind == OpKind::Revoke)
            .collect();
        // Roots revoked by roots.
        let mut revoked: BTreeSet<String> = revokes
            .iter()
            .filter(|o| roots.contains(&o.by))
            .map(|o| o.device.clone())
            .collect();
        // Then, to a fixpoint: who may sign, and the non-roots they revoke.
        let signers = loop {
            let mut signers: HashSet<String> = roots
                .iter()
                .filter(|r| !revoked.contains(*r))
                .cloned()
                .collect();
            loop {
                let before = signers.len();
                for o in newest.values() {
                    if o.role() == Role::Member
                        && signers.contains(&o.by)
                        && !revoked.contains(&o.device)
                    {
                        signers.insert(o.device.clone());
                    }
                }
                if signers.len() == before {
                    break;
                }
            }
            let before = revoked.len();
            for o in &revokes {
                if signers.contains(&o.by) && !roots.contains(&o.device) {
                    revoked.insert(o.device.clone());
                }
            }
            if revoked.len() == before {
                break signers;
            }
        };
        let mut added: BTreeMap<String, DeviceOp> = BTreeMap::new();
        for o in newest.values() {
            if signers.contains(&o.by) && !revoked.contains(&o.device) {
                let newer = added.get(&o.device).is_none_or(|p| p.at_ms <= o.at_ms);
                if newer {
                    added.insert(o.device.clone(), (*o).clone());
                }
            }
        }
        let (backups, added) = added.into_iter().partition(|(_, o)| o.backup);
        Members {
            added,
            backups,
            revoked,
            signers,
        }
    }

    /// Takes the operations of `incoming` this list lacks whose signature
    /// checks and whose signer is trusted (given `roots`); returns how many
    /// were new. Past [`MAX_OPS`], only revocations are taken.
    pub fn merge(
        &mut self,
        folder: &str,
        roots: &HashSet<String>,
        incoming: Vec<DeviceOp>,
    ) -> usize {
        let canonical = |sig: &str| hex::decode(sig).ok();
        let mut have: HashSet<Vec<u8>> =
            self.ops.iter().filter_map(|o| canonical(&o.sig)).collect();
        let mut candidates = Vec::new();
        for o in incoming {
            let Some(sig) = canonical(&o.sig) else {
                continue;
            };
            if have.contains(&sig) || o.check(folder).is_err() {
                continue;
            }
            have.insert(sig);
            candidates.push(o);
        }
        if candidates.is_empty() {
            return 0;
        }
        // Trust as it stands with the newcomers: a chain of adds may come
        // in one message.
        let mut all = self.clone();
        all.ops.extend(candidates.iter().cloned());
        let signers = all.members(roots).signers;
        let mut new = 0;
        for o in candidates {
            let room = match o.kind {
                OpKind::Add => self.ops.len() < MAX_OPS,
                OpKind::Revoke => self.ops.len() < MAX_OPS + MAX_OPS / 4,
            };
            if room && signers.contains(&o.by) {
                self.ops.push(o);
                new += 1;
            }
        }
        new
    }

    /// Signs an add for every configured peer this node has not vouched
    /// for yet (or whose rights or addresses changed), except peers limited
    /// to some paths; returns whether any was signed.
    pub fn vouch(&mut self, folder: &str, secret: &SecretKey, peers: &[PeerConfig]) -> bool {
        let me = secret.public().to_string();
        let mut signed = false;
        for p in peers {
            // A peer limited to some paths is this node's own arrangement
            // (other members would give it the whole folder), and one the
            // list brought is the list's.
            if !p.paths.is_empty() || p.via_list {
                continue;
            }
            let Ok(id) = p.id.parse::<PublicKey>() else {
                continue;
            };
            let current = self
                .ops
                .iter()
                .filter(|o| o.by == me && o.device == p.id)
                .max_by_key(|o| o.at_ms);
            let same = current.is_some_and(|o| {
                o.kind == OpKind::Add
                    && !o.backup
                    && o.read_only == p.read_only
                    && o.addresses == p.addresses
                    && o.name == p.name
            });
            if !same && current.is_none_or(|o| o.kind == OpKind::Add) {
                self.ops.push(DeviceOp::new(
                    folder,
                    secret,
                    OpKind::Add,
                    &id,
                    p.name.clone(),
                    if p.read_only {
                        Role::ReadOnly
                    } else {
                        Role::Member
                    },
                    p.addresses.clone(),
                ));
                signed = true;
            }
        }
        signed
    }
}

/// Starts a new seal epoch (`sovryn_store::epochs`) when `list` revokes a
/// device later than the newest epoch began: chunks sealed from then on
/// are out of the revoked device's reach, even though it holds the folder
/// key. Whether it started one.
pub fn rotate_after_revocation(store: &mut sovryn_store::Store, list: &DeviceList) -> Result<bool> {
    let Some(revoked_at) = list
        .ops
        .iter()
        .filter(|o| o.kind == OpKind::Revoke)
        .map(|o| o.at_ms)
        .max()
    else {
        return Ok(false);
    };
    let newest = store.codec().epochs().last().map(|e| e.created_ms);
    if newest.is_some_and(|t| t >= revoked_at) {
        return Ok(false);
    }
    // Not before the revocation (a signer's clock ahead of ours would
    // otherwise make every merge rotate again), but never so far ahead
    // that members refuse the epoch.
    let now_ms = (sovryn_store::now_ns() / 1_000_000).max(0) as u64;
    let floor = revoked_at.min(now_ms + sovryn_store::epochs::MAX_CLOCK_AHEAD_MS / 2);
    store.rotate_seal_key(floor)?;
    Ok(true)
}

/// Who a node trusts to sign device operations without any: itself and
/// the peers its user configured with full rights (a read-only peer, or
/// one limited to some paths, may not add devices that would get more
/// than it has; one the list brought is trusted through the list).
pub fn signing_roots(me: &PublicKey, peers: &[PeerConfig]) -> HashSet<String> {
    let mut roots: HashSet<String> = peers
        .iter()
        .filter(|p| !p.read_only && p.paths.is_empty() && !p.via_list)
        .map(|p| p.id.clone())
        .collect();
    roots.insert(me.to_string());
    roots
}

/// Brings a folder's configured peers in line with its device list:
/// revoked devices are removed, whoever added them; members missing from
/// the config are added (marked as the list's, with what their add says);
/// peers the list brought follow its newest add, and go when it no longer
/// lists them. Returns whether the config changed.
pub fn apply_to_config(home: &Home, me: &PublicKey, list: &DeviceList) -> Result<bool> {
    Config::update(home, |c| {
        let members = list.members(&signing_roots(me, &c.peers));
        let me = me.to_string();
        let before = c.peers.clone();
        c.peers.retain(|p| {
            !members.revoked.contains(&p.id) && (!p.via_list || members.added.contains_key(&p.id))
        });
        for (id, op) in &members.added {
            if *id == me {
                continue;
            }
            let listed = PeerConfig {
                id: id.clone(),
                addresses: op.addresses.clone(),
                name: op.name.clone(),
                read_only: op.read_only,
                paths: Vec::new(),
                via_list: true,
            };
            match c.peers.iter_mut().find(|p| &p.id == id) {
                Some(p) if p.via_list => *p = listed,
                Some(_) => {}
                None => c.peers.push(listed),
            }
        }
        Ok(c.peers != before)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::generate()
    }

    fn add(f: &str, by: &SecretKey, who: &SecretKey) -> DeviceOp {
        DeviceOp::new(
            f,
            by,
            OpKind::Add,
            &who.public(),
            None,
            Role::Member,
            vec![],
        )
    }

    fn revoke(f: &str, by: &SecretKey, who: &SecretKey) -> DeviceOp {
        DeviceOp::new(
            f,
            by,
            OpKind::Revoke,
            &who.public(),
            None,
            Role::Member,
            vec![],
        )
    }

    fn roots(keys: &[&SecretKey]) -> HashSet<String> {
        keys.iter().map(|k| k.public().to_string()).collect()
    }

    fn has(m: &Members, k: &SecretKey) -> bool {
        m.added.contains_key(&k.public().to_string())
    }

    #[test]
    fn trust_grows_from_the_roots_and_a_revocation_wins_for_good() {
        let (a, b, d, x) = (key(), key(), key(), key());
        let f = "folder";
        let roots = roots(&[&a]);
        let mut list = DeviceList::default();
        // A adds D; D adds X; someone nobody trusts adds itself (not kept).
        assert_eq!(
            list.merge(
                f,
                &roots,
                vec![add(f, &a, &d), add(f, &d, &x), add(f, &b, &b)]
            ),
            2
        );
        let m = list.members(&roots);
        assert!(has(&m, &d) && has(&m, &x) && !has(&m, &b));
        // A revokes D: D is out, and so is what only D vouched for.
        list.merge(f, &roots, vec![revoke(f, &a, &d)]);
        let m = list.members(&roots);
        assert!(!has(&m, &d) && !has(&m, &x));
        assert!(m.revoked.contains(&d.public().to_string()));
        // A later add of D does not bring it back.
        list.merge(f, &roots, vec![add(f, &a, &d)]);
        assert!(!has(&list.members(&roots), &d));
    }

    #[test]
    fn a_revoked_device_revokes_nobody_and_no_root_falls_to_a_non_root() {
        let (a, b, d, x) = (key(), key(), key(), key());
        let f = "folder";
        let roots = roots(&[&a, &b]);
        let mut list = DeviceList::default();
        list.merge(f, &roots, vec![add(f, &a, &d), add(f, &d, &x)]);
        // D (a member through the list, not a root) tries to revoke root B.
        list.ops.push(revoke(f, &d, &b));
        assert!(!list
            .members(&roots)
            .revoked
            .contains(&b.public().to_string()));
        // D is revoked; its revocation of X made afterwards counts for nothing,
        // and X goes only because D alone vouched for it.
        list.merge(f, &roots, vec![revoke(f, &b, &d)]);
        let late = revoke(f, &d, &a);
        assert_eq!(
            list.merge(f, &roots, vec![late]),
            0,
            "a revoked signer's op is not kept"
        );
        let m = list.members(&roots);
        assert!(!m.revoked.contains(&a.public().to_string()));
        assert!(!has(&m, &x));
    }

    #[test]
    fn a_later_read_only_add_takes_signing_back() {
        let (a, r, x) = (key(), key(), key());
        let f = "folder";
        let roots = roots(&[&a]);
        let mut list = DeviceList::default();
        list.merge(f, &roots, vec![add(f, &a, &r)]);
        // The same signer's add of R, later and read-only.
        let mut ro = DeviceOp::new(
            f,
            &a,
            OpKind::Add,
            &r.public(),
            None,
            Role::ReadOnly,
            vec![],
        );
        ro.at_ms = list.ops[0].at_ms + 1;
        ro.sig = hex::encode(a.sign(&ro.signed_bytes(f)).to_bytes());
        list.merge(f, &roots, vec![ro]);
        // R's add of X: R may no longer sign, so it is not even kept.
        assert_eq!(list.merge(f, &roots, vec![add(f, &r, &x)]), 0);
        let m = list.members(&roots);
        assert!(has(&m, &r) && m.added[&r.public().to_string()].read_only);
        assert!(!has(&m, &x));
    }

    #[test]
    fn a_read_only_device_cannot_add_devices() {
        let (a, r, x) = (key(), key(), key());
        let f = "folder";
        let peers = vec![PeerConfig {
            id: r.public().to_string(),
            read_only: true,
            ..Default::default()
        }];
        let roots = signing_roots(&a.public(), &peers);
        let mut list = DeviceList::default();
        assert_eq!(list.merge(f, &roots, vec![add(f, &r, &x)]), 0);
        // Nor can a device added read-only by a member.
        let (y, z) = (key(), key());
        list.merge(
            f,
            &roots,
            vec![
                DeviceOp::new(
                    f,
                    &a,
                    OpKind::Add,
                    &y.public(),
                    None,
                    Role::ReadOnly,
                    vec![],
                ),
                add(f, &y, &z),
            ],
        );
        let m = list.members(&roots);
        assert!(has(&m, &y) && !has(&m, &z));
    }

    #[test]
    fn a_backup_node_is_listed_but_neither_a_member_nor_a_signer() {
        let (a, k, x) = (key(), key(), key());
        let f = "folder";
        let roots = roots(&[&a]);
        let backup = DeviceOp::new(f, &a, OpKind::Add, &k.public(), None, Role::Backup, vec![]);
        assert!(backup.check(f).is_ok());
        let mut list = DeviceList::default();
        assert_eq!(list.merge(f, &roots, vec![backup.clone()]), 1);
        // What the backup node signs is not kept.
        assert_eq!(list.merge(f, &roots, vec![add(f, &k, &x)]), 0);
        let m = list.members(&roots);
        assert!(!has(&m, &k) && m.backups.contains_key(&k.public().to_string()));
        assert!(!m.signers.contains(&k.public().to_string()));
        // The role is signed: dropping it breaks the signature.
        let mut member = backup;
        member.backup = false;
        assert!(member.check(f).is_err());
        list.merge(f, &roots, vec![revoke(f, &a, &k)]);
        assert!(list.members(&roots).backups.is_empty());
    }

    #[test]
    fn forged_foreign_and_repeated_operations_are_refused() {
        let (a, d) = (key(), key());
        let roots = roots(&[&a]);
        let mut op = add("folder", &a, &d);
        assert!(op.check("folder").is_ok());
        assert!(op.check("another folder").is_err());
        let mut list = DeviceList::default();
        assert_eq!(list.merge("folder", &roots, vec![op.clone()]), 1);
        // The same signature in capitals is the same operation.
        let mut upper = op.clone();
        upper.sig = upper.sig.to_uppercase();
        assert_eq!(list.merge("folder", &roots, vec![upper]), 0);
        op.read_only = true;
        assert!(op.check("folder").is_err());
        assert_eq!(list.merge("folder", &roots, vec![op]), 0);
    }

    #[test]
    fn a_member_vouches_once_for_each_peer_its_user_configured() {
        let (a, d, l) = (key(), key(), key());
        let peer = PeerConfig {
            id: d.public().to_string(),
            addresses: vec!["127.0.0.1:7000".into()],
            ..Default::default()
        };
        let from_list = PeerConfig {
            id: l.public().to_string(),
            via_list: true,
            ..Default::default()
        };
        let mut list = DeviceList::default();
        assert!(list.vouch("f", &a, &[peer.clone(), from_list.clone()]));
        assert!(!list.vouch("f", &a, std::slice::from_ref(&peer)));
        let ro = PeerConfig {
            read_only: true,
            ..peer
        };
        assert!(list.vouch("f", &a, &[ro]));
        assert_eq!(list.ops.len(), 2, "no vouch for a peer the list brought");
    }
}
