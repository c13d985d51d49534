//! podnet-netlink against the kernel, in network namespaces this test creates and
//! removes: requests, batches, errors and notifications, called from plain threads and
//! from inside a tokio runtime. Needs root (fails, naming it, without).

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use podnet_netlink::{Dad, Netlink, Route, RouteFilter};

fn ip(args: &[&str]) {
    ip_out(args);
}

/// Runs `ip`, asserting it succeeded; returns what it printed.
fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip (iproute2) is needed: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace of this test's own, removed on drop.
struct Ns(String);

impl Ns {
    fn new(what: &str) -> Self {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "podnet-netlink's kernel tests need root (network namespaces)"
        );
        let name = format!("pnnl-{what}-{}", std::process::id());
        ip(&["netns", "add", &name]);
        Self(name)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The veth podnet-cni makes: both ends in one request (the peer straight into the
/// pod's namespace), the host end up on the bridge, one queue each way on both ends
/// (no cut back from one per CPU, which waits for an RCU grace period), and the host
/// end echoed back instead of looked up. A taken name anywhere makes nothing.
#[test]
fn a_veth_is_made_whole_in_one_request_and_echoed() {
    let node = Ns::new("veth");
    let pod = Ns::new("vethpod");
    ip(&["-n", &node.0, "link", "add", "pnvb", "type", "bridge"]);
    let mut nl = Netlink::in_netns(&node.path()).unwrap_or_else(|e| panic!("{e}"));
    let bridge = nl
        .link_by_name("pnvb")
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("the bridge is missing"));
    let pod_ns = std::fs::File::open(pod.path()).unwrap_or_else(|e| panic!("{e}"));
    let echoed = nl
        .add_veth("pnv0", 1400, bridge.index, "eth0", pod_ns.as_fd())
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no echo of the new link (Linux 6.3 and later send one)"));
    let host = nl
        .link_by_name("pnv0")
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("pnv0 is missing"));
    assert_eq!(
        (&echoed.name, echoed.index, &echoed.mac),
        (&host.name, host.index, &host.mac)
    );
    assert_eq!(echoed.mac.len(), 6);
    // The echo names the pod end by its index in the pod's namespace …
    let pod_end = ip_out(&["-n", &pod.0, "-o", "link", "show", "dev", "eth0"]);
    let pod_index = pod_end
        .split(':')
        .next()
        .and_then(|i| i.trim().parse().ok());
    assert_eq!(echoed.peer, pod_index, "{pod_end}");
    // … which a connection there, subscribed while it is down, sees come up from
    // notifications alone, a request in between taking none of them.
    let mut in_pod = Netlink::in_netns(&pod.path()).unwrap_or_else(|e| panic!("{e}"));
    let index = echoed.peer.unwrap_or_default();
    assert!(
        in_pod
            .wait_subscribed_oper_up(index, Duration::from_millis(10))
            .is_err(),
        "waiting without a subscription is refused"
    );
    in_pod.subscribe_links().unwrap_or_else(|e| panic!("{e}"));
    in_pod
        .set_link(index, true, None)
        .unwrap_or_else(|e| panic!("{e}"));
    in_pod
        .add_address(
            index,
            "198.18.7.2".parse().unwrap_or_else(|e| panic!("{e}")),
            24,
            Dad::Skip,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let up = in_pod
        .wait_subscribed_oper_up(index, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        up.oper_up && up.name == "eth0" && up.mac.len() == 6,
        "{up:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "came up after {:?} (a timeout, not a notification)",
        started.elapsed()
    );
    assert!(
        host.up && host.mtu == 1400 && host.master == Some(bridge.index),
        "{host:?}"
    );
    for (ns, dev) in [(&node.0, "pnv0"), (&pod.0, "eth0")] {
        let shown = ip_out(&["-n", ns, "-d", "link", "show", "dev", dev]);
        assert!(
            shown.contains("numtxqueues 1 numrxqueues 1") && shown.contains("mtu 1400"),
            "{dev}: {shown}"
        );
    }
    for (name, peer) in [("pnv1", "eth0"), ("pnv0", "eth1")] {
        let refused = nl.add_veth(name, 1400, bridge.index, peer, pod_ns.as_fd());
        assert!(
            refused.as_ref().is_err_and(|e| e.is_exists()),
            "{name}/{peer}: {refused:?}"
        );
    }
    assert!(
        nl.link_by_name("pnv1")
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none()
    );
    let pod_links = ip_out(&["-n", &pod.0, "-br", "link"]);
    assert!(!pod_links.contains("eth1"), "{pod_links}");
}

#[test]
fn a_link_made_after_subscribing_is_seen_at_once() {
    link_notification_arrives(false);
}

#[test]
fn a_subscription_after_requests_sees_links_too() {
    link_notification_arrives(true);
}

/// Subscribes (after a request when `after_request`: on a second socket), then has
/// `ip` make a veth and waits for its notification.
fn link_notification_arrives(after_request: bool) {
    let ns = Ns::new(if after_request { "notify2" } else { "notify" });
    let path = ns.path();
    let name = ns.0.clone();
    let waited = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let mut nl =
            Netlink::enter_netns_on_this_thread(&file, &path).unwrap_or_else(|e| panic!("{e}"));
        if after_request {
            assert!(
                nl.link_by_name("lo")
                    .unwrap_or_else(|e| panic!("{e}"))
                    .is_some()
            );
        }
        nl.subscribe_links().unwrap_or_else(|e| panic!("{e}"));
        let maker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            ip(&[
                "-n", &name, "link", "add", "pnt0", "type", "veth", "peer", "name", "pnt1",
            ]);
        });
        let started = Instant::now();
        let link = nl
            .wait_link_named("pnt1", Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = maker.join();
        (link.name, started.elapsed())
    })
    .join()
    .unwrap_or_else(|_| panic!("the namespace thread panicked"));
    assert_eq!(waited.0, "pnt1");
    assert!(
        waited.1 < Duration::from_secs(1),
        "the link's notification took {:?} (a timeout, not a notification)",
        waited.1
    );
}

