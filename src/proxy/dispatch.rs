//! From a parsed request to the route that serves it, in one order for both paths (plain
//! HTTP in [`service`](super::service), upgrades in [`upgrade`](super::upgrade)):
//!
//! 1. the path normalised and the rule matched (400, 404);
//! 2. a Gateway API rule's Service picked by weight (by the hash key with a hashing policy);
//! 3. the answers that need no backend: the https redirect (308), a Gateway API redirect, the
//!    invalid backendRefs' share (500), and for upgrades the `allowed-origins` check (403);
//! 4. last, the route's per-client policy (403, 429), so a client is charged a handshake
//!    token or a connection slot only for a request that goes on to a backend.
//!
//! Redirects before access checks is nginx's order too (its rewrite phase runs before its
//! access phase). The hash key is computed once, from the request as the client sent it, and
//! serves both the Service pick and the endpoint pick.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::balance::{self, Candidates};
use super::error::ProxyError;
use super::headers::Listener;
use super::http1;
use super::service::ProxyState;
use crate::metrics::RouteMetrics;
use crate::policy::affinity;
use crate::policy::clients::ClientSlot;
use crate::routes::{Affinity, GatewayRoute, Pick, RequestFacts, Route, RouteTable};

/// A refusal, with the route's handles once a route matched (to count it there).
pub type Failed = (Option<Arc<RouteMetrics>>, ProxyError);

/// What dispatching reads of a request.
pub struct Ask<'a, R> {
    /// The host the request is for (absolute-form authority or Host), as sent.
    pub host: Option<&'a str>,
    /// The path as sent, without the query (normalised here for matching).
    pub path: &'a str,
    /// `path?query` as sent (the https redirect keeps it).
    pub target: &'a str,
    /// Fields, method and query, for Gateway API matches, hash keys and the origin check.
    pub facts: &'a R,
    /// A WebSocket upgrade: `allowed-origins` applies.
    pub upgrade: bool,
}

/// The route that serves a request, and what the request holds on it.
pub struct Dispatched {
    /// The serving route: the matched rule's, or the Service a Gateway API split picked.
    pub route: Arc<Route>,
    /// Its metric handles.
    pub rm: Arc<RouteMetrics>,
    /// The Gateway API rule matched (filters, timeout), if any.
    pub gateway: Option<Arc<GatewayRoute>>,
    /// One of the client's connections on the route (`max-connections-per-client`), held until
    /// the caller drops it.
    pub client_slot: Option<ClientSlot>,
    /// The serving route's hash key (client address or header value), for its policy.
    key: Option<Vec<u8>>,
}

/// Match `ask` in `table` and run the checks above for the client at `client`.
pub fn dispatch<R: RequestFacts>(
    state: &ProxyState,
    listener: Listener,
    table: &RouteTable,
    ask: Ask<'_, R>,
    client: IpAddr,
    now: Instant,
) -> Result<Dispatched, Failed> {
    let path = http1::normalize_path(ask.path).map_err(|e| (None, e.into()))?;
    let found = table.lookup_request(ask.host, &path, listener.https, ask.facts).ok_or((None, ProxyError::NoRoute))?;
    let rule = found.route;
    let facts = ask.facts;
    let key_for = |r: &Route| balance::hash_key(&r.settings.policy, |name| facts.header(name), client);
    let mut key = key_for(rule);
    let gateway = rule.settings.gateway.clone();
    let picked = gateway.as_deref().and_then(|g| g.pick_for(key.as_deref()));
    let invalid = matches!(picked, Some(Pick::Invalid));
    let (route, slot) = match picked {
        Some(Pick::Service(backend)) => (backend.clone(), table.split_slot(backend)),
        Some(Pick::Invalid) | None => (rule.clone(), Some(found.slot)),
    };
    if route.settings.policy != rule.settings.policy {
        key = key_for(&route);
    }
    let rm = slot
        .and_then(|s| state.metrics.for_table(table).route(s).cloned())
        .unwrap_or_else(|| state.metrics.route_handles(&route.id, &route.backend));
    let fail = |e: ProxyError| (Some(rm.clone()), e);
    let settings = &route.settings;
    // The matched rule's: a Gateway API rule attached only to HTTPS listeners redirects,
    // whichever Service its split picked.
    if let Some(to) = state.https_redirect(listener, rule.settings.ssl_redirect, ask.host, ask.target) {
        return Err(fail(ProxyError::HttpsRedirect(to)));
    }
    if let Some(g) = gateway.as_deref()
        && let Some(redirect) = &g.redirect
    {
        let location = redirect.location(
            listener.https,
            ask.host.unwrap_or(""),
            ask.path,
            facts.query(),
            g.matched_prefix.as_deref(),
        );
        return Err(fail(ProxyError::Redirect { status: redirect.status, location }));
    }
    if invalid {
        return Err(fail(ProxyError::InvalidBackendRef));
    }
    if ask.upgrade {
        let origin = facts.header("origin").and_then(|o| std::str::from_utf8(o).ok());
        if !settings.origin_allowed(origin) {
            return Err(fail(ProxyError::OriginForbidden));
        }
    }
    let client_slot = state.client_policy.admit(&rm.route, &settings.client, client, now).map_err(|refusal| {
        rm.policy_refusal(refusal.label());
        fail(ProxyError::Policy(refusal))
    })?;
    Ok(Dispatched { route, rm, gateway, client_slot, key })
}

