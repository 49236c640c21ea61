//! `Discovery` from the `sync` config (no endpoint is bound: nothing is sent).

use std::net::SocketAddr;

use sovryn_engine::config::SyncConfig;
use sovryn_net::Discovery;

#[test]
fn discovery_from_config() {
    let mut sync = SyncConfig::default();
    let any: SocketAddr = "0.0.0.0:7777".parse().unwrap();
    let lo: SocketAddr = "127.0.0.1:7777".parse().unwrap();
    let lo6: SocketAddr = "[::1]:7777".parse().unwrap();
    // Defaults: mDNS only, and not on loopback.
    let d = Discovery::from_config(&sync, any).unwrap();
    assert_eq!((d.mdns, d.dht, d.relay.is_some()), (true, false, false));
    assert!(d.finds_peers());
    for l in [lo, lo6] {
        let d = Discovery::from_config(&sync, l).unwrap();
        assert!(!d.mdns && !d.finds_peers());
    }
    sync.mdns = false;
    sync.dht = true;
    sync.relay_url = " https://relay.example.org ".into();
    let d = Discovery::from_config(&sync, lo).unwrap();
    assert!(d.dht && !d.mdns && d.finds_peers());
    let url = d.relay.clone().unwrap();
    assert_eq!(url.host_str(), Some("relay.example.org"));
    assert_eq!(
        serde_json::to_value(&d).unwrap()["relay"],
        url.to_string().as_str()
    );
    sync.relay_url = "not a url".into();
    let e = Discovery::from_config(&sync, lo).unwrap_err();
    assert!(format!("{e:#}").contains("sync.relay_url"), "{e:#}");
}