#[test]
fn routes_changed_counts_every_change_before_it_and_overflow_too() {
    let ns = Ns::new("changed");
    ip(&[
        "-n", &ns.0, "link", "add", "pnc0", "type", "veth", "peer", "name", "pnc1",
    ]);
    ip(&["-n", &ns.0, "addr", "add", "198.18.0.1/24", "dev", "pnc0"]);
    ip(&["-n", &ns.0, "link", "set", "pnc1", "up"]);
    ip(&["-n", &ns.0, "link", "set", "pnc0", "up"]);
    let mut nl = Netlink::in_netns(&ns.path()).unwrap_or_else(|e| panic!("{e}"));
    // Asking needs a subscription.
    assert!(nl.routes_changed().is_err());
    nl.subscribe_routes().unwrap_or_else(|e| panic!("{e}"));
    // A small buffer: a burst overflows it.
    nl.set_notify_buffer(4096).unwrap_or_else(|e| panic!("{e}"));
    let mut changed = || nl.routes_changed().unwrap_or_else(|e| panic!("{e}"));
    assert!(!changed(), "nothing happened yet");
    // A change made just before asking is counted, without waiting for it.
    ip(&[
        "-n",
        &ns.0,
        "route",
        "add",
        "10.99.1.0/24",
        "via",
        "198.18.0.2",
    ]);
    assert!(changed());
    assert!(!changed(), "each change is counted once");
    ip(&["-n", &ns.0, "route", "del", "10.99.1.0/24"]);
    assert!(changed(), "a removal is a change");
    // Address changes move connected routes: they count as well.
    ip(&["-n", &ns.0, "addr", "add", "198.19.0.1/24", "dev", "pnc0"]);
    assert!(changed());
    // A burst larger than the buffer: notifications are lost, which reads as a change,
    // and the connection keeps working.
    let batch = std::env::temp_dir().join(format!("pnnl-changed-{}.batch", std::process::id()));
    let text: String = (0..2000)
        .map(|i| {
            format!(
                "route add 10.{}.{}.0/24 via 198.18.0.2\n",
                100 + i / 256,
                i % 256
            )
        })
        .collect();
    std::fs::write(&batch, text).unwrap_or_else(|e| panic!("{e}"));
    ip(&["-n", &ns.0, "-batch", &batch.display().to_string()]);
    let _ = std::fs::remove_file(&batch);
    assert!(changed());
    assert!(!changed(), "quiet again after the overflow");
    ip(&[
        "-n",
        &ns.0,
        "route",
        "add",
        "10.99.2.0/24",
        "via",
        "198.18.0.2",
    ]);
    assert!(changed());
}

