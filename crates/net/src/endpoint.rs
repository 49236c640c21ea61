//! The iroh endpoint: binding, discovery (mDNS, DHT, relay), dialing
//! peers with backoff, and the allowlist and limits of a running node.

use super::*;

/// How a node finds its peers and is found by them, beyond the addresses
/// configured with `sovryn peers add --address` (from the `sync` section of
/// `config.toml`; fixed when the endpoint binds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Discovery {
    /// mDNS on the local network (`sync.mdns`; off when listening on loopback).
    pub mdns: bool,
    /// The BitTorrent mainline DHT (`sync.dht`).
    pub dht: bool,
    /// The relay server (`sync.relay_url`), which every peer is assumed to use too.
    #[serde(serialize_with = "ser_relay")]
    pub relay: Option<RelayUrl>,
}

fn ser_relay<S: serde::Serializer>(r: &Option<RelayUrl>, s: S) -> Result<S::Ok, S::Error> {
    match r {
        Some(u) => s.serialize_some(&u.to_string()),
        None => s.serialize_none(),
    }
}

impl Discovery {
    /// The discovery a node listening on `listen` runs with `sync`. mDNS is
    /// left off on a loopback `listen` address: it would announce addresses
    /// no other machine can reach (and test nodes on 127.0.0.1 stay silent).
    pub fn from_config(sync: &SyncConfig, listen: SocketAddr) -> Result<Self, Error> {
        let relay = match sync.relay() {
            Some(u) => Some(u.parse::<RelayUrl>().map_err(|e| {
                Error::Endpoint(format!("sync.relay_url '{u}' is not a valid URL: {e}"))
            })?),
            None => None,
        };
        Ok(Discovery {
            mdns: sync.mdns && !listen.ip().is_loopback(),
            dht: sync.dht,
            relay,
        })
    }

    /// Whether a peer configured without addresses can still be dialed:
    /// by an address lookup, or through the shared relay.
    pub fn finds_peers(&self) -> bool {
        self.mdns || self.dht || self.relay.is_some()
    }
}

/// The mDNS service name Sovryn nodes announce (`_sovryn._udp.local`), so
/// they only see each other, not every iroh application on the network.
const MDNS_SERVICE: &str = "sovryn";

/// What the folders served on one endpoint share.
struct OnEndpoint {
    endpoint: Endpoint,
    owner: bool,
    gate: Gate,
    routes: Arc<RwLock<HashMap<Vec<u8>, std::sync::Weak<SyncNet>>>>,
    discovery: Discovery,
}

/// Adds the address lookups `discovery` asks for to a bound endpoint. One
/// that cannot start (e.g. no multicast-capable interface) is logged and
/// left out; the node still runs with its configured addresses.
fn add_address_lookups(endpoint: &Endpoint, discovery: &mut Discovery) -> Result<(), Error> {
    let services = endpoint
        .address_lookup()
        .map_err(|e| Error::Endpoint(format!("the endpoint's address lookup: {e}")))?;
    if discovery.mdns {
        match MdnsAddressLookup::builder()
            .service_name(MDNS_SERVICE)
            .build(endpoint.id())
        {
            Ok(mdns) => {
                services.add(mdns);
                tracing::info!("LAN discovery (mDNS) on");
            }
            Err(e) => {
                tracing::warn!("LAN discovery (mDNS) could not start: {e}");
                discovery.mdns = false;
            }
        }
    }
    if discovery.dht {
        // With a relay, only the relay URL is published (the node's IP
        // addresses stay out of the public DHT); without one, the direct
        // addresses are, or the record would be empty.
        let filter = if discovery.relay.is_some() {
            AddrFilter::relay_only()
        } else {
            AddrFilter::unfiltered()
        };
        match DhtAddressLookup::builder()
            .secret_key(endpoint.secret_key().clone())
            .addr_filter(filter)
            .build()
        {
            Ok(dht) => {
                services.add(dht);
                tracing::info!("DHT discovery (mainline) on");
            }
            Err(e) => {
                tracing::warn!("DHT discovery could not start: {e}");
                discovery.dht = false;
            }
        }
    }
    Ok(())
}

