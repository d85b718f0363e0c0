//! Choosing an endpoint: weighted round robin, least request (power of two choices) and a
//! consistent-hash ring. Every algorithm skips endpoints that are ejected, failing their
//! health check, or already tried by this request.

use std::cell::Cell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderMap;
use http::header::{self, HeaderName};

use crate::model::{Algorithm, HashOn, LoadBalancing};

/// Virtual nodes on the hash ring per endpoint of average weight.
const RING_NODES_PER_ENDPOINT: u64 = 160;

/// Whether endpoint `i` may take this attempt.
pub(super) trait Usable {
    /// The number of endpoints.
    fn len(&self) -> usize;
    /// Whether endpoint `i` is available (not ejected, not failing its health check).
    fn available(&self, i: usize) -> bool;
    /// Requests in flight to endpoint `i`, for least request.
    fn in_flight(&self, i: usize) -> usize;
    /// The weight of endpoint `i`.
    fn weight(&self, i: usize) -> u32;
}

/// What a consistent hash hashes.
#[derive(Debug)]
enum KeySource {
    Header(HeaderName),
    Cookie(Box<str>),
    ClientIp,
}

/// The algorithm of one upstream, built once from its spec.
#[derive(Debug)]
pub(super) struct Balancer {
    kind: Kind,
    /// Where the next round-robin turn (or fallback scan) starts.
    next: AtomicUsize,
}

#[derive(Debug)]
enum Kind {
    RoundRobin {
        /// Endpoint indices in smooth weighted order; one cycle.
        schedule: Box<[u8]>,
    },
    LeastRequest,
    ConsistentHash {
        /// (point, endpoint index), sorted by point.
        ring: Box<[(u64, u8)]>,
        key: KeySource,
    },
}

impl Balancer {
    /// Builds the balancer for endpoints with these `weights` (and `urls`, the ring's seeds).
    pub(super) fn new(spec: &LoadBalancing, urls: &[&str], weights: &[u32]) -> Self {
        let kind = match spec.algorithm {
            Algorithm::RoundRobin => Kind::RoundRobin {
                schedule: smooth_schedule(weights),
            },
            Algorithm::LeastRequest => Kind::LeastRequest,
            Algorithm::ConsistentHash => {
                let key = match &spec.hash_on {
                    Some(HashOn::Header(name)) => HeaderName::from_bytes(name.as_bytes())
                        .map_or(KeySource::ClientIp, KeySource::Header),
                    Some(HashOn::Cookie(name)) => KeySource::Cookie(name.as_str().into()),
                    Some(HashOn::ClientIp) | None => KeySource::ClientIp,
                };
                Kind::ConsistentHash {
                    ring: ring(urls, weights),
                    key,
                }
            }
        };
        Self {
            kind,
            next: AtomicUsize::new(0),
        }
    }

    /// The hash of the request's key, for a consistent hash (`None` for the other
    /// algorithms, or when the request has no key).
    pub(super) fn key(&self, headers: &HeaderMap, client: Option<IpAddr>) -> Option<u64> {
        let Kind::ConsistentHash { key, .. } = &self.kind else {
            return None;
        };
        match key {
            KeySource::Header(name) => headers.get(name).map(|v| hash(v.as_bytes())),
            KeySource::Cookie(name) => cookie(headers, name).map(hash),
            KeySource::ClientIp => client.map(|ip| match ip {
                IpAddr::V4(v4) => hash(&v4.octets()),
                IpAddr::V6(v6) => hash(&v6.octets()),
            }),
        }
    }

    /// Picks an endpoint that is available and not in `tried` (a bit per index); when every
    /// available endpoint was tried, one of those. `None` when no endpoint is available.
    pub(super) fn pick(
        &self,
        endpoints: &impl Usable,
        key: Option<u64>,
        tried: u64,
    ) -> Option<usize> {
        let usable = |i: usize| tried & (1 << i) == 0 && endpoints.available(i);
        let found = match &self.kind {
            Kind::RoundRobin { schedule } => {
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                let i = usize::from(schedule[turn % schedule.len()]);
                if usable(i) { Some(i) } else { None }
            }
            Kind::LeastRequest => least_request(endpoints, &usable),
            Kind::ConsistentHash { ring, .. } => match key {
                Some(key) => ring_lookup(ring, key, &usable),
                None => None,
            },
        };
        found
            .or_else(|| self.scan(endpoints.len(), &usable))
            .or_else(|| self.scan(endpoints.len(), &|i| endpoints.available(i)))
    }