#[test]
fn batches_report_each_refusal_and_work_inside_a_tokio_runtime() {
    let ns = Ns::new("batch");
    ip(&[
        "-n", &ns.0, "link", "add", "pnb0", "type", "veth", "peer", "name", "pnb1",
    ]);
    ip(&["-n", &ns.0, "addr", "add", "198.18.0.1/24", "dev", "pnb0"]);
    ip(&["-n", &ns.0, "link", "set", "pnb1", "up"]);
    ip(&["-n", &ns.0, "link", "set", "pnb0", "up"]);
    let route = |i: u8| Route {
        dst: IpAddr::V4(Ipv4Addr::new(10, 99, i, 0)),
        prefix: 24,
        gateway: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))),
        oif: None,
        protocol: 233,
    };
    let routes: Vec<Route> = (0..200).map(route).collect();
    let path = ns.path();
    // From inside a runtime, as the daemon and the lab call it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async move {
        let mut nl = Netlink::in_netns(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(nl.create_routes(&routes).is_empty());
        // Again: every one exists, each refusal names its route.
        let refused = nl.create_routes(&routes[..3]);
        assert_eq!(refused.len(), 3);
        assert!(refused.iter().all(|(_, e)| e.is_exists()), "{refused:?}");
        assert_eq!(refused[1].0, routes[1]);
        let listed = nl
            .routes(RouteFilter {
                ipv6: false,
                protocol: Some(233),
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(listed.len(), 200);
        assert!(nl.del_route(&routes[0]).unwrap_or_else(|e| panic!("{e}")));
        assert!(!nl.del_route(&routes[0]).unwrap_or_else(|e| panic!("{e}")));
        assert!(
            nl.link_by_name("nope0")
                .unwrap_or_else(|e| panic!("{e}"))
                .is_none()
        );
        drop(nl); // inside the runtime: must not panic
    });
}