impl SyncNet {
    /// Binds the endpoint on `listen` with the node's key. Peers are reached
    /// at their configured addresses, and, as the node's `sync` config says
    /// ([`Discovery`]), found by mDNS on the LAN (on by default), the
    /// mainline DHT (off by default) and through a relay (none by default).
    pub async fn bind(
        shared: Shared,
        listen: SocketAddr,
        peers: &[PeerConfig],
    ) -> Result<Arc<Self>, Error> {
        let (secret, sync): (SecretKey, SyncConfig) = {
            let n = shared
                .node
                .lock()
                .map_err(|_| Error::Internal("node lock poisoned".into()))?;
            (n.secret.clone(), n.config.sync.clone())
        };
        let mut discovery = Discovery::from_config(&sync, listen)?;
        if sync.mdns && !discovery.mdns {
            tracing::info!("LAN discovery (mDNS) off: listening on loopback {listen}");
        }
        let relay_mode = match &discovery.relay {
            Some(url) => RelayMode::custom([url.clone()]),
            None => RelayMode::Disabled,
        };
        let gate = Gate::default();
        // The folders' ALPNs are offered as they are routed (`route`).
        // MTU discovery up to the largest payload the peer accepts (iroh
        // 1.4 keeps noq's 1,472-byte maximum UDP payload; GSO batches them).
        // Flow control: the chunk fetch keeps 32 streams of 1.25 MB window
        // in flight, which the default 10 MB send window would cap; the
        // connection's receive window bounds what a peer can make this node
        // buffer across all its streams (unbounded by default).
        let mut mtu = iroh::endpoint::MtuDiscoveryConfig::default();
        mtu.upper_bound(u16::MAX);
        let transport = iroh::endpoint::QuicTransportConfig::builder()
            .mtu_discovery_config(Some(mtu))
            .receive_window(iroh::endpoint::VarInt::from_u32(64 << 20))
            .send_window(64 << 20)
            .build();
        let endpoint = Endpoint::builder(presets::Minimal)
            .transport_config(transport)
            .secret_key(secret)
            .alpns(Vec::new())
            .relay_mode(relay_mode)
            .hooks(gate.clone())
            .clear_ip_transports()
            .bind_addr(listen)
            .map_err(|e| Error::Endpoint(format!("bad listen address {listen}: {e}")))?
            .bind()
            .await
            .map_err(|e| Error::Endpoint(format!("binding the sync endpoint on {listen}: {e}")))?;
        add_address_lookups(&endpoint, &mut discovery)?;
        if let Some(url) = &discovery.relay {
            tracing::info!("relay {url}");
        }
        Self::serve_folder(
            OnEndpoint {
                endpoint,
                owner: true,
                gate,
                routes: Default::default(),
                discovery,
            },
            shared,
            peers,
        )
    }

    /// Serves another folder of this node (`shared`, with its `peers`) on
    /// this service's endpoint: its own ALPN, allowlist, sessions and
    /// limits; the same node id, addresses and discovery.
    pub async fn attach(
        self: &Arc<Self>,
        shared: Shared,
        peers: &[PeerConfig],
    ) -> Result<Arc<Self>, Error> {
        Self::serve_folder(
            OnEndpoint {
                endpoint: self.endpoint.clone(),
                owner: false,
                gate: self.gate.clone(),
                routes: self.routes.clone(),
                discovery: self.discovery.clone(),
            },
            shared,
            peers,
        )
    }