    /// The first endpoint from a rotating start that satisfies `ok`.
    fn scan(&self, n: usize, ok: &impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
    }
}

/// Power of two choices: of two distinct random usable endpoints, the one with fewer
/// requests in flight per unit of weight.
fn least_request(endpoints: &impl Usable, usable: &impl Fn(usize) -> bool) -> Option<usize> {
    let n = endpoints.len();
    if n == 1 {
        return usable(0).then_some(0);
    }
    let a = random_below(n);
    let b = (a + 1 + random_below(n - 1)) % n;
    match (usable(a), usable(b)) {
        (true, true) => {
            // in_flight(a) / weight(a) <= in_flight(b) / weight(b), without division
            let load_a = endpoints.in_flight(a) as u128 * u128::from(endpoints.weight(b));
            let load_b = endpoints.in_flight(b) as u128 * u128::from(endpoints.weight(a));
            Some(if load_a <= load_b { a } else { b })
        }
        (true, false) => Some(a),
        (false, true) => Some(b),
        (false, false) => None,
    }
}

/// The first usable endpoint at or after `key` on the ring.
fn ring_lookup(ring: &[(u64, u8)], key: u64, usable: &impl Fn(usize) -> bool) -> Option<usize> {
    let start = ring.partition_point(|&(point, _)| point < key);
    (0..ring.len())
        .map(|k| usize::from(ring[(start + k) % ring.len()].1))
        .find(|&i| usable(i))
}

/// One cycle of smooth weighted round robin (as in nginx): every endpoint appears `weight`
/// times (after dividing the weights by their greatest common divisor), heavy endpoints'
/// turns spread out rather than bunched.
fn smooth_schedule(weights: &[u32]) -> Box<[u8]> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / divisor)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
            .expect("at least one endpoint");
        current[best] -= total;
        schedule.push(u8::try_from(best).expect("at most 64 endpoints"));
    }
    if schedule.is_empty() {
        schedule.push(0);
    }
    schedule.into_boxed_slice()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The hash ring: about 160 points per endpoint of average weight, at least one each.
fn ring(urls: &[&str], weights: &[u32]) -> Box<[(u64, u8)]> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum::<u64>().max(1);
    let n = urls.len() as u64;
    let mut ring = Vec::new();
    for (i, (url, &weight)) in urls.iter().zip(weights).enumerate() {
        let points = (u64::from(weight) * RING_NODES_PER_ENDPOINT * n / total).max(1);
        let index = u8::try_from(i).expect("at most 64 endpoints");
        for point in 0..points {
            let mut seed = Vec::with_capacity(url.len() + 21);
            seed.extend_from_slice(url.as_bytes());
            seed.push(b'#');
            seed.extend_from_slice(point.to_string().as_bytes());
            ring.push((hash(&seed), index));
        }
    }
    ring.sort_unstable();
    ring.into_boxed_slice()
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

/// FNV-1a followed by a 64-bit finalizer: stable across builds and platforms, so every
/// runtime of a group maps a key to the same endpoint.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// The splitmix64 finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded randomly per thread
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u8(0);
        hasher.finish() | 1
    });
}