/// Peer routes through nexthop objects: one object per gateway and device, made as
/// needed and owned by the routes' protocol; the routes read back with their gateway and
/// device (also with the kernel's compatibility mode off); a replaced or deleted
/// route's object goes with the next prune, while another owner's object, and an
/// object another owner's route uses, stay.
#[test]
fn routes_through_nexthop_objects_read_back_and_leave_nothing_behind() {
    let ns = Ns::new("nexthop");
    ip(&[
        "-n", &ns.0, "link", "add", "pnn0", "type", "veth", "peer", "name", "pnn1",
    ]);
    ip(&["-n", &ns.0, "addr", "add", "198.18.0.1/24", "dev", "pnn0"]);
    ip(&["-n", &ns.0, "link", "set", "pnn1", "up"]);
    ip(&["-n", &ns.0, "link", "set", "pnn0", "up"]);
    // Another owner's object, and one of protocol 233 that a route of another owner uses.
    ip(&[
        "-n",
        &ns.0,
        "nexthop",
        "add",
        "id",
        "7",
        "via",
        "198.18.0.77",
        "dev",
        "pnn0",
        "proto",
        "static",
    ]);
    ip(&[
        "-n",
        &ns.0,
        "nexthop",
        "add",
        "id",
        "8",
        "via",
        "198.18.0.78",
        "dev",
        "pnn0",
        "proto",
        "233",
    ]);
    ip(&[
        "-n",
        &ns.0,
        "route",
        "add",
        "10.98.0.0/24",
        "nhid",
        "8",
        "proto",
        "static",
    ]);
    // And one of protocol 233 that another owner's group holds, a route using the group.
    for args in [
        "nexthop add id 9 via 198.18.0.79 dev pnn0 proto 233",
        "nexthop add id 10 group 9 proto static",
        "route add 10.97.0.0/24 nhid 10 proto static",
    ] {
        let mut all = vec!["-n", &ns.0];
        all.extend(args.split(' '));
        ip(&all);
    }
    let mut nl = Netlink::in_netns(&ns.path()).unwrap_or_else(|e| panic!("{e}"));
    let pnn0 = nl
        .link_by_name("pnn0")
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("pnn0 is missing"))
        .index;
    let route = |i: u8, gw: u8| Route {
        dst: IpAddr::V4(Ipv4Addr::new(10, 99, i, 0)),
        prefix: 24,
        gateway: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, gw))),
        oif: Some(pnn0),
        protocol: 233,
    };
    // Three peers, the third with two CIDRs through one gateway.
    let routes = vec![route(1, 2), route(2, 3), route(3, 4), route(4, 4)];
    assert!(nl.create_routes_via_nexthops(&routes).is_empty());
    let ours = |nl: &mut Netlink| -> Vec<Route> {
        let mut r = nl
            .routes(RouteFilter {
                ipv6: false,
                protocol: Some(233),
            })
            .unwrap_or_else(|e| panic!("{e}"));
        r.sort();
        r
    };
    assert_eq!(ours(&mut nl), routes);
    let shown = ip_out(&["-n", &ns.0, "route", "show", "proto", "233"]);
    assert_eq!(shown.matches("nhid").count(), 4, "{shown}");
    let objects = |nl: &mut Netlink| -> Vec<(u32, IpAddr, u8)> {
        let mut o: Vec<_> = nl
            .nexthops()
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|n| (n.id, n.gateway, n.protocol))
            .collect();
        o.sort();
        o
    };
    assert_eq!(objects(&mut nl).len(), 3 + 3, "{:?}", objects(&mut nl));
    // With the compatibility mode off, dumps carry only the id: read back the same.
    ip(&[
        "netns",
        "exec",
        &ns.0,
        "sysctl",
        "-qw",
        "net.ipv4.nexthop_compat_mode=0",
    ]);
    assert_eq!(ours(&mut nl), routes);
    ip(&[
        "netns",
        "exec",
        &ns.0,
        "sysctl",
        "-qw",
        "net.ipv4.nexthop_compat_mode=1",
    ]);
    // Creating again: refused per route, nothing doubled.
    let refused = nl.create_routes_via_nexthops(&routes[..2]);
    assert!(refused.len() == 2 && refused.iter().all(|(_, e)| e.is_exists()));
    // A peer moves to another gateway; another is deleted.
    assert!(nl.replace_routes_via_nexthops(&[route(1, 5)]).is_empty());
    assert!(nl.del_route(&routes[1]).unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(
        nl.prune_nexthops(233).unwrap_or_else(|e| panic!("{e}")),
        2,
        "the objects via .2 and .3"
    );
    let left: Vec<IpAddr> = objects(&mut nl).into_iter().map(|(_, gw, _)| gw).collect();
    for gw in [
        "198.18.0.77",
        "198.18.0.78",
        "198.18.0.79",
        "198.18.0.4",
        "198.18.0.5",
    ] {
        assert!(
            left.contains(&gw.parse().unwrap_or_else(|e| panic!("{e}"))),
            "{gw}: {left:?}"
        );
    }
    assert_eq!(left.len(), 5);
    assert_eq!(ours(&mut nl), vec![route(1, 5), route(3, 4), route(4, 4)]);
    // Someone deletes an object this connection knows (the kernel removes its routes
    // with it): the next write is refused, reads the objects again and makes it anew.
    assert!(nl.create_routes_via_nexthops(&[route(2, 3)]).is_empty());
    let via4 = objects(&mut nl)
        .into_iter()
        .find(|(_, gw, _)| *gw == IpAddr::V4(Ipv4Addr::new(198, 18, 0, 4)))
        .map(|(id, _, _)| id.to_string())
        .unwrap_or_else(|| panic!("no object via .4"));
    ip(&["-n", &ns.0, "nexthop", "del", "id", &via4]);
    assert_eq!(ours(&mut nl), vec![route(1, 5), route(2, 3)]);
    let refused = nl.create_routes_via_nexthops(&[route(3, 4), route(4, 4)]);
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(
        ours(&mut nl),
        vec![route(1, 5), route(2, 3), route(3, 4), route(4, 4)]
    );
    // Everything of podnet's gone: its objects too, the others' stay.
    for r in ours(&mut nl) {
        assert!(nl.del_route(&r).unwrap_or_else(|e| panic!("{e}")));
    }
    assert_eq!(nl.prune_nexthops(233).unwrap_or_else(|e| panic!("{e}")), 3);
    let left: Vec<u32> = objects(&mut nl).into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(left, vec![7, 8, 9]);
    assert!(ip_out(&["-n", &ns.0, "route", "show", "10.98.0.0/24"]).contains("nhid 8"));
    assert!(ip_out(&["-n", &ns.0, "route", "show", "10.97.0.0/24"]).contains("nhid 10"));
}
