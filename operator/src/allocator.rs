//! The pod CIDR allocator: pure, no I/O.
//!
//! Every CIDR any node holds is kept as an inclusive integer span, ordered by start, in
//! one map per family. A free node CIDR is found by walking the holdings that intersect a
//! pool in order and stopping at the first aligned gap, so the cost grows with the number
//! of holdings, never with the size of the pool: a /32 IPv6 pool cut into /64s (2^32 node
//! CIDRs) costs what a /16 cut into /24s does. There is no bitmap.
//!
//! The allocator is rebuilt from the NodeRoute list ([`Allocator::restore`]) before it
//! hands anything out. Whatever it finds there is recorded as held, even when it is wrong
//! (outside every pool, overlapping another node, of the wrong size): such a CIDR is
//! reported by [`Allocator::problems`] and left alone, and nothing overlapping it is ever
//! handed out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of `net`.
    pub fn of(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Self::V4,
            IpNet::V6(_) => Self::V6,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        })
    }
}

/// The pools of one PodNetwork as the allocator needs them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkPools {
    /// The network's CIDRs, in spec order (allocation fills earlier ones first).
    pub cidrs: Vec<IpNet>,
    /// Entries removed from the spec that the network still serves while nodes use them
    /// (draining): nothing new comes from them, and a node CIDR inside one is valid.
    pub draining: Vec<IpNet>,
    /// Prefix length of an IPv4 node CIDR.
    pub mask_v4: u8,
    /// Prefix length of an IPv6 node CIDR.
    pub mask_v6: u8,
}

impl NetworkPools {
    fn mask(&self, family: Family) -> u8 {
        match family {
            Family::V4 => self.mask_v4,
            Family::V6 => self.mask_v6,
        }
    }

    /// The families this network hands out, in a fixed order (IPv4 first).
    pub fn families(&self) -> Vec<Family> {
        let set: BTreeSet<Family> = self.cidrs.iter().map(Family::of).collect();
        set.into_iter().collect()
    }

    /// How many node CIDRs of `family` the pools hold, saturating at `i64::MAX`.
    pub fn capacity(&self, family: Family) -> i64 {
        let mask = self.mask(family);
        self.cidrs
            .iter()
            .filter(|c| Family::of(c) == family && c.prefix_len() <= mask)
            .map(|c| {
                1u128
                    .checked_shl(u32::from(mask - c.prefix_len()))
                    .unwrap_or(u128::MAX)
            })
            .fold(0u128, u128::saturating_add)
            .min(i64::MAX as u128) as i64
    }
}

/// Why a node could not get its CIDRs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The node's network is not known (deleted, or never created).
    #[error("PodNetwork {0} does not exist")]
    UnknownNetwork(String),
    /// The network has no CIDR at all.
    #[error("PodNetwork {0} has no CIDRs")]
    NoCidrs(String),
    /// Every node CIDR of that family is taken.
    #[error("PodNetwork {network} has no free {family} node CIDR left (capacity {capacity})")]
    Exhausted {
        /// The network.
        network: String,
        /// The family that ran out.
        family: Family,
        /// Its capacity in node CIDRs.
        capacity: i64,
    },
}

/// Something wrong with a CIDR a node holds, found in its NodeRoute status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The node names no network, or one that does not exist.
    UnknownNetwork {
        /// The CIDR.
        cidr: IpNet,
        /// The network named, if any.
        network: Option<String>,
    },
    /// The CIDR lies in an entry removed from its network's spec while the node used
    /// it: valid, kept while the node exists, never handed out again.
    Draining {
        /// The CIDR.
        cidr: IpNet,
        /// Its network.
        network: String,
    },
    /// The CIDR lies outside everything its network serves (current and draining
    /// entries): written by hand, or by a bug.
    OutsidePool {
        /// The CIDR.
        cidr: IpNet,
        /// Its network.
        network: String,
    },
    /// The CIDR's prefix length is not the network's node mask size.
    WrongSize {
        /// The CIDR.
        cidr: IpNet,
        /// The node mask size of its family.
        expected: u8,
    },
    /// Another node holds an overlapping CIDR.
    Overlap {
        /// The CIDR.
        cidr: IpNet,
        /// The other node.
        other_node: String,
        /// The other node's CIDR.
        other_cidr: IpNet,
    },
    /// The node holds two CIDRs of one family.
    DuplicateFamily {
        /// The second CIDR of that family.
        cidr: IpNet,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownNetwork {
                cidr,
                network: Some(n),
            } => {
                write!(f, "{cidr} belongs to PodNetwork {n}, which does not exist")
            }
            Self::UnknownNetwork {
                cidr,
                network: None,
            } => write!(f, "{cidr} belongs to no PodNetwork"),
            Self::Draining { cidr, network } => write!(
                f,
                "{cidr} lies in a CIDR removed from PodNetwork {network}'s spec; kept while the node exists"
            ),
            Self::OutsidePool { cidr, network } => write!(
                f,
                "{cidr} is outside every CIDR PodNetwork {network} serves"
            ),
            Self::WrongSize { cidr, expected } => {
                write!(f, "{cidr} is not a /{expected} node CIDR")
            }
            Self::Overlap {
                cidr,
                other_node,
                other_cidr,
            } => write!(f, "{cidr} overlaps {other_cidr} held by node {other_node}"),
            Self::DuplicateFamily { cidr } => {
                write!(f, "{cidr} is a second CIDR of the same IP family")
            }
        }
    }
}

