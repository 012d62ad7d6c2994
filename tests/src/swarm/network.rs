//! The swarm's network: a hub namespace holding a bridge, a veth from it into each node's own
//! namespace and one to the host, on a private /24 of 198.18.0.0/16 (in the range set aside
//! for network tests, so no real network is shadowed). Everything is made with `ip`.
//!
//! The bridge is in a namespace of its own rather than the host's because the host's bridged
//! traffic goes through the host's iptables (`br_netfilter`), whose FORWARD policy Docker sets
//! to DROP: in the hub only the hub's empty tables apply, and the host's rules are never
//! touched. Deleting the namespaces deletes the bridge and every veth with them.

use std::net::Ipv4Addr;
use std::process::Stdio;

use super::host::tool;
use super::tag::Tag;

/// The bridge in the hub namespace.
const BRIDGE: &str = "br0";
/// The hub's end of the veth to the host.
const HUB_HOST_PORT: &str = "host";
/// Each node's end of its veth, in its own namespace.
pub(super) const NODE_LINK: &str = "eth0";

/// One swarm's /24: `198.18.<third>.0/24`, the host at `.1`, node `i` at `.(10 + i)`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Subnet {
    third: u8,
}

impl Subnet {
    pub(super) fn host(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.third, 1)
    }

    pub(super) fn node(self, index: usize) -> Ipv4Addr {
        let last = u8::try_from(10 + index).expect("at most 245 nodes");
        Ipv4Addr::new(198, 18, self.third, last)
    }
}

/// The hub's port for node `index`.
pub(super) fn hub_port(index: usize) -> String {
    format!("node-{index}")
}

/// `ip ARGS`, its failure as an error that says what failed and why.
pub(super) fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(tool("ip"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A /24 of 198.18.0.0/16 that no address or route of the host's is in. The caller holds
/// [`super::tag::lock`] until the host's link has its address, so two swarms never pick the
/// same one.
pub(super) fn free_subnet() -> Result<Subnet, String> {
    let mut used = String::new();
    for what in [["-4", "-o", "addr", "show"], ["-4", "-o", "route", "show"]] {
        let out = std::process::Command::new(tool("ip"))
            .args(what)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        used.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    (0..=u8::MAX)
        .map(|third| Subnet { third })
        .find(|s| !used.contains(&format!("198.18.{}.", s.third)))
        .ok_or_else(|| "every /24 of 198.18.0.0/16 is in use on this host".to_owned())
}

/// The hub namespace with its bridge, and the host's veth into it with the host's address.
pub(super) fn create_hub(tag: &Tag, subnet: Subnet) -> Result<(), String> {
    let hub = tag.hub_netns();
    let host_link = tag.host_link();
    let host_address = format!("{}/24", subnet.host());
    ip(&["netns", "add", &hub])?;
    ip(&["-n", &hub, "link", "add", BRIDGE, "type", "bridge"])?;
    ip(&["-n", &hub, "link", "set", BRIDGE, "up"])?;
    ip(&[
        "link",
        "add",
        host_link,
        "type",
        "veth",
        "peer",
        "name",
        HUB_HOST_PORT,
        "netns",
        &hub,
    ])?;
    ip(&[
        "-n",
        &hub,
        "link",
        "set",
        HUB_HOST_PORT,
        "master",
        BRIDGE,
        "up",
    ])?;
    ip(&["addr", "add", &host_address, "dev", host_link])?;
    ip(&["link", "set", host_link, "up"])
}

/// Node `index`'s namespace, with loopback and a veth to the hub holding its address.
pub(super) fn create_node(tag: &Tag, subnet: Subnet, index: usize) -> Result<(), String> {
    let hub = tag.hub_netns();
    let netns = tag.node_netns(index);
    let port = hub_port(index);
    let address = format!("{}/24", subnet.node(index));
    ip(&["netns", "add", &netns])?;
    ip(&[
        "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", NODE_LINK, "netns",
        &netns,
    ])?;
    ip(&["-n", &hub, "link", "set", &port, "master", BRIDGE, "up"])?;
    ip(&["-n", &netns, "addr", "add", &address, "dev", NODE_LINK])?;
    ip(&["-n", &netns, "link", "set", NODE_LINK, "up"])?;
    ip(&["-n", &netns, "link", "set", "lo", "up"])
}

/// Sets the hub's port for node `index` down or up: the node keeps its address and its
/// processes, but nothing reaches it or leaves it, as when its cable is pulled.
pub(super) fn set_port(tag: &Tag, index: usize, up: bool) -> Result<(), String> {
    let state = if up { "up" } else { "down" };
    ip(&[
        "-n",
        &tag.hub_netns(),
        "link",
        "set",
        &hub_port(index),
        state,
    ])
}

/// The names in `/run/netns` (where `ip netns` keeps them).
pub(super) fn netns_names() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The names of the host's links.
pub(super) fn host_links() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}
