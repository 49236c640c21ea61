//! A folder's signed device list: who belongs to the folder, as operations
//! ("add this device", "revoke this device") each signed by the member who
//! made it, kept in `devices.json` of the folder's home and gossiped to
//! every member (`Msg::Devices`).
//!
//! Trust grows from what this node trusts already: its configured peers
//! and itself. An operation counts when its signer is trusted, and a
//! device added by a counted operation is trusted in turn. A revocation
//! wins for good: a revoked device is never a member again, whoever adds
//! it later, and what it vouched for counts no more unless another member
//! vouched for it too. Members vouch for their configured peers
//! automatically, so a device that joins through one member learns the
//! others.

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
    addresses: &'a [String],
    by: &'a str,
    at_ms: u64,
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
        read_only: bool,
        addresses: Vec<String>,
    ) -> DeviceOp {
        let mut op = DeviceOp {
            kind,
            device: device.to_string(),
            name,
            read_only,
            addresses,
            by: secret.public().to_string(),
            at_ms: crate::node::now_ms(),
            sig: String::new(),
        };
        op.sig = hex::encode(secret.sign(&op.signed_bytes(folder)).to_bytes());
        op
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
    /// Devices added and not revoked, with the newest add of each.
    pub added: BTreeMap<String, DeviceOp>,
    /// Devices revoked.
    pub revoked: BTreeSet<String>,
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

    /// Who is a member, given who this node trusts to sign without
    /// operations (`roots`: see [`signing_roots`]). Only operations whose
    /// signer is trusted count, and only a device added with full rights
    /// (not read-only) may sign in turn.
    pub fn members(&self, folder: &str, roots: &HashSet<String>) -> Members {
        let checked: Vec<&DeviceOp> = self
            .ops
            .iter()
            .filter(|o| o.check(folder).is_ok())
            .collect();
        // Who is trusted, revocations aside: grows to a fixpoint.
        let mut trusted: HashSet<String> = roots.clone();
        loop {
            let before = trusted.len();
            for o in &checked {
                if o.kind == OpKind::Add && !o.read_only && trusted.contains(&o.by) {
                    trusted.insert(o.device.clone());
                }
            }
            if trusted.len() == before {
                break;
            }
        }
        let revoked: BTreeSet<String> = checked
            .iter()
            .filter(|o| o.kind == OpKind::Revoke && trusted.contains(&o.by))
            .map(|o| o.device.clone())
            .collect();
        let mut added: BTreeMap<String, DeviceOp> = BTreeMap::new();
        for o in &checked {
            if o.kind == OpKind::Add
                && trusted.contains(&o.by)
                && !revoked.contains(&o.by)
                && !revoked.contains(&o.device)
            {
                let newer = added.get(&o.device).is_none_or(|p| p.at_ms <= o.at_ms);
                if newer {
                    added.insert(o.device.clone(), (*o).clone());
                }
            }
        }
        Members { added, revoked }
    }

    /// Takes the operations of `incoming` this list lacks and whose
    /// signature checks; returns how many were new.
    pub fn merge(&mut self, folder: &str, incoming: Vec<DeviceOp>) -> usize {
        let have: HashSet<String> = self.ops.iter().map(|o| o.sig.clone()).collect();
        let mut new = 0;
        for o in incoming {
            if self.ops.len() >= MAX_OPS {
                break;
            }
            if !have.contains(&o.sig) && o.check(folder).is_ok() {
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
            // A peer limited to some paths is this node's own arrangement:
            // other members would give it the whole folder.
            if !p.paths.is_empty() {
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
                    p.read_only,
                    p.addresses.clone(),
                ));
                signed = true;
            }
        }
        signed
    }
}

/// Who a node trusts to sign device operations without any: itself and
/// its configured peers with full rights (a read-only peer, or one limited
/// to some paths, may not add devices that would get more than it has).
pub fn signing_roots(me: &PublicKey, peers: &[PeerConfig]) -> HashSet<String> {
    let mut roots: HashSet<String> = peers
        .iter()
        .filter(|p| !p.read_only && p.paths.is_empty())
        .map(|p| p.id.clone())
        .collect();
    roots.insert(me.to_string());
    roots
}