/// An inclusive range of addresses as integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    lo: u128,
    hi: u128,
}

impl Span {
    fn of(net: &IpNet) -> Self {
        match net {
            IpNet::V4(n) => Self {
                lo: u128::from(u32::from(n.network())),
                hi: u128::from(u32::from(n.broadcast())),
            },
            IpNet::V6(n) => Self {
                lo: u128::from(n.network()),
                hi: u128::from(n.broadcast()),
            },
        }
    }

    fn overlaps(self, other: Self) -> bool {
        self.lo <= other.hi && other.lo <= self.hi
    }
}

fn net_at(family: Family, lo: u128, prefix: u8) -> Option<IpNet> {
    let addr = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(lo).ok()?)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(lo)),
    };
    IpNet::new(addr, prefix).ok()
}

#[derive(Clone, Debug)]
struct Holding {
    hi: u128,
    cidr: IpNet,
}

/// Who holds what, and the networks' pools.
#[derive(Clone, Debug, Default)]
pub struct Allocator {
    networks: BTreeMap<String, NetworkPools>,
    /// (family, span start, node) → holding. A node's holdings are also in `by_node`.
    held: BTreeMap<(Family, u128, String), Holding>,
    by_node: BTreeMap<String, NodeHoldings>,
    /// The widest span ever held per family (never shrinks): a holding that starts more
    /// than this below an address cannot reach it, which bounds every range scan.
    widest: BTreeMap<Family, u128>,
    /// Per pool span (family, lo, hi, step): every block below the cursor is known to be
    /// taken, so the next search starts there. Any release in the family clears them.
    cursors: BTreeMap<(Family, u128, u128, u128), u128>,
    /// Released CIDRs held back from other nodes (also in `held`, under
    /// [`quarantine_key`]).
    quarantine: Vec<Quarantined>,
}

#[derive(Clone, Debug, Default)]
struct NodeHoldings {
    network: Option<String>,
    cidrs: Vec<IpNet>,
}

/// A node CIDR held back from reuse after its node released it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// The node that held it (it gets it back if it returns).
    pub node: String,
    /// The network it came from.
    pub network: String,
    /// The CIDR.
    pub cidr: IpNet,
    /// When the release was seen.
    pub released_at: Timestamp,
}

/// The key under which a quarantined CIDR is held: `:` never appears in a node name.
fn quarantine_key(node: &str) -> String {
    format!("quarantine:{node}")
}

impl Allocator {
    /// An allocator with no networks and no holdings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a network's pools. Holdings stay as they are: an entry removed
    /// from `cidrs` while nodes (or quarantined CIDRs) use it becomes draining — still
    /// served, never allocated from — and their CIDRs show up as [`Problem::Draining`].
    /// A draining entry nothing uses is no longer [`Self::served`], and is dropped by
    /// the next call.
    pub fn set_network(&mut self, name: &str, mut pools: NetworkPools) {
        pools.draining.extend(self.served(name));
        pools.draining.retain(|d| !pools.cidrs.contains(d));
        pools.draining.sort();
        pools.draining.dedup();
        self.networks.insert(name.to_string(), pools);
    }

    /// Treats every CIDR nodes of `network` hold outside its spec, with the node mask
    /// size, as draining: for a PodNetwork whose status predates `servedCIDRs` (written
    /// by an older operator), so an upgrade never turns a drained CIDR into an invalid
    /// one.
    pub fn adopt_draining(&mut self, network: &str) {
        let Some(pools) = self.networks.get(network) else {
            return;
        };
        let found: Vec<IpNet> = self
            .draining(network)
            .into_iter()
            .filter(|c| c.prefix_len() == pools.mask(Family::of(c)))
            .collect();
        if let Some(p) = self.networks.get_mut(network) {
            p.draining.extend(found);
            p.draining.sort();
            p.draining.dedup();
        }
    }

    /// Forgets a network. Its nodes keep their CIDRs.
    pub fn remove_network(&mut self, name: &str) {
        self.networks.remove(name);
    }

    /// The pools of a network.
    pub fn network(&self, name: &str) -> Option<&NetworkPools> {
        self.networks.get(name)
    }