    /// The service of `shared`'s folder on an endpoint: registered with the
    /// endpoint's hook and routes.
    fn serve_folder(
        on: OnEndpoint,
        shared: Shared,
        peers: &[PeerConfig],
    ) -> Result<Arc<Self>, Error> {
        let (folder_id, name, short_id) = {
            let n = shared
                .node
                .lock()
                .map_err(|_| Error::Internal("node lock poisoned".into()))?;
            (
                n.store.folder_id().to_owned(),
                n.config.node_name.clone(),
                n.short_id.clone(),
            )
        };
        let alpn = wire::alpn(&folder_id);
        let served = on.routes.read().ok().and_then(|r| r.get(&alpn)?.upgrade());
        if served.is_some() {
            return Err(Error::Endpoint(format!(
                "folder {folder_id} is already served on this endpoint"
            )));
        }
        let allow = Allowlist::default();
        allow.replace(peer_map(peers));
        on.gate.add(alpn.clone(), allow.clone());
        let net = Arc::new(SyncNet {
            endpoint: on.endpoint,
            alpn,
            owner: on.owner,
            gate: on.gate,
            routes: on.routes,
            shared,
            allow,
            state: Mutex::new(HashMap::new()),
            folder_id,
            name,
            short_id,
            limits: RwLock::new(Limits::default()),
            discovery: on.discovery,
            dialer: Mutex::new(None),
            receiving: Mutex::new(HashMap::new()),
            devices_changed: watch::channel(0).0,
            config_hook: std::sync::OnceLock::new(),
        });
        net.route(&net);
        Ok(net)
    }

    /// Registers `net` as the service of its ALPN, and offers every served
    /// ALPN in TLS.
    fn route(&self, net: &Arc<SyncNet>) {
        let alpns = match self.routes.write() {
            Ok(mut r) => {
                r.insert(net.alpn.clone(), Arc::downgrade(net));
                with_join(r.keys())
            }
            Err(_) => return,
        };
        self.endpoint.set_alpns(alpns);
    }

    /// The service of the folder an ALPN names, if it is served here.
    fn route_of(&self, alpn: &[u8]) -> Option<Arc<SyncNet>> {
        self.routes.read().ok()?.get(alpn)?.upgrade()
    }

    /// How this node finds peers (what actually started).
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// Opens a one-time invite to this node for `ttl`, granting `grant`
    /// (kept for the join handler): the code to give out.
    pub fn create_invite(
        &self,
        ttl: std::time::Duration,
        grant: serde_json::Value,
    ) -> Result<crate::invite::InviteCode, crate::invite::InviteError> {
        let relay = self.discovery.relay.as_ref().map(|u| u.to_string());
        self.gate.invites.create(&self.endpoint, relay, ttl, grant)
    }

    /// The node's invites (their outcomes, the join handler).
    pub fn invites(&self) -> &Arc<crate::invite::Invites> {
        &self.gate.invites
    }

    /// Installs what applies `config.toml` after this service wrote it
    /// (the daemon's reload); without one, only the allowlist is updated.
    pub fn on_config_written(&self, hook: ConfigHook) {
        let _ = self.config_hook.set(hook);
    }

    /// The device list or the vault changed on disk: every session sends
    /// them again.
    pub fn shared_state_changed(&self) {
        self.devices_changed.send_modify(|v| *v += 1);
    }

    /// Unknown devices that asked to sync.
    pub fn knocks(&self) -> &Arc<crate::knocks::Knocks> {
        &self.gate.knocks
    }

    /// The homes of the folders served here that these ALPNs name.
    pub async fn folder_homes(
        &self,
        alpns: &std::collections::BTreeSet<Vec<u8>>,
    ) -> Vec<sovryn_engine::Home> {
        let mut out = Vec::new();
        for alpn in alpns {
            if let Some(net) = self.route_of(alpn) {
                if let Ok(home) = net.shared.with_node(|n| Ok(n.home.clone())).await {
                    out.push(home);
                }
            }
        }
        out
    }