/// A random number in `0..n` (`n > 0`) from a per-thread xorshift generator: cheap, and
/// good enough to spread load.
fn random_below(n: usize) -> usize {
    RNG.with(|rng| {
        let mut x = rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        rng.set(x);
        // n is at most 64: the modulo bias is negligible
        usize::try_from(mix(x) % n as u64).unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        weights: Vec<u32>,
        down: Vec<bool>,
        in_flight: Vec<usize>,
    }

    impl Fake {
        fn new(weights: &[u32]) -> Self {
            Self {
                weights: weights.to_vec(),
                down: vec![false; weights.len()],
                in_flight: vec![0; weights.len()],
            }
        }
    }

    impl Usable for Fake {
        fn len(&self) -> usize {
            self.weights.len()
        }
        fn available(&self, i: usize) -> bool {
            !self.down[i]
        }
        fn in_flight(&self, i: usize) -> usize {
            self.in_flight[i]
        }
        fn weight(&self, i: usize) -> u32 {
            self.weights[i]
        }
    }

    fn spec(algorithm: Algorithm, hash_on: Option<HashOn>) -> LoadBalancing {
        LoadBalancing { algorithm, hash_on }
    }

    const URLS: [&str; 3] = ["http://a:1", "http://b:1", "http://c:1"];

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        assert_eq!(&*smooth_schedule(&[5, 1, 1]), &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(&*smooth_schedule(&[2, 2]), &[0, 1]);
        let b = Balancer::new(&spec(Algorithm::RoundRobin, None), &URLS, &[3, 2, 1]);
        let fake = Fake::new(&[3, 2, 1]);
        let mut counts = [0; 3];
        for _ in 0..600 {
            counts[b.pick(&fake, None, 0).unwrap()] += 1;
        }
        assert_eq!(counts, [300, 200, 100]);
    }

    #[test]
    fn unavailable_and_tried_endpoints_are_skipped() {
        let b = Balancer::new(&spec(Algorithm::RoundRobin, None), &URLS, &[1, 1, 1]);
        let mut fake = Fake::new(&[1, 1, 1]);
        fake.down[1] = true;
        for _ in 0..30 {
            assert_ne!(b.pick(&fake, None, 0), Some(1));
            assert_eq!(b.pick(&fake, None, 0b001), Some(2));
        }
        // every available endpoint tried: one of them again rather than none
        assert!(matches!(b.pick(&fake, None, 0b101), Some(0 | 2)));
        fake.down = vec![true; 3];
        assert_eq!(b.pick(&fake, None, 0), None);
    }

    #[test]
    fn least_request_prefers_the_less_loaded() {
        let b = Balancer::new(&spec(Algorithm::LeastRequest, None), &URLS[..2], &[1, 1]);
        let mut fake = Fake::new(&[1, 1]);
        fake.in_flight = vec![10, 0];
        for _ in 0..50 {
            assert_eq!(b.pick(&fake, None, 0), Some(1));
        }
        // per unit of weight: 10 in flight on weight 10 is lighter than 2 on weight 1
        let mut fake = Fake::new(&[10, 1]);
        fake.in_flight = vec![10, 2];
        for _ in 0..50 {
            assert_eq!(b.pick(&fake, None, 0), Some(0));
        }
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_only_the_lost_keys() {
        let b = Balancer::new(
            &spec(
                Algorithm::ConsistentHash,
                Some(HashOn::Header("x-user".into())),
            ),
            &URLS,
            &[1, 1, 1],
        );
        let mut fake = Fake::new(&[1, 1, 1]);
        let keys: Vec<u64> = (0..3000)
            .map(|i| hash(format!("user-{i}").as_bytes()))
            .collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|&k| b.pick(&fake, Some(k), 0).unwrap())
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|&k| b.pick(&fake, Some(k), 0).unwrap())
            .collect();
        assert_eq!(before, again);
        let mut counts = [0usize; 3];
        for &i in &before {
            counts[i] += 1;
        }
        for count in counts {
            assert!((700..=1300).contains(&count), "{counts:?}");
        }
        fake.down[2] = true;
        for (&k, &was) in keys.iter().zip(&before) {
            let now = b.pick(&fake, Some(k), 0).unwrap();
            if was == 2 {
                assert_ne!(now, 2);
            } else {
                assert_eq!(now, was, "a key whose endpoint stayed must not move");
            }
        }
    }

    #[test]
    fn hash_keys_come_from_headers_cookies_and_addresses() {
        let b = Balancer::new(
            &spec(
                Algorithm::ConsistentHash,
                Some(HashOn::Cookie("session".into())),
            ),
            &URLS,
            &[1, 1, 1],
        );
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, "a=1; session = abc ;b=2".parse().unwrap());
        assert_eq!(b.key(&headers, None), Some(hash(b"abc")));
        headers.clear();
        headers.append(header::COOKIE, "sessionx=1".parse().unwrap());
        assert_eq!(b.key(&headers, None), None);

        let b = Balancer::new(
            &spec(Algorithm::ConsistentHash, Some(HashOn::ClientIp)),
            &URLS,
            &[1, 1, 1],
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            b.key(&HeaderMap::new(), Some(ip)),
            Some(hash(&[192, 0, 2, 1]))
        );

        let rr = Balancer::new(&spec(Algorithm::RoundRobin, None), &URLS, &[1, 1, 1]);
        assert_eq!(rr.key(&HeaderMap::new(), Some(ip)), None);
    }
}