    /// Records what a node's NodeRoute status says it holds, replacing what was recorded
    /// for it before. Everything is recorded, right or wrong; see [`Self::problems`].
    pub fn restore(&mut self, node: &str, network: Option<&str>, cidrs: &[IpNet]) {
        self.release(node);
        if cidrs.is_empty() && network.is_none() {
            return;
        }
        for cidr in cidrs {
            self.insert(node, *cidr);
        }
        self.by_node.insert(
            node.to_string(),
            NodeHoldings {
                network: network.map(str::to_string),
                cidrs: cidrs.to_vec(),
            },
        );
    }

    fn insert(&mut self, node: &str, cidr: IpNet) {
        let cidr = cidr.trunc();
        let span = Span::of(&cidr);
        let widest = self.widest.entry(Family::of(&cidr)).or_default();
        *widest = (*widest).max(span.hi - span.lo);
        self.held.insert(
            (Family::of(&cidr), span.lo, node.to_string()),
            Holding { hi: span.hi, cidr },
        );
    }

    /// Every node that holds (or was assigned a network for) something.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.by_node.keys().map(String::as_str)
    }

    /// How many nodes are recorded.
    pub fn node_count(&self) -> usize {
        self.by_node.len()
    }

    /// The names of the known networks.
    pub fn network_names(&self) -> impl Iterator<Item = &str> {
        self.networks.keys().map(String::as_str)
    }

    /// The CIDRs a node holds.
    pub fn holdings(&self, node: &str) -> &[IpNet] {
        self.by_node.get(node).map_or(&[], |h| h.cidrs.as_slice())
    }

    /// The network a node's CIDRs came from.
    pub fn network_of(&self, node: &str) -> Option<&str> {
        self.by_node.get(node).and_then(|h| h.network.as_deref())
    }

    /// Gives `node` one CIDR of every family `network` has, keeping those it already
    /// holds. All or nothing: when one family is exhausted the node gets nothing new.
    /// Returns the node's complete holdings.
    pub fn allocate(&mut self, node: &str, network: &str) -> Result<Vec<IpNet>, AllocError> {
        let pools = self
            .networks
            .get(network)
            .ok_or_else(|| AllocError::UnknownNetwork(network.to_string()))?;
        let families = pools.families();
        if families.is_empty() {
            return Err(AllocError::NoCidrs(network.to_string()));
        }
        let current = self.holdings(node).to_vec();
        let mut added = Vec::new();
        // Taken out of quarantine only once every family has its CIDR: an allocation
        // that fails for one family leaves the quarantine of the other as it was.
        let mut reclaimed = Vec::new();
        let pools = pools.clone();
        let pools = &pools;
        for family in families {
            if current.iter().any(|c| Family::of(c) == family) {
                continue;
            }
            // A node that comes back gets the CIDR it released.
            if let Some(q) = self
                .quarantine
                .iter()
                .find(|q| q.node == node && q.network == network && Family::of(&q.cidr) == family)
            {
                added.push(q.cidr);
                reclaimed.push(q.clone());
                continue;
            }
            match self.find_free(pools, family) {
                Some((cidr, cursor)) => {
                    added.push(cidr);
                    self.cursors.insert(cursor, Span::of(&cidr).lo);
                }
                None => {
                    return Err(AllocError::Exhausted {
                        network: network.to_string(),
                        family,
                        capacity: pools.capacity(family),
                    });
                }
            }
        }
        for q in &reclaimed {
            self.quarantine.retain(|x| x != q);
            self.unhold(&quarantine_key(node), &q.cidr);
        }
        for cidr in &added {
            self.insert(node, *cidr);
        }
        let entry = self.by_node.entry(node.to_string()).or_default();
        entry.network = Some(network.to_string());
        entry.cidrs.extend(added);
        Ok(entry.cidrs.clone())
    }

    /// The first free node CIDR of `family` in `pools`, in pool order, with the key of
    /// the cursor of the pool it came from.
    fn find_free(
        &self,
        pools: &NetworkPools,
        family: Family,
    ) -> Option<(IpNet, (Family, u128, u128, u128))> {
        let mask = pools.mask(family);
        let step = 1u128.checked_shl(u32::from(family.bits().checked_sub(mask)?))?;
        pools
            .cidrs
            .iter()
            .filter(|c| Family::of(c) == family && c.prefix_len() <= mask)
            .find_map(|pool| {
                let pool_span = Span::of(pool);
                let key = (family, pool_span.lo, pool_span.hi, step);
                let from = self.cursors.get(&key).copied().unwrap_or(pool_span.lo);
                let lo = self.first_gap(family, pool_span, step, from)?;
                Some((net_at(family, lo, mask)?, key))
            })
    }

    /// Holdings of `family` that may intersect addresses from `from` on, in order.
    fn held_from(
        &self,
        family: Family,
        from: u128,
    ) -> impl Iterator<Item = (&(Family, u128, String), &Holding)> {
        let reach = self.widest.get(&family).copied().unwrap_or(0);
        self.held
            .range((family, from.saturating_sub(reach), String::new())..)
            .take_while(move |((f, _, _), _)| *f == family)
    }

    /// Start of the first `step`-aligned block of `pool`, at or after `from` (itself
    /// aligned), that no holding intersects.
    fn first_gap(&self, family: Family, pool: Span, step: u128, from: u128) -> Option<u128> {
        let mut cand = from;
        let end = |c: u128| c.checked_add(step - 1);
        for ((_, lo, _), h) in self.held_from(family, from) {
            let cand_end = end(cand)?;
            if cand_end > pool.hi {
                return None;
            }
            if *lo > pool.hi || *lo > cand_end {
                // Holdings are ordered by start: none of the rest reaches back into the
                // candidate block.
                break;
            }
            if h.hi < cand {
                continue;
            }
            // Overlap: the next candidate is the first aligned block after this holding.
            let next = h.hi.checked_add(1)?;
            let offset = next - pool.lo;
            cand = pool
                .lo
                .checked_add(offset.div_ceil(step).checked_mul(step)?)?;
        }
        (end(cand)? <= pool.hi).then_some(cand)
    }

    fn unhold(&mut self, key: &str, cidr: &IpNet) {
        let cidr = cidr.trunc();
        let family = Family::of(&cidr);
        self.held
            .remove(&(family, Span::of(&cidr).lo, key.to_string()));
        self.cursors.retain(|(f, ..), _| *f != family);
    }

    /// Forgets everything `node` holds and returns it.
    pub fn release(&mut self, node: &str) -> Vec<IpNet> {
        let Some(h) = self.by_node.remove(node) else {
            return Vec::new();
        };
        for cidr in &h.cidrs {
            self.unhold(node, cidr);
        }
        h.cidrs
    }

    /// Releases everything `node` holds into quarantine: each valid CIDR (one its
    /// network serves, of the right size, overlapping nobody) stays unavailable to other
    /// nodes until [`Self::expire_quarantine`] lets it go, and goes back to `node` if it
    /// returns. Invalid holdings are simply released. Returns the quarantined CIDRs.
    pub fn release_to_quarantine(&mut self, node: &str, at: Timestamp) -> Vec<IpNet> {
        let problems = self.problems(node);
        let network = self.network_of(node).map(str::to_string);
        let released = self.release(node);
        let Some(network) = network else {
            return Vec::new();
        };
        let mut quarantined = Vec::new();
        for cidr in released {
            // An overlap is the other holder's problem as much as this one's: the CIDR
            // itself is valid, and nothing overlapping a holding is ever handed out.
            let bad = problems.iter().any(|p| match p {
                Problem::Draining { .. } | Problem::Overlap { .. } => false,
                Problem::UnknownNetwork { cidr: c, .. }
                | Problem::OutsidePool { cidr: c, .. }
                | Problem::WrongSize { cidr: c, .. }
                | Problem::DuplicateFamily { cidr: c } => *c == cidr,
            });
            if !bad {
                self.hold_quarantined(Quarantined {
                    node: node.to_string(),
                    network: network.clone(),
                    cidr,
                    released_at: at,
                });
                quarantined.push(cidr);
            }
        }
        quarantined
    }

    /// Records a quarantined CIDR (from a PodNetwork's status, at the start of a term),
    /// unless anyone holds something overlapping it already.
    pub fn hold_quarantined(&mut self, q: Quarantined) {
        let span = Span::of(&q.cidr);
        let family = Family::of(&q.cidr);
        let taken = self
            .held_from(family, span.lo)
            .take_while(|((_, lo, _), _)| *lo <= span.hi)
            .any(|(_, h)| Span::of(&h.cidr).overlaps(span));
        if taken || self.quarantine.contains(&q) {
            return;
        }
        self.insert(&quarantine_key(&q.node), q.cidr);
        self.quarantine.push(q);
    }

    /// Ends the quarantine of every CIDR released at least `period` before `now`;
    /// returns them.
    pub fn expire_quarantine(
        &mut self,
        now: Timestamp,
        period: SignedDuration,
    ) -> Vec<Quarantined> {
        let (expired, kept): (Vec<Quarantined>, Vec<Quarantined>) =
            std::mem::take(&mut self.quarantine)
                .into_iter()
                .partition(|q| now.duration_since(q.released_at) >= period);
        self.quarantine = kept;
        for q in &expired {
            self.unhold(&quarantine_key(&q.node), &q.cidr);
        }
        expired
    }

    /// When the earliest quarantine began, if any CIDR is in quarantine.
    pub fn earliest_quarantine(&self) -> Option<Timestamp> {
        self.quarantine.iter().map(|q| q.released_at).min()
    }

    /// The CIDRs of `network` in quarantine.
    pub fn quarantined(&self, network: &str) -> Vec<&Quarantined> {
        self.quarantine
            .iter()
            .filter(|q| q.network == network)
            .collect()
    }

    /// Drops the quarantine of every network not in `networks`.
    pub fn retain_quarantine_of(&mut self, networks: &[&str]) {
        let gone: Vec<Quarantined> = self
            .quarantine
            .iter()
            .filter(|q| !networks.contains(&q.network.as_str()))
            .cloned()
            .collect();
        for q in gone {
            self.quarantine.retain(|x| *x != q);
            self.unhold(&quarantine_key(&q.node), &q.cidr);
        }
    }

    /// What is wrong with the CIDRs `node` holds, against the current pools and the
    /// other nodes' holdings.
    pub fn problems(&self, node: &str) -> Vec<Problem> {
        let Some(h) = self.by_node.get(node) else {
            return Vec::new();
        };
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        for cidr in &h.cidrs {
            let family = Family::of(cidr);
            if !seen.insert(family) {
                problems.push(Problem::DuplicateFamily { cidr: *cidr });
            }
            match h
                .network
                .as_deref()
                .and_then(|n| self.networks.get(n).map(|p| (n, p)))
            {
                None => problems.push(Problem::UnknownNetwork {
                    cidr: *cidr,
                    network: h.network.clone(),
                }),
                Some((name, pools)) => {
                    if cidr.prefix_len() != pools.mask(family) {
                        problems.push(Problem::WrongSize {
                            cidr: *cidr,
                            expected: pools.mask(family),
                        });
                    }
                    if pools.draining.iter().any(|p| p.contains(cidr))
                        && !pools.cidrs.iter().any(|p| p.contains(cidr))
                    {
                        problems.push(Problem::Draining {
                            cidr: *cidr,
                            network: name.to_string(),
                        });
                    } else if !pools.cidrs.iter().any(|p| p.contains(cidr)) {
                        problems.push(Problem::OutsidePool {
                            cidr: *cidr,
                            network: name.to_string(),
                        });
                    }
                }
            }
            let span = Span::of(cidr);
            for ((_, lo, other), oh) in self.held_from(family, span.lo) {
                if *lo > span.hi {
                    break;
                }
                // A node's own quarantined CIDR (from before it came back) is no conflict.
                if other != node
                    && *other != quarantine_key(node)
                    && Span::of(&oh.cidr).overlaps(span)
                {
                    problems.push(Problem::Overlap {
                        cidr: *cidr,
                        other_node: other.clone(),
                        other_cidr: oh.cidr,
                    });
                }
            }
        }
        problems
    }

    /// How many node CIDRs of `family` nodes of `network` hold.
    pub fn allocated(&self, network: &str, family: Family) -> i64 {
        self.by_node
            .values()
            .filter(|h| h.network.as_deref() == Some(network))
            .map(|h| h.cidrs.iter().filter(|c| Family::of(c) == family).count() as i64)
            .sum()
    }

    /// How many nodes hold at least one CIDR of `network`.
    pub fn nodes_of(&self, network: &str) -> u32 {
        self.by_node
            .values()
            .filter(|h| h.network.as_deref() == Some(network) && !h.cidrs.is_empty())
            .count() as u32
    }

    /// The node CIDRs of `network` (held or quarantined) outside its spec's CIDRs.
    pub fn draining(&self, network: &str) -> Vec<IpNet> {
        let Some(pools) = self.networks.get(network) else {
            return Vec::new();
        };
        let mut out: Vec<IpNet> = self
            .by_node
            .values()
            .filter(|h| h.network.as_deref() == Some(network))
            .flat_map(|h| h.cidrs.iter())
            .chain(self.quarantined(network).into_iter().map(|q| &q.cidr))
            .filter(|c| !pools.cidrs.iter().any(|p| p.contains(*c)))
            .copied()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every CIDR `network` serves: its spec's CIDRs, and each draining entry that a node
    /// (or a quarantined CIDR) still uses. What the PodNetwork's `status.servedCIDRs`
    /// says, and what node daemons accept routes inside.
    pub fn served(&self, network: &str) -> Vec<IpNet> {
        let Some(pools) = self.networks.get(network) else {
            return Vec::new();
        };
        let in_use = self.draining(network);
        let mut out = pools.cidrs.clone();
        out.extend(
            pools
                .draining
                .iter()
                .filter(|d| in_use.iter().any(|c| d.contains(c)))
                .copied(),
        );
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn pools(cidrs: &[&str], v4: u8, v6: u8) -> NetworkPools {
        NetworkPools {
            cidrs: cidrs.iter().map(|c| net(c)).collect(),
            mask_v4: v4,
            mask_v6: v6,
            ..Default::default()
        }
    }

    #[test]
    fn dual_stack_nodes_get_one_cidr_per_family_in_order() {
        let mut a = Allocator::new();
        a.set_network(
            "default",
            pools(&["10.244.0.0/16", "fd00:10:244::/56"], 24, 64),
        );
        assert_eq!(
            a.allocate("n0", "default"),
            Ok(vec![net("10.244.0.0/24"), net("fd00:10:244::/64")])
        );
        assert_eq!(
            a.allocate("n1", "default"),
            Ok(vec![net("10.244.1.0/24"), net("fd00:10:244:1::/64")])
        );
        // Idempotent: a node keeps what it has.
        assert_eq!(
            a.allocate("n0", "default"),
            Ok(vec![net("10.244.0.0/24"), net("fd00:10:244::/64")])
        );
        assert_eq!(a.allocated("default", Family::V4), 2);
        assert_eq!(a.nodes_of("default"), 2);
    }

    #[test]
    fn released_cidrs_are_reused_lowest_first() {
        let mut a = Allocator::new();
        a.set_network("n", pools(&["10.0.0.0/22"], 24, 64));
        for i in 0..4 {
            assert!(a.allocate(&format!("n{i}"), "n").is_ok());
        }
        assert_eq!(
            a.allocate("n4", "n"),
            Err(AllocError::Exhausted {
                network: "n".into(),
                family: Family::V4,
                capacity: 4
            })
        );
        assert_eq!(a.release("n2"), vec![net("10.0.2.0/24")]);
        assert_eq!(a.allocate("n4", "n"), Ok(vec![net("10.0.2.0/24")]));
    }

    #[test]
    fn exhaustion_in_one_family_allocates_nothing() {
        let mut a = Allocator::new();
        a.set_network("n", pools(&["10.0.0.0/24", "fd00::/63"], 24, 64));
        assert!(a.allocate("a", "n").is_ok());
        assert!(a.allocate("b", "n").is_err());
        assert!(a.holdings("b").is_empty());
    }

    #[test]
    fn added_cidr_adds_capacity_and_removed_one_drains() {
        let mut a = Allocator::new();
        a.set_network("n", pools(&["10.0.0.0/24"], 24, 64));
        assert!(a.allocate("a", "n").is_ok());
        assert!(a.allocate("b", "n").is_err());
        a.set_network("n", pools(&["10.0.0.0/24", "10.1.0.0/24"], 24, 64));
        assert_eq!(a.allocate("b", "n"), Ok(vec![net("10.1.0.0/24")]));
        a.set_network("n", pools(&["10.1.0.0/24"], 24, 64));
        assert_eq!(
            a.holdings("a"),
            &[net("10.0.0.0/24")],
            "a node never loses its CIDR"
        );
        assert_eq!(a.draining("n"), vec![net("10.0.0.0/24")]);
        assert_eq!(a.served("n"), vec![net("10.0.0.0/24"), net("10.1.0.0/24")]);
        assert!(matches!(
            a.problems("a").as_slice(),
            [Problem::Draining { .. }]
        ));
        // Nothing new comes from the drained range.
        assert!(a.allocate("c", "n").is_err());
        // The drained entry stops being served once its last node left.
        a.release("a");
        a.set_network("n", pools(&["10.1.0.0/24"], 24, 64));
        assert_eq!(a.served("n"), vec![net("10.1.0.0/24")]);
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn released_cidrs_wait_in_quarantine_and_go_back_to_their_node() {
        let mut a = Allocator::new();
        a.set_network("n", pools(&["10.0.0.0/23", "fd00::/63"], 24, 64));
        assert!(a.allocate("a", "n").is_ok());
        assert!(a.allocate("b", "n").is_ok());
        let a_cidrs = a.holdings("a").to_vec();
        assert_eq!(a.release_to_quarantine("a", at(100)), a_cidrs);
        // Nobody else gets it while it is in quarantine: the pool is full.
        assert!(matches!(
            a.allocate("c", "n"),
            Err(AllocError::Exhausted { .. })
        ));
        assert_eq!(a.quarantined("n").len(), 2);
        // Its node comes back: same CIDRs.
        assert_eq!(a.allocate("a", "n"), Ok(a_cidrs.clone()));
        assert!(a.quarantined("n").is_empty());
        assert!(a.problems("a").is_empty());
        // Released again, then the quarantine ends: free for anyone.
        a.release_to_quarantine("a", at(200));
        assert!(
            a.expire_quarantine(at(259), SignedDuration::from_secs(60))
                .is_empty()
        );
        assert_eq!(
            a.expire_quarantine(at(260), SignedDuration::from_secs(60))
                .len(),
            2
        );
        assert_eq!(a.allocate("c", "n"), Ok(a_cidrs));
    }

    #[test]
    fn a_cidr_a_bogus_holding_overlaps_is_still_quarantined() {
        let mut a = Allocator::new();
        a.set_network("n", pools(&["10.0.0.0/16"], 24, 64));
        assert!(a.allocate("good", "n").is_ok());
        a.restore("bogus", Some("n"), &[net("10.0.0.0/16")]);
        assert_eq!(
            a.release_to_quarantine("good", at(1)),
            vec![net("10.0.0.0/24")]
        );
    }

    #[test]
    fn invalid_holdings_are_never_quarantined() {
        let mut a = Allocator::new();
        a.set_network("n", pools(&["10.0.0.0/16"], 24, 64));
        a.restore("bad", Some("n"), &[net("0.0.0.0/0")]);
        assert!(a.release_to_quarantine("bad", at(1)).is_empty());
        assert!(a.quarantined("n").is_empty());
        assert_eq!(a.allocate("x", "n"), Ok(vec![net("10.0.0.0/24")]));
    }

    #[test]
    fn huge_ipv6_pools_work_without_a_bitmap() {
        let mut a = Allocator::new();
        a.set_network("v6", pools(&["2001:db8::/32"], 24, 64));
        assert_eq!(
            a.network("v6").map(|p| p.capacity(Family::V6)),
            Some(1 << 32)
        );
        for i in 0..1000u32 {
            let got = a.allocate(&format!("n{i}"), "v6").unwrap_or_default();
            let want: IpNet = IpNet::new(
                IpAddr::V6(Ipv6Addr::from(
                    (0x2001_0db8u128 << 96) | (u128::from(i) << 64),
                )),
                64,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got, vec![want]);
        }
        let mut b = Allocator::new();
        b.set_network("all", pools(&["::/0"], 24, 126));
        assert_eq!(
            b.network("all").map(|p| p.capacity(Family::V6)),
            Some(i64::MAX)
        );
        assert_eq!(b.allocate("x", "all"), Ok(vec![net("::/126")]));
    }

    #[test]
    fn bogus_holdings_are_reported_and_never_handed_out_again() {
        let mut a = Allocator::new();
        a.set_network("n", pools(&["10.0.0.0/16"], 24, 64));
        a.restore("rogue", Some("n"), &[net("10.0.0.0/23")]);
        a.restore("outside", Some("n"), &[net("192.0.2.0/24")]);
        a.restore("lost", Some("gone"), &[net("10.0.5.0/24")]);
        a.restore("twin", Some("n"), &[net("10.0.1.0/24")]);
        assert!(matches!(
            a.problems("rogue").as_slice(),
            [Problem::WrongSize { .. }, Problem::Overlap { .. }]
        ));
        assert!(matches!(
            a.problems("outside").as_slice(),
            [Problem::OutsidePool { .. }]
        ));
        assert!(matches!(
            a.problems("lost").as_slice(),
            [Problem::UnknownNetwork { .. }]
        ));
        assert!(
            matches!(a.problems("twin").as_slice(), [Problem::Overlap { other_node, .. }] if other_node == "rogue")
        );
        // 10.0.0.0/23 and 10.0.5.0/24 stay occupied.
        let got: Vec<IpNet> = (0..4)
            .flat_map(|i| a.allocate(&format!("n{i}"), "n").unwrap_or_default())
            .collect();
        assert_eq!(
            got,
            vec![
                net("10.0.2.0/24"),
                net("10.0.3.0/24"),
                net("10.0.4.0/24"),
                net("10.0.6.0/24")
            ]
        );
    }

    #[test]
    fn unusable_networks_are_errors_not_panics() {
        let mut a = Allocator::new();
        assert_eq!(
            a.allocate("x", "nope"),
            Err(AllocError::UnknownNetwork("nope".into()))
        );
        a.set_network("empty", pools(&[], 24, 64));
        assert_eq!(
            a.allocate("x", "empty"),
            Err(AllocError::NoCidrs("empty".into()))
        );
        // Node mask wider than the pool (the API server refuses it; the allocator copes).
        a.set_network("wide", pools(&["10.0.0.0/24"], 16, 64));
        assert!(matches!(
            a.allocate("x", "wide"),
            Err(AllocError::Exhausted { .. })
        ));
        a.set_network("zero", pools(&["::/0"], 8, 0));
        assert!(matches!(
            a.allocate("x", "zero"),
            Err(AllocError::Exhausted { .. })
        ));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Allocate(u8),
        Release(u8),
        Quarantine(u8),
        Expire,
        Restart,
        AddCidr(u8),
        RemoveCidr(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..40).prop_map(Op::Allocate),
            2 => (0u8..40).prop_map(Op::Release),
            2 => (0u8..40).prop_map(Op::Quarantine),
            1 => Just(Op::Expire),
            1 => Just(Op::Restart),
            1 => (0u8..8).prop_map(Op::AddCidr),
            1 => (0u8..8).prop_map(Op::RemoveCidr),
        ]
    }

    /// Candidate pool CIDRs: small enough to exhaust, with varied sizes.
    fn candidate(i: u8) -> IpNet {
        match i % 4 {
            0 => net(&format!("10.{i}.0.0/22")),
            1 => net(&format!("10.{i}.0.0/23")),
            2 => net(&format!("fd00:{i}::/62")),
            _ => net(&format!("fd00:{i}::/61")),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Random allocate / release / restart / add-CIDR / remove-CIDR sequences never
        /// yield an overlap, a wrong-size or out-of-pool allocation, or a lost CIDR.
        #[test]
        fn no_overlap_no_loss(ops in proptest::collection::vec(op(), 1..120)) {
            let mut cidrs = vec![candidate(0), candidate(2)];
            let mut a = Allocator::new();
            a.set_network("n", NetworkPools { cidrs: cidrs.clone(), mask_v4: 24, mask_v6: 64, ..Default::default() });
            let mut expected: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
            // Quarantined CIDRs by the node that released them.
            let mut quarantined: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
            let mut clock = 0i64;
            for op in ops {
                clock += 10;
                match op {
                    Op::Allocate(n) => {
                        let node = format!("node{n}");
                        let before = expected.get(&node).cloned().unwrap_or_default();
                        match a.allocate(&node, "n") {
                            Ok(got) => {
                                prop_assert!(before.iter().all(|c| got.contains(c)), "a node lost a CIDR");
                                let mine = quarantined.remove(&node).unwrap_or_default();
                                for c in got.iter().filter(|c| !before.contains(c)) {
                                    let mask = if Family::of(c) == Family::V4 { 24 } else { 64 };
                                    prop_assert_eq!(c.prefix_len(), mask);
                                    // From the pools, or given back from its own quarantine.
                                    prop_assert!(cidrs.iter().any(|p| p.contains(c)) || mine.contains(c), "{} outside the pools", c);
                                    for (other, qs) in &quarantined {
                                        prop_assert!(!qs.iter().any(|q| q.contains(c) || c.contains(q)), "{} handed out while {} holds it in quarantine", c, other);
                                    }
                                }
                                // What it had in quarantine and did not take back stays there.
                                let kept: Vec<IpNet> = mine.into_iter().filter(|c| !got.contains(c)).collect();
                                if !kept.is_empty() {
                                    quarantined.insert(node.clone(), kept);
                                }
                                expected.insert(node, got);
                            }
                            Err(_) => prop_assert_eq!(a.holdings(&node), before.as_slice()),
                        }
                    }
                    Op::Release(n) => {
                        let node = format!("node{n}");
                        let want = expected.remove(&node).unwrap_or_default();
                        prop_assert_eq!(a.release(&node), want);
                    }
                    Op::Quarantine(n) => {
                        let node = format!("node{n}");
                        let want = expected.remove(&node).unwrap_or_default();
                        let got = a.release_to_quarantine(&node, at(clock));
                        prop_assert_eq!(&got, &want);
                        if !got.is_empty() {
                            quarantined.entry(node).or_default().extend(got);
                        }
                    }
                    Op::Expire => {
                        a.expire_quarantine(at(clock), SignedDuration::from_secs(0));
                        quarantined.clear();
                    }
                    Op::Restart => {
                        // A new leader: pools, holdings and quarantine from the API.
                        let mut b = Allocator::new();
                        b.set_network("n", a.network("n").cloned().unwrap_or_default());
                        for (node, held) in &expected {
                            b.restore(node, Some("n"), held);
                        }
                        for q in a.quarantined("n") {
                            b.hold_quarantined(q.clone());
                        }
                        a = b;
                    }
                    Op::AddCidr(i) => {
                        let c = candidate(i);
                        if !cidrs.iter().any(|p| p.contains(&c) || c.contains(p)) {
                            cidrs.push(c);
                        }
                        a.set_network("n", NetworkPools { cidrs: cidrs.clone(), mask_v4: 24, mask_v6: 64, ..Default::default() });
                    }
                    Op::RemoveCidr(i) => {
                        cidrs.retain(|p| *p != candidate(i));
                        a.set_network("n", NetworkPools { cidrs: cidrs.clone(), mask_v4: 24, mask_v6: 64, ..Default::default() });
                    }
                }
                let all: Vec<(&String, &IpNet)> = expected.iter().flat_map(|(n, cs)| cs.iter().map(move |c| (n, c))).collect();
                for (i, (n1, c1)) in all.iter().enumerate() {
                    for (n2, c2) in &all[i + 1..] {
                        prop_assert!(!(c1.contains(*c2) || c2.contains(*c1)), "{} of {} overlaps {} of {}", c1, n1, c2, n2);
                    }
                }
                for (node, held) in &expected {
                    prop_assert_eq!(a.holdings(node), held.as_slice());
                    let overlaps = a.problems(node).iter().any(|p| matches!(p, Problem::Overlap { .. }));
                    prop_assert!(!overlaps, "overlap reported for {}", node);
                }
            }
        }
    }
}