    /// This endpoint's id (the node id).
    pub fn id(&self) -> EndpointId {
        self.endpoint.id()
    }

    /// The sockets actually bound.
    pub fn bound_sockets(&self) -> Vec<SocketAddr> {
        self.endpoint.bound_sockets()
    }

    /// Replaces the allowlist. Sessions with peers no longer in it are
    /// closed, and so are sessions with peers whose rights (read-only, path
    /// scope) changed: every decision of a session reads the allowlist, and
    /// the peer reconnects at once under its new rights.
    pub fn set_peers(&self, peers: &[PeerConfig]) {
        // Sessions send the device list again (vouching for new peers).
        self.devices_changed.send_modify(|v| *v += 1);
        let map = peer_map(peers);
        // The new rights are in force before any session is told.
        let old = self.allow.all();
        self.allow.replace(map.clone());
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (id, s) in st.iter_mut() {
            let before = old.iter().find(|(o, _)| o == id).map(|(_, c)| c);
            let reason: Option<(u32, &[u8])> = match (map.get(id), before) {
                (None, _) if self.allow.is_paused_for(id) => {
                    Some((allowlist::PAUSED_CODE, b"paused"))
                }
                (None, _) => Some((403, b"peer removed")),
                (Some(now), Some(b)) if now.read_only != b.read_only || now.paths != b.paths => {
                    Some((3, b"rights changed"))
                }
                _ => None,
            };
            if let Some((code, why)) = reason {
                for (c, _) in s.conns.drain(..) {
                    c.close(code.into(), why);
                }
                s.next_dial = None;
                s.dialing = false;
            }
        }
        st.retain(|id, _| map.contains_key(id));
    }

    /// Pauses sync: every session closes and the configured `peers` are
    /// refused with "paused" (so they can say so) until [`SyncNet::resume`].
    pub fn pause(&self, peers: &[PeerConfig]) {
        self.allow.set_paused(peer_map(peers));
        self.set_peers(&[]);
    }

    /// Resumes sync with `peers`.
    pub fn resume(&self, peers: &[PeerConfig]) {
        self.allow.set_paused(Default::default());
        self.set_peers(peers);
    }

    /// Sets the bandwidth limits in KiB/s (0: unlimited), for every peer together.
    pub fn set_bandwidth(&self, send_kib_per_sec: u64, recv_kib_per_sec: u64) {
        if let Ok(mut l) = self.limits.write() {
            *l = Limits {
                send: bucket(send_kib_per_sec),
                recv: bucket(recv_kib_per_sec),
            };
        }
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits.read().map(|l| l.clone()).unwrap_or_default()
    }