impl Dispatched {
    /// The endpoints to try, best first: the one the request's affinity cookie names while it
    /// is healthy, else the route's policy. Also the cookie's endpoint (its ready position), so
    /// the caller knows whether to set a new cookie. 503 when the pool has none ready.
    pub fn candidates<'c>(
        &self,
        state: &ProxyState,
        cookies: impl Iterator<Item = &'c [u8]>,
    ) -> Result<(Candidates, Option<usize>), ProxyError> {
        let settings = &self.route.settings;
        let named = match settings.affinity {
            Affinity::Cookie => affinity::cookie_value(cookies, &settings.session_cookie.name)
                .and_then(|c| affinity::sticky_index(&self.route.pool, &state.affinity_key, Some(c))),
            Affinity::None => None,
        };
        let candidates = balance::pick_sticky(&self.route.pool, &settings.policy, self.key.as_deref(), named);
        if candidates.is_empty() {
            return Err(ProxyError::NoEndpoints);
        }
        Ok((candidates, named))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drain::Drain;
    use crate::metrics::Metrics;
    use crate::policy::clients::Refusal;
    use crate::proxy::headers::TrustedProxies;
    use crate::routes::cidr::{SourceRanges, parse_list};
    use crate::routes::{HostMatch, NoFacts, PathMatch, Pool, Redirect, RouteHandle, Rule, test_route};

    /// A table of one route for `a.test/` that only clients in 10.0.0.0/8 may use, with
    /// `redirect` on its Gateway API rule when given.
    fn state_with(redirect: Option<Redirect>) -> ProxyState {
        let mut settings = test_route("default/a").settings.clone();
        settings.client.source_ranges =
            SourceRanges { allow: Some(parse_list("10.0.0.0/8").0), ..SourceRanges::default() };
        if let Some(r) = redirect {
            let mut rule = GatewayRoute::new(vec![]);
            rule.redirect = Some(r);
            settings.gateway = Some(Arc::new(rule));
        }
        let route = Route { id: "default/a".into(), backend: "a:80".into(), pool: Pool::new(vec![]), settings };
        let rule = Rule {
            host: HostMatch::Exact("a.test".into()),
            path: PathMatch::Prefix("/".into()),
            route: Arc::new(route),
        };
        let routes = Arc::new(RouteHandle::new());
        routes.publish(RouteTable::new(vec![rule], None));
        let metrics = Arc::new(Metrics::new().unwrap());
        ProxyState::new(routes, metrics, Drain::new(), TrustedProxies::default())
    }

    fn ask(state: &ProxyState, path: &str, upgrade: bool) -> Result<Dispatched, Failed> {
        let ask = Ask { host: Some("a.test"), path, target: path, facts: &NoFacts, upgrade };
        let listener = Listener { https: false, port: 80 };
        dispatch(state, listener, &state.routes.load(), ask, "127.0.0.1".parse().unwrap(), Instant::now())
    }

    #[test]
    fn a_client_outside_the_source_ranges_is_refused_on_both_paths() {
        let state = state_with(None);
        for upgrade in [false, true] {
            let (rm, err) = ask(&state, "/x", upgrade).err().unwrap();
            assert!(matches!(err, ProxyError::Policy(Refusal::SourceRange)), "{err:?}");
            assert_eq!(rm.unwrap().route.as_ref(), "default/a", "counted on the route");
        }
    }

    #[test]
    fn redirects_come_before_per_client_policy_on_both_paths() {
        let to = Redirect { status: 302, scheme: None, hostname: Some("b.test".into()), port: None, path: None };
        let state = state_with(Some(to));
        for upgrade in [false, true] {
            let (_, err) = ask(&state, "/x", upgrade).err().unwrap();
            match err {
                ProxyError::Redirect { status: 302, location } => assert_eq!(location, "http://b.test/x"),
                other => panic!("upgrade={upgrade}: {other:?}"),
            }
        }
    }

    #[test]
    fn unmatched_and_malformed_paths_name_no_route() {
        let state = state_with(None);
        let (rm, err) = ask(&state, "/%zz", false).err().unwrap();
        assert!(rm.is_none() && matches!(err, ProxyError::BadRequest(_)), "{err:?}");
        let ask = Ask { host: Some("other.test"), path: "/", target: "/", facts: &NoFacts, upgrade: true };
        let listener = Listener { https: false, port: 80 };
        let (rm, err) =
            dispatch(&state, listener, &state.routes.load(), ask, [10, 0, 0, 1].into(), Instant::now()).err().unwrap();
        assert!(rm.is_none() && matches!(err, ProxyError::NoRoute), "{err:?}");
    }
}