/// Brings a folder's configured peers in line with its device list:
/// members missing from the config are added (with what their add says),
/// revoked devices are removed. Returns whether the config changed.
pub fn apply_to_config(
    home: &Home,
    folder: &str,
    me: &PublicKey,
    list: &DeviceList,
) -> Result<bool> {
    Config::update(home, |c| {
        let members = list.members(folder, &signing_roots(me, &c.peers));
        let before = c.peers.len();
        c.peers.retain(|p| !members.revoked.contains(&p.id));
        let mut changed = c.peers.len() != before;
        for (id, op) in &members.added {
            if *id == me.to_string() || c.peers.iter().any(|p| &p.id == id) {
                continue;
            }
            c.peers.push(PeerConfig {
                id: id.clone(),
                addresses: op.addresses.clone(),
                name: op.name.clone(),
                read_only: op.read_only,
                paths: Vec::new(),
            });
            changed = true;
        }
        Ok(changed)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::generate()
    }

    fn add(f: &str, by: &SecretKey, who: &SecretKey) -> DeviceOp {
        DeviceOp::new(f, by, OpKind::Add, &who.public(), None, false, vec![])
    }

    #[test]
    fn trust_grows_from_the_roots_and_a_revocation_wins_for_good() {
        let (a, b, d, x) = (key(), key(), key(), key());
        let f = "folder";
        let roots: HashSet<String> = [a.public().to_string()].into();
        let mut list = DeviceList::default();
        // A adds D; D adds X; someone nobody trusts adds itself.
        assert_eq!(
            list.merge(f, vec![add(f, &a, &d), add(f, &d, &x), add(f, &b, &b)]),
            3
        );
        let m = list.members(f, &roots);
        assert!(m.added.contains_key(&d.public().to_string()));
        assert!(m.added.contains_key(&x.public().to_string()));
        assert!(!m.added.contains_key(&b.public().to_string()));
        // A revokes D: D is out, and so is what only D vouched for.
        list.merge(
            f,
            vec![DeviceOp::new(
                f,
                &a,
                OpKind::Revoke,
                &d.public(),
                None,
                false,
                vec![],
            )],
        );
        let m = list.members(f, &roots);
        assert!(!m.added.contains_key(&d.public().to_string()));
        assert!(!m.added.contains_key(&x.public().to_string()));
        assert!(m.revoked.contains(&d.public().to_string()));
        // A later add of D (through a third member) does not bring it back.
        list.merge(f, vec![add(f, &a, &d)]);
        assert!(!list
            .members(f, &roots)
            .added
            .contains_key(&d.public().to_string()));
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
        list.merge(f, vec![add(f, &r, &x)]);
        assert!(list.members(f, &roots).added.is_empty());
        // Nor can a device added read-only by a member.
        let (y, z) = (key(), key());
        list.merge(
            f,
            vec![
                DeviceOp::new(f, &a, OpKind::Add, &y.public(), None, true, vec![]),
                add(f, &y, &z),
            ],
        );
        let m = list.members(f, &roots);
        assert!(m.added.contains_key(&y.public().to_string()));
        assert!(!m.added.contains_key(&z.public().to_string()));
    }

    #[test]
    fn forged_or_foreign_operations_are_refused() {
        let (a, d) = (key(), key());
        let mut op = add("folder", &a, &d);
        assert!(op.check("folder").is_ok());
        assert!(op.check("another folder").is_err());
        op.read_only = true;
        assert!(op.check("folder").is_err());
        let mut list = DeviceList::default();
        assert_eq!(list.merge("folder", vec![op]), 0);
    }

    #[test]
    fn a_member_vouches_once_for_each_configured_peer() {
        let (a, d) = (key(), key());
        let peer = PeerConfig {
            id: d.public().to_string(),
            addresses: vec!["127.0.0.1:7000".into()],
            ..Default::default()
        };
        let mut list = DeviceList::default();
        assert!(list.vouch("f", &a, std::slice::from_ref(&peer)));
        assert!(!list.vouch("f", &a, std::slice::from_ref(&peer)));
        let ro = PeerConfig {
            read_only: true,
            ..peer
        };
        assert!(list.vouch("f", &a, &[ro]));
        assert_eq!(list.ops.len(), 2);
    }
}