    /// Dials this folder's peers; the endpoint's owner also accepts the
    /// connections of every folder served on it and hands each to its
    /// folder's service. Runs until the endpoint closes.
    pub async fn run(self: Arc<Self>) {
        let dialer = tokio::spawn(self.clone().dial_loop());
        // Dropping this future (the folder stops) stops the dialing too.
        struct AbortOnDrop(tokio::task::AbortHandle);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let _dialing = AbortOnDrop(dialer.abort_handle());
        *self.dialer.lock().unwrap_or_else(|e| e.into_inner()) = Some(dialer.abort_handle());
        if !self.owner {
            let _ = dialer.await;
            return;
        }
        while let Some(incoming) = self.endpoint.accept().await {
            let me = self.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) if conn.alpn() == crate::invite::JOIN_ALPN => {
                        crate::invite::serve(me.gate.invites.clone(), me.id(), conn).await
                    }
                    Ok(conn) if conn.alpn() == crate::recovery::VAULT_ALPN => {
                        match me.shared.with_node(|n| Ok(n.home.clone())).await {
                            Ok(home) => {
                                crate::recovery::serve(conn, home, &me.gate.vault_fetches).await
                            }
                            Err(_) => conn.close(500u32.into(), b"no node"),
                        }
                    }
                    Ok(conn) => match me.route_of(conn.alpn()) {
                        Some(folder) => folder.run_session(conn, false).await,
                        None => conn.close(404u32.into(), b"no such folder"),
                    },
                    Err(e) => tracing::info!("incoming connection failed: {e}"),
                }
            });
        }
        dialer.abort();
    }

    /// Closes this folder's connections; the owner closes the endpoint.
    pub async fn shutdown(&self) {
        if let Some(d) = self.dialer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            d.abort();
        }
        if self.owner {
            self.endpoint.close().await;
            return;
        }
        // Nobody is admitted or dialed for this folder any more.
        self.allow.replace(Default::default());
        self.gate.remove(&self.alpn);
        let alpns = match self.routes.write() {
            Ok(mut r) => {
                r.remove(&self.alpn);
                with_join(r.keys())
            }
            Err(_) => Vec::new(),
        };
        self.endpoint.set_alpns(alpns);
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for s in st.values() {
            for (c, _) in &s.conns {
                c.close(0u32.into(), b"folder stopped");
            }
        }
    }

    async fn dial_loop(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            let due: Vec<(EndpointId, PeerConfig)> = {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                self.allow
                    .all()
                    .into_iter()
                    .filter(|(id, cfg)| {
                        if cfg.addresses.is_empty() && !self.discovery.finds_peers() {
                            return false;
                        }
                        let s = st.entry(*id).or_default();
                        if s.dialing
                            || s.status.connected > 0
                            || s.next_dial.is_some_and(|t| t > now)
                        {
                            return false;
                        }
                        s.dialing = true;
                        true
                    })
                    .collect()
            };
            for (id, cfg) in due {
                let me = self.clone();
                tokio::spawn(async move {
                    let res = me.dial(id, &cfg).await;
                    let conn = {
                        let mut st = me.state.lock().unwrap_or_else(|e| e.into_inner());
                        let s = st.entry(id).or_default();
                        match res {
                            Ok(conn) => {
                                s.backoff = Duration::ZERO;
                                s.next_dial = None;
                                Some(conn)
                            }
                            Err(e) => {
                                tracing::info!("dialing {}: {e:#}", id.fmt_short());
                                s.dialing = false;
                                record_error(&mut s.status, &e);
                                s.backoff = (s.backoff * 2)
                                    .clamp(Duration::from_millis(500), Duration::from_secs(30));
                                s.next_dial = Some(Instant::now() + s.backoff);
                                None
                            }
                        }
                    };
                    if let Some(conn) = conn {
                        me.run_session(conn, true).await;
                    }
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub(crate) async fn dial(&self, id: EndpointId, cfg: &PeerConfig) -> Result<Connection> {
        let mut addr = EndpointAddr::new(id);
        for a in &cfg.addresses {
            match tokio::net::lookup_host(a.as_str()).await {
                Ok(it) => {
                    for sa in it {
                        addr = addr.with_ip_addr(sa);
                    }
                }
                Err(e) => tracing::warn!("peer address {a}: {e}"),
            }
        }
        // Peers of a mesh with a relay share it; without addresses, the
        // address lookups (mDNS, DHT) resolve the id.
        if let Some(url) = &self.discovery.relay {
            addr = addr.with_relay_url(url.clone());
        }
        let conn = tokio::time::timeout(
            Duration::from_secs(15),
            self.endpoint.connect(addr, &self.alpn),
        )
        .await
        .context("timed out")??;
        Ok(conn)
    }
}

/// The ALPNs to offer: the folders' and the join protocol (refused by the
/// gate unless an invite is open).
fn with_join<'a>(folders: impl Iterator<Item = &'a Vec<u8>>) -> Vec<Vec<u8>> {
    folders
        .cloned()
        .chain([
            crate::invite::JOIN_ALPN.to_vec(),
            crate::recovery::VAULT_ALPN.to_vec(),
        ])
        .collect()
}
